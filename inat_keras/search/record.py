"""``search.json``: what a search was asked to do, and the check that a re-run asks the same.

A search continues when its own command is run again; other settings would mix incomparable trials.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.runs import SETTINGS_FILE
from inat_keras.search.space import TUNERS
from inat_keras.storage import read_json, write_json

# -- settings and their record --------------------------------------------------------------


@dataclass
class SearchSettings:
    """What one search was asked to do (``search.json``)."""

    tuner: str = "bayes"
    max_trials: int = 20
    executions_per_trial: int = 1
    space: dict[str, Any] = field(default_factory=dict)
    retrain: bool = True

    def validate(self) -> None:
        if self.tuner not in TUNERS:
            raise UserError(f"--tuner {self.tuner}: choose one of {', '.join(TUNERS)}")
        if self.max_trials < 1:
            raise UserError(f"--max-trials {self.max_trials}: run at least 1 trial")
        if self.executions_per_trial < 1:
            raise UserError(f"--executions-per-trial {self.executions_per_trial}: train each trial at least once")


# Changing these between runs of one search would mix incomparable trials.
COMPARED_SETTINGS = ("tuner", "executions_per_trial", "space")


def search_record(base: RunConfig, settings: SearchSettings) -> dict[str, Any]:
    base_dict = base.to_dict()
    base_dict.pop("tracking")
    return {**dataclasses.asdict(settings), "base": base_dict}


def changed_settings(previous: Any, current: Any, name: str) -> list[str]:
    """Each setting under ``name`` that differs, dotted, with both values: ``train.epochs was 2, now 3``."""
    if isinstance(previous, dict) and isinstance(current, dict):
        keys = sorted(previous.keys() | current.keys())
        prefix = f"{name}." if name else ""
        return [
            change
            for key in keys
            for change in changed_settings(previous.get(key, "unset"), current.get(key, "unset"), prefix + key)
        ]
    return [] if previous == current else [f"{name} was {previous}, now {current}"]


def with_defaults(base: dict[str, Any]) -> dict[str, Any]:
    """A recorded base config as this version records it: settings added since take their defaults.

    So a search started before a new setting existed continues, unless the new setting was asked for.
    """
    try:
        filled = RunConfig.from_dict(base).to_dict()
    except (UserError, TypeError, ValueError, KeyError):  # not a whole config, or a setting since removed: as recorded
        return base
    filled.pop("tracking", None)
    return filled


def without_location(base: dict[str, Any]) -> dict[str, Any]:
    """A base config without its name and parent folder: a search continues after its folder moved."""
    return {key: value for key, value in base.items() if key not in ("name", "out")}


def record_or_check(search_dir: Path, record: dict[str, Any]) -> None:
    """Write ``search.json``, or refuse to continue a search that was asked something else."""
    path = search_dir / SETTINGS_FILE
    if path.exists():
        previous = read_json(path)
        changed = [
            change for key in COMPARED_SETTINGS for change in changed_settings(previous.get(key, "unset"), record[key], key)
        ]
        # The base run's settings read as their flags' sections (data, model, train), without "base.".
        changed += changed_settings(
            without_location(with_defaults(previous.get("base", {}))), without_location(with_defaults(record["base"])), ""
        )
        if changed:
            raise UserError(
                f"{search_dir} holds a search with other settings ({'; '.join(changed)}): re-run its own "
                f"command to continue it, or pick another --name"
            )
    write_json(path, record)


def check_search_files(search_dir: Path) -> None:
    """One line naming a state file a disk fault damaged, before KerasTuner fails on it with a traceback."""
    for path in [search_dir / "oracle.json", *sorted(search_dir.glob("trial_*/trial.json"))]:
        if not path.exists():
            continue
        try:
            read_json(path)
        except (ValueError, UnicodeDecodeError) as error:
            raise UserError(
                f"{path} is damaged ({error}): this search cannot continue from it; start it again with another --name"
            ) from None
