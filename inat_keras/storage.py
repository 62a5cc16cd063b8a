"""Atomic file writes: a run directory never holds a half-written file."""

from __future__ import annotations

import csv
import errno
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError

# Faults of the disk or of permissions, which the user fixes (space, a writable folder), not bugs in the code.
DISK_FAULTS = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space within your disk quota",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


class WriteError(UserError, OSError):
    """A file or folder could not be written because of the disk or its permissions (one line; see ``writes_checked``).

    Also an OSError with the original errno, so code that treats a failed write as optional (a cache) still does.
    """

    def __init__(self, path: str | os.PathLike, code: int, reason: str) -> None:
        OSError.__init__(self, code, reason, os.fspath(path))
        self.path, self.reason, self.fix = Path(path), reason, f"{DISK_FAULTS[code]}, then run the command again"
        self.message = f"cannot write {path} ({reason}): {self.fix}"

    def __str__(self) -> str:
        return self.message


@contextmanager
def writes_checked(path: str | os.PathLike) -> Iterator[None]:
    """A full disk, a quota, a read-only file system or a missing permission while writing ``path``: a WriteError."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        if error.errno not in DISK_FAULTS:
            raise
        raise WriteError(error.filename or path, error.errno, error.strerror or os.strerror(error.errno)) from None


def make_dir(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents), or one line saying why it cannot be."""
    path = Path(path)
    with writes_checked(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` (its return value is ignored) and move the result onto ``path`` in one rename.

    The temporary file lives in the same directory (a rename across file systems
    is not atomic) and keeps the suffix, because Keras picks the format from it.
    A disk or permission fault is a ``WriteError`` naming ``path``; the old file, if any, is untouched.
    """
    path = Path(path)
    with writes_checked(path):
        _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp makes the file private (0600); a run's files get the mode open() would give them,
        # so a run shared with a group or written from Docker stays readable as the umask allows.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        write(tmp_path)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@functools.cache
def current_umask() -> int:
    """The process's umask, read once (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays, and paths, as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
