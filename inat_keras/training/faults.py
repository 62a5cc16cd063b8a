"""What a run does when something goes wrong: Ctrl-C held until an epoch is saved, write failures
and out-of-memory as one-line errors, and a new run's name given back when it fails before its first epoch.
"""

from __future__ import annotations

import errno
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.locks import LOCK_FILE
from inat_keras.runs import CONFIG_FILE, DATA_CHECK_FILE, SKIPPED_FILE, SPLIT_FILE, STATE_FILE
from inat_keras.storage import WriteError


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it (main thread only, where signals arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)


@contextmanager
def failed_writes_as_user_errors(run_dir: Path) -> Iterator[None]:
    """A full disk or an unwritable run directory: one line naming the path, not a traceback.

    The writes are atomic, so the last complete checkpoint is still there to resume from.
    """
    if (run_dir / STATE_FILE).exists():
        fix = f"free disk space or make {run_dir} writable, then continue with --resume {run_dir} (the last epoch is kept)"
    else:  # no epoch committed: a new run's folder is about to be removed, so it is not named for --resume
        fix = "free disk space or choose a writable --out, then run the command again"
    try:
        yield
    except WriteError as error:  # storage's own one line, with how to continue this run
        raise UserError(f"cannot write {error.path} ({error.reason}): {fix}") from None
    except OSError as error:
        raise UserError(f"cannot write {error.filename or run_dir} ({error.strerror or error}): {fix}") from None


# TensorFlow reports a full disk as RESOURCE_EXHAUSTED too (its file system maps ENOSPC and EDQUOT to it), so
# the type alone does not tell a full disk (a --cache file) from memory: the operating system's words do.
DISK_FULL = ("No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(words in str(error)[:4000] for words in DISK_FULL)


def is_out_of_memory(error: Exception) -> bool:
    # TensorFlow raises ResourceExhaustedError, or an InternalError naming it from inside XLA.
    if is_disk_full(error):
        return False
    return type(error).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(error)[:2000]


def disk_full_message(config: RunConfig, run_dir: Path, *, kept: bool) -> str:
    """A full disk during training: most likely the ``--cache`` files, which grow during the first epoch."""
    where = f"the --cache files at {config.data.cache}" if config.data.cache not in ("memory", "none") else str(run_dir)
    then = f"continue with --resume {run_dir}" if kept else "run the command again"
    return f"cannot write {where} (No space left on device): free disk space (or use --cache memory in a new run), then {then}"


def out_of_memory_message(config: RunConfig, run_dir: Path, *, kept: bool = True) -> str:
    """``kept``: the run directory stays (an epoch was committed, or a resume); else it is about to be removed."""
    smaller = max(1, config.data.batch_size // 2)
    message = (
        f"out of memory with --batch-size {config.data.batch_size} at --image-size {config.data.image_size}: "
        f"try --batch-size {smaller} in a new run"
    )
    return message + (f" (or lower batch_size in {run_dir / CONFIG_FILE} and --resume)" if kept else "")


class Interrupted(UserError):
    """Ctrl-C during training: the run directory is kept for --resume, even before its first epoch."""


def resume_command(config: RunConfig, run_dir: Path) -> str:
    return f"python {'finetune.py' if config.kind == 'transfer' else 'train_scratch.py'} --resume {run_dir}"


@contextmanager
def released_if_unstarted(run_dir: Path, *, fresh: bool, created: bool, resume: str = "") -> Iterator[None]:
    """Give a new run's name back if the block fails before any epoch is committed.

    Otherwise a bad --weights file, an out-of-memory first step or a refused setting would leave a
    config.json behind, and the corrected command would be told the name already holds a run.
    A Ctrl-C is not a failure: the folder stays, and ``resume`` (the command to continue) is named.
    """
    try:
        yield
    except KeyboardInterrupt:  # before training started (the model, the pipeline): epoch 1 is next
        if fresh and not (run_dir / CONFIG_FILE).exists():  # not yet a run --resume could continue
            release(run_dir, created=created)
            raise Interrupted("interrupted before the run was set up: nothing was kept; run the command again") from None
        raise Interrupted(f"interrupted before epoch 1 finished: continue with `{resume}`") from None
    except Exception as error:
        if fresh and not isinstance(error, Interrupted) and not (run_dir / STATE_FILE).exists():
            release(run_dir, created=created)
        raise


def release(run_dir: Path, *, created: bool) -> None:
    """Remove what a new run wrote before its first epoch, so its name is free again."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:  # a search's folder, say: remove only what this run wrote
        for name in (CONFIG_FILE, SPLIT_FILE, DATA_CHECK_FILE, SKIPPED_FILE, LOCK_FILE):
            (run_dir / name).unlink(missing_ok=True)
