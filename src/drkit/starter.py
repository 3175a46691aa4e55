"""``drkit init``: write a commented starter config and an example recovery plan."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from drkit.errors import BadRequestError

STARTER_FILES = {
    Path("config") / "drkit.yaml": "drkit.yaml",
    Path("recovery_plans") / "example.yaml": "starter-plan.yaml",
}


def write_starter(directory: Path) -> list[Path]:
    """Write the starter files under ``directory``; return their paths.

    Raises :class:`BadRequestError` (and writes nothing) if any of them already exists.
    """
    targets = {directory / rel: name for rel, name in STARTER_FILES.items()}
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise BadRequestError(f"not overwriting {', '.join(existing)}",
                              hint="move it away or choose another DIR")
    written = []
    for path, name in targets.items():
        text = resources.files("drkit").joinpath("templates", name).read_text(encoding="utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
