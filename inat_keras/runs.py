"""The run directory ``<out>/<name>/``: the names of its files and reading them back.

A run holds ``config.json`` (everything to rebuild and retrain), ``split.csv``, ``best.keras`` (best
validation accuracy), ``history.csv``, ``curves.png``, ``metrics.json``, ``model_summary.txt``, and while it is unfinished
``checkpoint/`` (the last completed epoch, for ``--resume``). A search keeps KerasTuner's files in
``search/``. Every file is written to a temporary name and renamed (``storage``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig, run_config_problem
from inat_keras.errors import UserError
from inat_keras.locks import exclusive_lock
from inat_keras.storage import read_csv, read_json

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"  # path, label, subset (train, validation, test)
BEST_MODEL = "best.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.json"
MODEL_SUMMARY_FILE = "model_summary.txt"  # Keras's model.summary(), layer by layer
DATA_CHECK_FILE = "data-check.json"
SKIPPED_FILE = "skipped-images.csv"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = f"{CHECKPOINT_DIR}/state.json"


# -- run directory ------------------------------------------------------------------------


def split_test_rows(run_dir: Path | None) -> list[dict[str, str]] | None:
    """The test subset of a run's ``split.csv`` (path, label, subset), or None without one."""
    if run_dir is None or not (run_dir / SPLIT_FILE).is_file():
        return None
    return [row for row in read_csv(run_dir / SPLIT_FILE) if row["subset"] == "test"]


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.out) / config.name


def prepare_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Create the run directory, refusing to overwrite a run and checking it is writable."""
    refuse_taken_name(run_dir, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {run_dir} ({error.strerror}): choose a writable --out directory") from None


def refuse_taken_name(run_dir: Path, *, resume: bool) -> None:
    if not resume and (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --name")


@contextmanager
def run_dir_locked(run_dir: Path, *, resume: bool) -> Iterator[None]:
    """The run directory for this process alone; a new run checks its name again under the lock.

    Two new runs with the same name can both pass the first check before either writes config.json.
    """
    with exclusive_lock(run_dir, "training process"):
        refuse_taken_name(run_dir, resume=resume)
        yield


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: --resume takes a run directory written by a training command")
    raw = read_config_json(Path(run_dir))
    try:
        return RunConfig.from_dict(raw)
    except UserError as error:
        raise UserError(f"{path} is damaged ({error}): {CONFIG_FIX}") from None


CONFIG_FIX = "restore it from a backup, or start a new run with another --name"


def read_config_json(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.json`` as parsed JSON of the right shape (sections are objects, class names a list)."""
    path = run_dir / CONFIG_FILE
    raw = read_run_json(path, fix=CONFIG_FIX)
    problem = run_config_problem(raw)
    if problem:
        raise UserError(f"{path} is damaged ({problem}): {CONFIG_FIX}")
    return raw


def read_run_json(path: Path, *, fix: str) -> Any:
    """A run's JSON file, or one line naming it when a disk fault or a hand edit broke it."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}): {fix}") from None


def damaged_model_file(path: Path) -> str | None:
    """Why a ``.keras`` file that exists cannot be a model (Keras calls a truncated one "File not found"), or None.

    A ``.keras`` file is a zip archive; a kill or a disk fault that cut it short leaves no readable central directory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        return f"damaged: truncated or not a .keras archive ({error})"
    return f"damaged: {broken} in the archive fails its checksum" if broken else None


SEARCH_DIR = "search"
SETTINGS_FILE = "search.json"
RETRAINED_FILE = "retrained.json"  # which trial the run beside the search retrains


def trial_number(trial_id: str) -> int:
    """The number KerasTuner prints for a trial (``Running Trial #3``), which every message and name here uses.

    KerasTuner numbers trials from 1 in the order they are created, and gives each the id ``len(trials)``
    (zero-padded) when it is created: trial ``#3`` is trial id ``2``, whose folder is ``search/trial_2``.
    """
    return int(trial_id) + 1
