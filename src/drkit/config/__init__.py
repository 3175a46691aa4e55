"""Configuration: pydantic models, YAML loading, located error messages."""

from drkit.config.loader import find_config_path, load_config
from drkit.config.models import Config, Repository, Retention, TargetConfig
from drkit.config.secrets import SecretRef

__all__ = [
    "Config",
    "Repository",
    "Retention",
    "SecretRef",
    "TargetConfig",
    "find_config_path",
    "load_config",
]
