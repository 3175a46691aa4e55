"""A pre-imported drkit that forks one child per CLI run, for the test suite.

Every ``Project.run`` used to start a new interpreter that imported pydantic, SQLAlchemy and
the rest of drkit (about half a second of CPU each, a few thousand times per suite, on two
cores). The zygote imports them once; each run is then a ``fork()`` of it in which
``drkit.cli.main(argv)`` runs with the run's environment, working directory and its own
stdout/stderr files, exactly as ``python -m drkit`` would after its imports: a separate
process, its own exit code, nothing shared with other runs (the zygote itself never runs a
command). Tests that signal or kill drkit start a real ``python -m drkit`` instead.

Protocol (a Unix socket): the client sends one JSON line ``{"argv", "env", "cwd", "out",
"err"}``; the zygote answers ``{"pid"}`` once forked, then ``{"status"}`` (the raw wait
status) when the child ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading


def _child(request: dict[str, object]) -> None:
    """In the forked child: become ``drkit ARGV`` and exit with its code."""
    code = 1
    try:
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "out"), (2, "err")):
            target = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["drkit", *argv]
        from drkit.cli import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _handle(conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as stream:
        request = json.loads(stream.readline())
        pid = os.fork()
        if pid == 0:
            _child(request)
        stream.write(json.dumps({"pid": pid}).encode() + b"\n")
        stream.flush()
        _, status = os.waitpid(pid, 0)
        stream.write(json.dumps({"status": status}).encode() + b"\n")
        stream.flush()


def serve(path: str) -> None:
    # What every drkit command imports, loaded once (none starts a thread).
    import drkit.catalog.audit
    import drkit.catalog.store
    import drkit.cli.commands
    import drkit.cli.evidence
    import drkit.cli.recovery
    import drkit.config.loader
    import drkit.drills.runner
    import drkit.jobs.backup
    import drkit.jobs.check
    import drkit.jobs.prune
    import drkit.jobs.report
    import drkit.jobs.status
    import drkit.reports.render  # noqa: F401

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])


def run(path: str, argv: list[str], *, env: dict[str, str], cwd: str, timeout: float
        ) -> tuple[int, str, str]:
    """Run ``drkit ARGV`` through the zygote at ``path``; (exit code, stdout, stderr).
    Raises ``subprocess.TimeoutExpired`` (the child killed) after ``timeout`` seconds."""
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="drkit-zygote-") as work:
        out, err = os.path.join(work, "out"), os.path.join(work, "err")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            stream = conn.makefile("rwb")
            stream.write(json.dumps({"argv": argv, "env": env, "cwd": cwd, "out": out,
                                     "err": err}).encode() + b"\n")
            stream.flush()
            pid = json.loads(stream.readline())["pid"]
            conn.settimeout(timeout)
            try:
                status = json.loads(stream.readline())["status"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(["drkit", *argv], timeout) from None
        with open(out, encoding="utf-8", errors="replace") as o, \
                open(err, encoding="utf-8", errors="replace") as e:
            return os.waitstatus_to_exitcode(status), o.read(), e.read()
