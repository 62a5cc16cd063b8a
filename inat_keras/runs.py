"""The run directory ``<out>/<name>/``: the names of its files and reading them back.

A run holds ``config.json`` (everything to rebuild and retrain), ``split.csv``, ``best.keras`` (best
validation accuracy), ``history.csv``, ``curves.png``, ``metrics.json``, and while it is unfinished
``checkpoint/`` (the last completed epoch, for ``--resume``). A search keeps KerasTuner's files in
``search/``. Every file is written to a temporary name and renamed (``storage``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.storage import read_csv, read_json

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"  # path, label, subset (train, validation, test)
BEST_MODEL = "best.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
METRICS_FILE = "metrics.json"
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
    if not resume and (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {run_dir} ({error.strerror}): choose a writable --out directory") from None


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: --resume takes a run directory written by a training command")
    return RunConfig.from_dict(read_run_json(path, fix="start a new run with another --name"))


def read_run_json(path: Path, *, fix: str) -> Any:
    """A run's JSON file, or one line naming it when a disk fault or a hand edit broke it."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}): {fix}") from None


SEARCH_DIR = "search"
SETTINGS_FILE = "search.json"
RETRAINED_FILE = "retrained.json"  # which trial the run beside the search retrains
