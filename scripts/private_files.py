"""var/ holds the local portal's secrets, TLS key, database and logs: only their owner may read them.

The SQLite database alone carries password hashes, token digests and the audit log, so var/ is 0700
and everything in it 0600, whatever the umask of the shell that ran `make run`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Set by `make run` before it creates anything: files its children create (the SQLite database and
# its WAL, logs, gunicorn's metrics files) start owner-only too.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parents with mode 0700, and make `path` itself 0700."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        # mode= is filtered through the umask; chmod makes it exact either way.
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    os.chmod(path, 0o700)
    return path


def tighten(root: Path) -> None:
    """Make an existing tree owner-only (earlier versions left var/ 0755 and its files 0644)."""
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o700)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path) and stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                os.chmod(path, 0o600)
