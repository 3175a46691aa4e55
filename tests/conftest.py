"""Fixtures that start the real parts: restic, rclone's S3 server, moto, MinIO (Docker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.locals3 import LocalS3, free_port, local_s3, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 endpoint tests can point a repository at."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path | None = None  # where objects live on disk (rclone only)

    def url(self, bucket: str, prefix: str = "repo") -> str:
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def repository(self, bucket: str, prefix: str = "repo", *,
                   password_env: str = "DRKIT_TEST_PASSWORD") -> dict[str, Any]:
        """A repository block for drkit.yaml; the keys come from DRKIT_TEST_S3_* env vars."""
        return {
            "url": self.url(bucket, prefix),
            "password": {"env": password_env},
            "s3": {"endpoint": self.endpoint, "region": "us-east-1",
                   "access_key": {"env": f"DRKIT_TEST_S3_AK_{self.name.upper()}"},
                   "secret_key": {"env": f"DRKIT_TEST_S3_SK_{self.name.upper()}"}},
        }

    def env(self) -> dict[str, str]:
        return {f"DRKIT_TEST_S3_AK_{self.name.upper()}": self.access_key,
                f"DRKIT_TEST_S3_SK_{self.name.upper()}": self.secret_key}


RESTIC_VERSIONS = ("0.14", "0.18")


def _restic(version: str) -> str:
    """The restic of Debian bookworm (0.14, on PATH) or of trixie (0.18, fetched by
    ``scripts/fetch-restic.sh`` into .cache/, which `make test` runs). Absence is a failure."""
    if version == "0.14":
        found = shutil.which("restic")
        if found is None:
            pytest.fail("restic is not installed: run `make test` (it installs it) or "
                        "apt-get install restic")
        return found
    path = Path(os.environ.get("DRKIT_TEST_RESTIC_018",
                               REPO_ROOT / ".cache" / "restic-trixie" / "usr" / "bin" / "restic"))
    if not path.is_file():
        pytest.fail(f"restic 0.18 not found at {path}: run `make test` (it fetches it) or "
                    "scripts/fetch-restic.sh")
    return str(path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``every_restic`` run once with each supported restic (0.14 and 0.18);
    the others with the system's restic (Debian bookworm: 0.14)."""
    if "restic_binary" in metafunc.fixturenames and \
            metafunc.definition.get_closest_marker("every_restic"):
        metafunc.parametrize("restic_binary", RESTIC_VERSIONS, indirect=True,
                             ids=[f"restic{v}" for v in RESTIC_VERSIONS])


@pytest.fixture(scope="session")
def cheap_key_restics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Per restic version, a wrapper that execs the real binary, except that after an
    ``init`` it rewrites the new repository's key with cheap scrypt parameters
    (tests/fastkey.py), as restic's own tests do: every later start of restic then derives
    the key in ~1 ms of CPU instead of ~0.5 s. Nothing else differs."""
    root = tmp_path_factory.mktemp("restic")
    fastkey = Path(__file__).resolve().parent / "fastkey.py"
    wrappers = {}
    for version in RESTIC_VERSIONS:
        real = _restic(version)
        wrapper = root / f"restic-{version}" / "restic"
        wrapper.parent.mkdir()
        wrapper.write_text(
            "#!/bin/bash\n"
            f"# restic {version} for the tests: cheap keys for new repositories\n"
            'for arg in "$@"; do\n'
            f'  [ "$arg" = init ] && exec {sys.executable} {fastkey} {real} "$@"\n'
            "done\n"
            f'exec {real} "$@"\n')
        wrapper.chmod(0o755)
        wrappers[version] = str(wrapper)
    return wrappers


@pytest.fixture
def restic_binary(request: pytest.FixtureRequest, cheap_key_restics: dict[str, str]) -> str:
    """The real restic this test runs with (see :func:`pytest_generate_tests`), behind the
    cheap-key wrapper (:func:`cheap_key_restics`)."""
    return cheap_key_restics[getattr(request, "param", "0.14")]


def restic_at_least_017(binary: str) -> bool:
    """Whether the restic at ``binary`` (a wrapper or the binary) is 0.17 or newer."""
    out = subprocess.run([binary, "version"], capture_output=True, text=True).stdout
    numbers = out.split()[1].split(".") if out.startswith("restic ") else ["0", "0"]
    return (int(numbers[0]), int(numbers[1])) >= (0, 17)


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """`rclone serve s3` on a free loopback port, real credentials, data on disk."""
    root = tmp_path_factory.mktemp("rclone-s3")
    with local_s3(root / "data", log_file=root / "rclone.log") as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """`moto_server` on a free loopback port (versioning and object lock work there)."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        pytest.fail("moto_server not installed: pip install -e '.[dev]'")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=sink, stderr=sink)
        try:
            wait_for_port(port, proc, timeout=30)
            yield S3Endpoint("moto", f"http://127.0.0.1:{port}", "drkitmotoaccess",
                             "drkitmotosecretkey0123")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def docker_available() -> bool:
    """Whether a Docker engine and compose answer (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    for probe in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            if subprocess.run(probe, capture_output=True, timeout=20).returncode != 0:
                return False
        except (OSError, subprocess.TimeoutExpired):
            return False
    return True


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REPO_ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def minio_s3(request: pytest.FixtureRequest) -> S3Endpoint:
    """MinIO from docker-compose.yml via pytest-docker; skipped cleanly without a Docker engine."""
    if not docker_available():
        pytest.skip("no Docker engine (`docker info` fails): MinIO tests need one")
    services = request.getfixturevalue("docker_services")
    ip = request.getfixturevalue("docker_ip")
    port = services.port_for("minio", 9000)
    endpoint = f"http://{ip}:{port}"

    def ready() -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{endpoint}/minio/health/live", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    services.wait_until_responsive(check=ready, timeout=60.0, pause=0.5)
    return S3Endpoint("minio", endpoint, "drkitminio", "drkitminiosecret123")


@pytest.fixture(scope="session")
def rclone_endpoint(rclone_s3: LocalS3) -> S3Endpoint:
    return S3Endpoint("rclone", rclone_s3.endpoint, rclone_s3.access_key, rclone_s3.secret_key,
                      data_dir=rclone_s3.data_dir)


@pytest.fixture(params=["rclone", "moto", pytest.param("minio", marks=pytest.mark.docker)])
def s3_endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    """Every S3 server the S3 suite runs against (MinIO only where Docker works)."""
    fixture = {"rclone": "rclone_endpoint", "moto": "moto_s3", "minio": "minio_s3"}
    endpoint: S3Endpoint = request.getfixturevalue(fixture[request.param])
    return endpoint


@dataclass
class Project:
    """A drkit deployment in a temporary directory: config, data, and a way to run the CLI.
    Its configs use ``restic`` (the test's restic binary) unless they name one."""

    root: Path
    env: dict[str, str]
    restic_binary: str = "restic"

    @property
    def config_path(self) -> Path:
        return self.root / "config" / "drkit.yaml"

    @property
    def catalog_path(self) -> Path:
        return self.root / "config" / ".drkit" / "catalog.db"

    def write_config(self, config: dict[str, Any]) -> Path:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        config = {"restic_binary": self.restic_binary, **config}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        return self.config_path

    def run(self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run the real `drkit` CLI (a process of its own) against this project's config:
        forked from the test session's pre-imported drkit (tests/zygote.py), or a new
        `python -m drkit` when DRKIT_TEST_NO_ZYGOTE is set."""
        env = {**os.environ, **self.env, **(extra_env or {})}
        argv = ["--config", str(self.config_path), *args]
        if _ZYGOTE:
            from tests.zygote import run

            code, out, err = run(_ZYGOTE[0], argv, env=env, cwd=str(self.root),
                                 timeout=timeout)
            return subprocess.CompletedProcess(["drkit", *argv], code, out, err)
        return subprocess.run(
            [sys.executable, "-m", "drkit", *argv],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root)

    def run_json(self, *args: str, expect: int = 0) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def restic(self, url: str, *args: str, extra_env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """Run bare restic against ``url`` with this project's password."""
        env = {**os.environ, "RESTIC_REPOSITORY": url,
               "RESTIC_PASSWORD": self.env["DRKIT_TEST_PASSWORD"], **(extra_env or {})}
        return subprocess.run([self.restic_binary, *args], capture_output=True, text=True,
                              env=env, timeout=600)


_ZYGOTE: list[str] = []  # the socket of this test session's zygote, once started


@pytest.fixture(scope="session", autouse=True)
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One pre-imported drkit per test process, which every `Project.run` forks."""
    if os.environ.get("DRKIT_TEST_NO_ZYGOTE"):
        yield
        return
    path = str(tmp_path_factory.mktemp("zygote") / "socket")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "zygote.py"), path],
                            stdout=subprocess.PIPE, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    _ZYGOTE.append(path)
    try:
        yield
    finally:
        _ZYGOTE.clear()
        proc.kill()
        proc.wait()


@pytest.fixture
def project(tmp_path: Path, restic_binary: str) -> Project:
    """An empty project with a repository password in its environment."""
    return Project(root=tmp_path, env={"DRKIT_TEST_PASSWORD": "correct-horse-battery-staple-42"},
                   restic_binary=restic_binary)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server (Debian's), password auth over TCP."""
    from tests.databases import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[Any]:
    """A throwaway MariaDB server (Debian's), password auth over TCP."""
    from tests.databases import mariadb_server

    with mariadb_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_scratch() -> Iterator[Any]:
    """A second PostgreSQL server, where drills create their scratch databases (a drill
    refuses the production server itself)."""
    from tests.databases import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_scratch() -> Iterator[Any]:
    """A second MariaDB server for drills' scratch databases."""
    from tests.databases import mariadb_server

    with mariadb_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same catalog tests on SQLite (the default) and on PostgreSQL (production)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    server = request.getfixturevalue("postgres")
    name = f"catalog_{uuid.uuid4().hex[:10]}"
    server.sql(f"create database {name}")
    return server.dsn(name).replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for every flow test (~17 s to start)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Flows run in this process: the project's secrets go into its environment."""
    for key, value in project.env.items():
        monkeypatch.setenv(key, value)
    return project


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook?token=s3cr3t-token", received
    finally:
        server.shutdown()
