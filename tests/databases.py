"""Throwaway PostgreSQL and MariaDB servers (Debian's packages), started as plain processes on
free loopback ports with their own data directories. No Docker needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drkit.locals3 import free_port


@dataclass(frozen=True)
class DatabaseServer:
    kind: str           # "postgres" | "mysql"
    host: str
    port: int
    user: str
    password: str
    admin: list[str]    # argv prefix of a client that runs SQL as the superuser
    data_dir: Path

    def dsn(self, database: str) -> str:
        scheme = "postgresql" if self.kind == "postgres" else "mysql"
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str, database: str | None = None) -> str:
        """Run ``statement`` as the superuser; return its unaligned output."""
        if self.kind == "postgres":
            argv = [*self.admin, "-d", database or "postgres", "-c", statement]
        else:
            argv = [*self.admin, *([database] if database else []), "-e", statement]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{statement[:80]}: {result.stderr}")
        return result.stdout.strip()


def _as(user: str, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if os.geteuid() == 0 else argv


def _private_dir(prefix: str, owner: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    return path


@contextmanager
def postgres_server() -> Iterator[DatabaseServer]:
    """initdb + pg_ctl start of the newest installed PostgreSQL; stopped and removed after."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not bins:
        raise RuntimeError("PostgreSQL server is not installed (make test installs it)")
    pgbin = bins[-1]
    root = _private_dir("drkit-pg-", "postgres")
    port = free_port()
    subprocess.run(_as("postgres", [str(pgbin / "initdb"), "-D", str(root / "data"), "-U",
                                    "postgres", "--auth-local=trust",
                                    "--auth-host=scram-sha-256", "-E", "UTF8",
                                    "--locale=C.UTF-8"]),
                   check=True, capture_output=True)
    subprocess.run(_as("postgres", [str(pgbin / "pg_ctl"), "-D", str(root / "data"), "-l",
                                    str(root / "log"), "-w", "-t", "60", "-o",
                                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
                                    "-c fsync=off", "start"]),
                   check=True, capture_output=True)
    server = DatabaseServer(kind="postgres", host="127.0.0.1", port=port, user="drkit",
                            password="pg-Secret-4242", data_dir=root,
                            admin=_as("postgres", ["psql", "-X", "-q", "-A", "-t", "-h",
                                                   str(root), "-p", str(port), "-U",
                                                   "postgres", "-v", "ON_ERROR_STOP=1"]))
    try:
        server.sql("create role drkit login superuser password 'pg-Secret-4242'")
        yield server
    finally:
        subprocess.run(_as("postgres", [str(pgbin / "pg_ctl"), "-D", str(root / "data"), "-m",
                                        "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mariadb_server() -> Iterator[DatabaseServer]:
    """mariadb-install-db + mariadbd on a free port; stopped and removed after."""
    if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
        raise RuntimeError("MariaDB server is not installed (make test installs it)")
    daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    root = _private_dir("drkit-maria-", "mysql")
    port = free_port()
    user = ["--user=mysql"] if os.geteuid() == 0 else []
    subprocess.run(["mariadb-install-db", *user, f"--datadir={root / 'data'}",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)
    socket_path = root / "mysqld.sock"
    proc = subprocess.Popen([daemon, "--no-defaults", *user, f"--datadir={root / 'data'}",
                             f"--socket={socket_path}", f"--port={port}",
                             "--bind-address=127.0.0.1", f"--pid-file={root / 'pid'}",
                             "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = ["mariadb", "--no-defaults", f"--socket={socket_path}", "-u", "root", "-N", "-B"]
    server = DatabaseServer(kind="mysql", host="127.0.0.1", port=port, user="drkit",
                            password="maria-Secret-4242", data_dir=root, admin=admin)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*admin, "-e", "select 1"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("MariaDB did not start")
            time.sleep(0.2)
        server.sql("create user 'drkit'@'127.0.0.1' identified by 'maria-Secret-4242'; "
                   "grant all on *.* to 'drkit'@'127.0.0.1' with grant option")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)
