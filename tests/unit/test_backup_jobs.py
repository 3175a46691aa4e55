"""run_backups: one target's internal error is not an interrupt for the others."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.config.loader import load_config
from drkit.jobs import backup


def test_one_targets_error_does_not_stop_the_others(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = tmp_path / "drkit.yaml"
    config_path.write_text(yaml.safe_dump({
        "repositories": {"r": {"url": str(tmp_path / "repo"), "password": {"env": "PW"}}},
        "targets": {name: {"kind": "files", "paths": [str(tmp_path)], "repositories": ["r"]}
                    for name in ("broken", "fine")},
    }))
    config = load_config(config_path)
    broken_done = threading.Event()
    seen: dict[str, Any] = {}

    def fake_target(_config: Any, _recorder: Any, name: str, *, cancel: threading.Event,
                    **_kwargs: Any) -> list[Any]:
        if name == "broken":
            broken_done.set()
            raise OSError(28, "No space left on device")
        broken_done.wait(10)
        seen["cancelled"] = cancel.wait(0.5)  # would be set by an "interrupt"
        return ["fine-run"]

    terminations: list[bool] = []
    monkeypatch.setattr(backup, "backup_target", fake_target)
    monkeypatch.setattr(backup, "detect_restic_version", lambda _config: "0.14.0")
    monkeypatch.setattr(backup, "terminate_all", lambda: terminations.append(True))
    with pytest.raises(OSError, match="No space left"):
        backup.run_backups(config, None, dry_run=True)
    assert seen == {"cancelled": False} and terminations == []
