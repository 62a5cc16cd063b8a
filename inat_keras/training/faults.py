"""What a run does when something goes wrong: Ctrl-C held until an epoch is saved, write failures
and out-of-memory as one-line errors, and a new run's name given back when it fails before its first epoch.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.runs import CONFIG_FILE, DATA_CHECK_FILE, SKIPPED_FILE, SPLIT_FILE, STATE_FILE


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
    try:
        yield
    except OSError as error:
        raise UserError(
            f"cannot write {error.filename or run_dir} ({error.strerror or error}): free disk space or make "
            f"{run_dir} writable, then continue with --resume {run_dir} (the last complete epoch is kept)"
        ) from None


def is_out_of_memory(error: Exception) -> bool:
    # TensorFlow raises ResourceExhaustedError, or an InternalError naming it from inside XLA.
    return type(error).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(error)[:2000]


def out_of_memory_message(config: RunConfig, run_dir: Path) -> str:
    smaller = max(1, config.data.batch_size // 2)
    return (
        f"out of memory with --batch-size {config.data.batch_size} at --image-size {config.data.image_size}: "
        f"try --batch-size {smaller} in a new run (or lower batch_size in {run_dir / CONFIG_FILE} and --resume)"
    )


class Interrupted(UserError):
    """Ctrl-C during training: the run directory is kept for --resume, even before its first epoch."""


@contextmanager
def released_if_unstarted(run_dir: Path, *, fresh: bool, created: bool) -> Iterator[None]:
    """Give a new run's name back if the block fails before any epoch is committed.

    Otherwise a bad --weights file, an out-of-memory first step or a refused setting would leave a
    config.json behind, and the corrected command would be told the name already holds a run.
    """
    try:
        yield
    except Exception as error:
        if fresh and not isinstance(error, Interrupted) and not (run_dir / STATE_FILE).exists():
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # a search's folder, say: remove only what this run wrote
                for name in (CONFIG_FILE, SPLIT_FILE, DATA_CHECK_FILE, SKIPPED_FILE):
                    (run_dir / name).unlink(missing_ok=True)
        raise
