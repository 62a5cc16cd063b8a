"""One process per run or search directory: an exclusive OS lock on ``<folder>/.lock``, held while it works.

``flock`` locks belong to the open file, so the operating system releases them when the process ends,
however it ends: a ``kill -9`` or a power loss never leaves a stale lock to delete by hand. The holder
writes its PID into the file, so the refusal names the process to wait for or stop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inat_keras.errors import UserError
from inat_keras.storage import writes_checked

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded against a second process
    fcntl = None  # type: ignore[assignment]


@contextmanager
def exclusive_lock(folder: Path, what: str = "run") -> Iterator[None]:
    """Hold ``folder`` for this process for the block; another process already holding it: one line naming its PID.

    The lock file stays behind (empty of meaning once no process holds it): deleting it while another
    process waits to open it would let two processes lock two different files.
    """
    if fcntl is None:
        yield
        return
    path = Path(folder) / LOCK_FILE
    with writes_checked(path):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below; only opening is a write fault)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UserError(
                f"{folder} is in use by another {what} (PID {holder}): wait for it to finish "
                f"or stop it (kill {holder}), then run the command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
