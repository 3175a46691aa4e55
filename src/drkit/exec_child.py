"""Started by restic (``backup --stdin-from-command``) to start a stream's producer.

restic passes its own environment, which holds the repository's password and S3 keys, to the
command it runs. This trampoline replaces it with the producer's own environment (a dump gets
its DSN's secrets, never the repository's) and sends the producer's stderr to a file of
drkit's, then becomes the producer (exec). Its argument is a private (0600) spec file, removed
as soon as it is read, so no secret is ever on a command line.

Standard library only: it runs as ``python -I -S exec_child.py SPEC``, with no site-packages.
"""

import json
import os
import signal
import sys


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    os.unlink(argv[1])
    fd = os.open(spec["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    # Python ignores these; an exec'd program must get them back as a shell would give them
    # (a dump writing into a closed pipe should die of SIGPIPE, not loop on EPIPE).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    program = spec["argv"][0]
    try:
        os.execvpe(program, spec["argv"], spec["env"])
    except OSError as exc:
        sys.stderr.write(f"cannot run {program!r}: {exc.strerror}\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
