"""Running a command: a ``UserError`` becomes one line on stderr and exit status 2; TensorFlow starts quietly.

TensorFlow 2.21 prints a few lines while its C++ libraries load and look for a GPU (oneDNN, the CUDA stub,
the CPU's instruction sets, ``failed call to cuInit`` at error level on a machine without a GPU), and absl
prints them before TensorFlow's log level applies, so ``TF_CPP_MIN_LOG_LEVEL`` (even 3) and
``GLOG_minloglevel`` do not hide them (tried). ``start_tensorflow`` therefore imports TensorFlow with stderr
captured and writes back every line but those; from then on ``TF_CPP_MIN_LOG_LEVEL=2`` keeps TensorFlow's
C++ info and warnings off the terminal and lets its errors through. A user who sets
``TF_CPP_MIN_LOG_LEVEL`` or passes ``--verbose`` sees TensorFlow's output untouched.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError
from inat_keras.storage import DISK_FAULTS
from inat_keras.training.faults import Interrupted

# What TensorFlow and absl print while TensorFlow loads and probes for a GPU: reports on how the binary
# was built and what the machine lacks, never about this command. A CPU-only machine that has an NVIDIA
# GPU gets the project's own warning instead (inat_keras.devices.unused_gpu_warning).
STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} "  # any info line of the C++ log (oneDNN, cudart_stub, cpu_feature_guard, cuda_diagnostics, ...)
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"
    r"|[WE]\d{4} .*(failed call to cuInit|Unable to register cu\w+ factory|computation placer already registered)"
    r"|.*TF-TRT Warning: Could not find TensorRT"
)
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"

# Whether run_main chose TensorFlow's log level (the user did not), so its start-up lines may be dropped.
_startup = {"quiet": False}


def quiet_tensorflow() -> None:
    """Before TensorFlow is imported: its C++ log shows errors only, unless the user set the level."""
    if os.environ.get(LOG_LEVEL) is None:
        os.environ[LOG_LEVEL] = "2"
        _startup["quiet"] = True


@contextmanager
def startup_lines_dropped() -> Iterator[None]:
    """Capture file descriptor 2 (where C++ writes) for the block, then write back what is not start-up noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not STARTUP_NOISE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def start_tensorflow(*, verbose: bool = False) -> None:
    """Import TensorFlow and let it look for GPUs, without its start-up lines; a command calls it after its flags parse.

    ``verbose``: leave TensorFlow's C++ log as TensorFlow sets it (everything from info level up).
    """
    if "tensorflow" in sys.modules:
        return
    if verbose and _startup["quiet"]:
        del os.environ[LOG_LEVEL]
        _startup["quiet"] = False
    if not _startup["quiet"]:
        import tensorflow  # noqa: F401

        return
    with startup_lines_dropped():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # where cuInit fails on a machine without a GPU driver


def open_trained(args: argparse.Namespace, folder: str) -> tuple[Any, Path]:
    """For evaluate, explain and export: start TensorFlow, load ``args.model`` and name its output folder ``folder``."""
    start_tensorflow()
    from inat_keras.inspection.trained import default_output_dir, load_trained

    trained = load_trained(args.model, args.classes)
    return trained, default_output_dir(trained, args.out, folder)


def track_in_wandb(trained: Any, args: argparse.Namespace, command: str, log: Callable[[Any], None]) -> None:
    """Log an inspection command's results into the run's own W&B run (``args.wandb``), and say where."""
    from inat_keras.inspection.tracking import track_inspection

    tracked = track_inspection(trained, args.wandb, command, log)
    if tracked:
        print(tracked)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command, turning a UserError into one line on stderr and exit status 2."""
    quiet_tensorflow()
    try:
        status = main(argv)
        sys.stdout.flush()  # a full disk behind a redirected stdout (predict --csv > file) shows here, as one line
        return status
    except Interrupted as error:
        end_open_line()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A disk fault on a write no guard saw (a redirected stdout, a library's own file): still one line.
        if error.errno not in DISK_FAULTS:
            raise
        where = error.filename or "the output"
        fix = f"{DISK_FAULTS[error.errno]}, then run the command again"
        print(f"error: cannot write {where} ({error.strerror}): {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a run directory exists, or in a command that trains nothing
        end_open_line()
        print("error: interrupted: every file written so far is complete; run the command again to finish", file=sys.stderr)
        return 2


def typed_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line as the user typed it, to repeat: ``python finetune.py ...``, ``python -m inat_keras
    finetune ...`` or ``inat-keras finetune ...``; ``script`` stands in when the command was called from Python."""
    args = list(sys.argv[1:] if argv is None else argv)
    launcher = Path(sys.argv[0])
    if launcher.parts[-2:] == ("inat_keras", "__main__.py") and len(sys.argv) > 1:
        start = ["python", "-m", "inat_keras", sys.argv[1]]  # with the command's name as typed
    elif launcher.name == "inat-keras" and len(sys.argv) > 1:
        start = ["inat-keras", sys.argv[1]]
    elif launcher.name == script:
        start = ["python", sys.argv[0]]
    else:
        start = ["python", script]
    return shlex.join([*start, *args])


def end_open_line() -> None:
    """In a terminal, Keras's progress bar leaves its line open: end it, so a message starts a line of its own."""
    if sys.stdout.isatty():
        print(flush=True)
