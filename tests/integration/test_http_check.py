"""The ``http`` check: a restored service is started from the sandbox, must answer its URL as
expected, and is stopped with its process group afterwards. Real restic, a real HTTP server
(Python's) serving the restored files."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from drkit.locals3 import free_port
from tests.conftest import Project


def setup(project: Project, checks: list[dict[str, Any]]) -> None:
    site = project.root / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>orders service, restored</h1>\n")
    project.write_config({
        "repositories": {"r": {"url": str(project.root / "repo"),
                               "password": {"env": "DRKIT_TEST_PASSWORD"}}},
        "targets": {"site": {"kind": "files", "paths": [str(site)], "repositories": ["r"]}},
    })
    plans = project.root / "recovery_plans"
    plans.mkdir()
    (plans / "site.yaml").write_text(yaml.safe_dump({
        "name": "site", "objectives": {"rpo": "1h", "rto": "15m"},
        "steps": [{"target": "site", "checks": checks}]}))
    assert project.run("repo", "init").returncode == 0
    assert project.run("backup").returncode == 0


def serve(port: int, pidfile: Path) -> list[str]:
    """A web server over the restored data that writes its pid down first."""
    code = ("import os, sys, http.server, functools; open(sys.argv[2], 'w').write(str("
            "os.getpid())); handler = functools.partial(http.server.SimpleHTTPRequestHandler,"
            " directory=sys.argv[3]); http.server.ThreadingHTTPServer(('127.0.0.1', "
            "int(sys.argv[1])), handler).serve_forever()")
    return [sys.executable, "-c", code, str(port), str(pidfile), "{restore_dir}"]


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_restored_service_answers_and_is_stopped(project: Project) -> None:
    port = free_port()
    pidfile = project.root / "service.pid"
    setup(project, [{"http": f"http://127.0.0.1:{port}/index.html",
                     "start": serve(port, pidfile), "expect_body": r"orders service, \w+",
                     "timeout": "60s"}])
    data = project.run_json("drill", "site")
    check = data["steps"][0]["checks"][-1]
    assert check == {**check, "name": f"http: http://127.0.0.1:{port}/index.html",
                     "status": "passed"}
    assert check["detail"] == (f"http://127.0.0.1:{port}/index.html answered 200, body "
                               "matches 'orders service, \\\\w+'")
    assert not Path(f"/proc/{pidfile.read_text()}").exists()  # stopped with the drill
    assert refused(port)


def test_wrong_body_fails_with_what_was_seen(project: Project) -> None:
    port = free_port()
    pidfile = project.root / "service.pid"
    setup(project, [{"http": f"http://127.0.0.1:{port}/index.html",
                     "start": serve(port, pidfile), "expect_body": "payments service",
                     "timeout": "3s"}])
    data = project.run_json("drill", "site", expect=1)
    check = data["steps"][0]["checks"][-1]
    assert check["status"] == "failed"
    assert check["detail"].startswith(f"timed out after 3.0s waiting for http://127.0.0.1:{port}")
    assert "(last answer: status 200, body '<h1>orders service, restored</h1>')" in \
        check["detail"]
    assert not Path(f"/proc/{pidfile.read_text()}").exists()


def test_service_that_exits_fails_at_once(project: Project) -> None:
    port = free_port()
    setup(project, [{"http": f"http://127.0.0.1:{port}/", "timeout": "1h",
                     "start": ["sh", "-c", "echo cannot bind >&2; exit 3"]}])
    data = project.run_json("drill", "site", expect=1)
    check = data["steps"][0]["checks"][-1]
    assert check["detail"].startswith(f"the service exited with code 3 before "
                                      f"http://127.0.0.1:{port}/ answered as expected")
    assert check["output"] == {"stderr": "cannot bind\n"}


def test_bad_http_check_is_a_bad_request(project: Project) -> None:
    setup(project, [{"http": "ftp://example.org/", "expect_body": "("}])
    result = project.run("validate")
    assert result.returncode == 2
    assert "at 'steps[0].checks[0].http': 'ftp://example.org/' is not an http:// or " \
           "https:// URL" in result.stderr
    assert "at 'steps[0].checks[0].expect_body': expect_body is not a regular expression: " \
           "missing ), unterminated subpattern" in result.stderr


def test_redirect_is_the_answer_never_followed(project: Project) -> None:
    """A restored app that redirects to its production address is checked on its own answer,
    the 302; nothing is asked of the address it names."""
    port, production = free_port(), free_port()
    code = ("import sys, http.server\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(302)\n"
            f"        self.send_header('Location', 'http://127.0.0.1:{production}/login')\n"
            "        self.end_headers()\n"
            f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n")
    setup(project, [{"http": f"http://127.0.0.1:{port}/", "start": [sys.executable, "-c", code],
                     "expect_status": 302, "timeout": "60s"}])
    check = project.run_json("drill", "site")["steps"][0]["checks"][-1]
    assert check["status"] == "passed", check
    assert check["detail"] == f"http://127.0.0.1:{port}/ answered 302"


def test_port_already_answering_is_refused(project: Project) -> None:
    """Something (production on the same host, a service left running) already answers the
    URL: it would answer for the restored service, so the check fails at once."""
    import http.server
    import threading

    port = free_port()
    other = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                            http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        started = project.root / "started"
        setup(project, [{"http": f"http://127.0.0.1:{port}/", "timeout": "1h",
                         "start": ["sh", "-c", f"touch {started}; exec sleep 3600"]}])
        check = project.run_json("drill", "site", expect=1)["steps"][0]["checks"][-1]
    finally:
        other.shutdown()
    assert check["detail"].startswith(f"http://127.0.0.1:{port}/ already answers (status ")
    assert not started.exists()
