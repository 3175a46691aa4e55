"""Directories that belong to one drkit process (a backup's staging copy, a drill's sandbox).

Their names end in ``.<machine>.<pid>-<start>.<random>``: the machine, the id of the process
that made them and that process's start time. A directory whose process is gone (killed with
-9, out of memory, host rebooted) is recognised as abandoned by the next drkit process on that
machine, while a live process's, or another machine's (a shared state directory), is never
touched. Trees are removed whole, read-only directories included: a restore can leave
directories without write permission, and ``rmtree(ignore_errors=True)`` would then leave the
restored data behind without a word.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

from drkit.catalog.inflight import process_alive, process_start_token

_OWNER = re.compile(r"\.([A-Za-z0-9-]+)\.(\d+)-(\w+)\.[0-9a-f]+$")


def machine() -> str:
    """This machine's name as it appears in owned directories' names."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown"


def owned_name(prefix: str) -> str:
    """A fresh name for a directory of this process: ``PREFIX.<machine>.<pid>-<start>.<hex>``."""
    pid = os.getpid()
    token = process_start_token(pid) or "0"
    return f"{prefix}.{machine()}.{pid}-{token}.{secrets.token_hex(4)}"


def abandoned(name: str) -> bool:
    """Whether ``name`` is an owned directory of this machine whose process is gone."""
    match = _OWNER.search(name)
    return match is not None and match.group(1) == machine() and \
        not process_alive(int(match.group(2)), match.group(3))


def remove_tree(path: Path) -> None:
    """Remove ``path`` entirely, read-only directories included; raise if that fails.
    A symlink is removed itself, never followed."""
    def make_writable(function: object, failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
            shutil.rmtree(failed, onerror=make_writable)
        else:
            os.unlink(failed)

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable)
