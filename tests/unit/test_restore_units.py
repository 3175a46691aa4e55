"""Restore and recover mechanics: ``drkit recover`` checks, before it changes anything, that
each filesystem it stages on has room for every step staging there (steps on one filesystem
add up); restore progress is the bytes written under the staging directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from drkit.drills.restore import size_watch
from drkit.jobs.recover import RecoverStep, space_problems


def step(target: str, where: Path, needs: int) -> RecoverStep:
    return RecoverStep(target=target, repository="r", destination=str(where),
                       needs_bytes=needs, space_on=str(where))


def test_steps_on_one_filesystem_add_up(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    half = int(free * 0.5)
    assert space_problems([step("a", tmp_path / "a", half)]) == []
    (problem,) = space_problems([step("a", tmp_path / "a", half),
                                 step("b", tmp_path / "b", half)])
    assert problem.startswith(f"not enough space on the filesystem of {tmp_path / 'a'} "
                              "for a, b: needs ")


def test_a_step_with_no_staging_needs_no_room(tmp_path: Path) -> None:
    assert space_problems([RecoverStep(target="a", repository="r", destination="x")]) == []


def test_restore_progress_ends_with_every_byte_written(tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    with size_watch(tmp_path, 3000, lambda done, total: seen.append((done, total))):
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "a").write_bytes(b"x" * 1000)
        (tmp_path / "b").write_bytes(b"y" * 2000)
    assert seen[-1] == (3000, 3000)
