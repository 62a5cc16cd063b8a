"""The trials of a search, read from KerasTuner's files, and what they say about each hyperparameter."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from inat_keras.runs import trial_number
from inat_keras.search.space import OBJECTIVE

# A Spearman correlation weaker than this is reported as "no clear trend".
CLEAR_TREND = 0.3
# A random-forest importance below this is treated as noise when naming a best value.
WEAK_IMPORTANCE = 0.05
# Below this many completed trials the summary says its findings are hints.
FEW_TRIALS = 10


@dataclass
class TrialRecord:
    """One trial as KerasTuner stored it: values, status and the metrics the search reported."""

    trial_id: str
    status: str
    values: dict[str, Any]
    metrics: dict[str, float]

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get(OBJECTIVE)

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED" and self.accuracy is not None

    @property
    def completed_accuracy(self) -> float:
        """The accuracy of a completed trial (``ranked`` returns only those), typed as never None."""
        accuracy = self.accuracy
        if accuracy is None:
            raise ValueError(f"trial {self.trial_id} has no {OBJECTIVE}: it has not completed")
        return accuracy

    @property
    def start(self) -> datetime | None:
        started = self.metrics.get("trial_start")
        return datetime.fromtimestamp(started) if started else None


def read_trials(search_dir: Path) -> tuple[list[TrialRecord], dict[str, dict[str, Any]]]:
    """The trials in id order, and the space: name -> KerasTuner's hyperparameter config (class_name, config)."""
    trials: list[TrialRecord] = []
    space: dict[str, dict[str, Any]] = {}
    for path in sorted(search_dir.glob("trial_*/trial.json")):
        # The format is KerasTuner's Trial.get_state(); parsed here so the analysis needs no TensorFlow.
        state = json.loads(path.read_text(encoding="utf-8"))
        for entry in state["hyperparameters"]["space"]:
            space.setdefault(entry["config"]["name"], entry)
        metrics = {}
        for name, history in state["metrics"]["metrics"].items():
            if history["observations"]:
                last = history["observations"][-1]["value"]
                metrics[name] = float(sum(last) / len(last))
        trials.append(TrialRecord(state["trial_id"], state["status"], dict(state["hyperparameters"]["values"]), metrics))
    return trials, space


def hyperparameter_names(trials: list[TrialRecord], space: dict[str, Any]) -> list[str]:
    """Searched hyperparameters in declaration order; KerasTuner's "tuner/..." bookkeeping last."""
    names = list(dict.fromkeys([*space, *(name for t in trials for name in t.values)]))
    return [n for n in names if not n.startswith("tuner/")] + [n for n in names if n.startswith("tuner/")]


def varying(trials: list[TrialRecord], names: list[str]) -> list[str]:
    """Hyperparameters that took more than one value among completed trials (the others explain nothing)."""
    done = [t for t in trials if t.completed]
    return [n for n in names if not n.startswith("tuner/") and len({repr(t.values.get(n)) for t in done}) > 1]


def is_categorical(name: str, trials: list[TrialRecord]) -> bool:
    return any(isinstance(t.values.get(name), (str, bool)) for t in trials)


def is_log(name: str, space: dict[str, Any]) -> bool:
    return space.get(name, {}).get("config", {}).get("sampling") == "log"


def ordered_choices(name: str, space: dict[str, Any]) -> list[float] | None:
    """The values of a numeric ``Choice`` (e.g. l2 in 0, 1e-5, 1e-4, 1e-3), sorted; None for any other hyperparameter."""
    entry = space.get(name, {})
    values = entry.get("config", {}).get("values") or []
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return sorted(values) if entry.get("class_name") == "Choice" and values and numeric else None


def trial_rows(trials: list[TrialRecord], names: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["trial", "trial_id", "start_time", "duration_s", "status", *names, OBJECTIVE, "val_loss", "epochs_run"]
    rows = []
    for t in trials:
        start = t.start.isoformat(timespec="seconds") if t.start else ""
        seconds = t.metrics.get("trial_seconds")
        rows.append(
            [trial_number(t.trial_id), t.trial_id, start, "" if seconds is None else round(seconds, 2), t.status]
            + [t.values.get(n, "") for n in names]
            + [t.metrics.get(m, "") for m in (OBJECTIVE, "val_loss")]
            + [int(t.metrics["epochs_run"]) if "epochs_run" in t.metrics else ""]
        )
    return header, rows


def ranked(trials: list[TrialRecord]) -> list[TrialRecord]:
    return sorted((t for t in trials if t.completed), key=lambda t: -t.completed_accuracy)


def best_record(trials: list[TrialRecord]) -> dict[str, Any] | None:
    best = ranked(trials)[:1]
    if not best:
        return None
    t = best[0]
    return {
        "trial": trial_number(t.trial_id),
        "trial_id": t.trial_id,
        OBJECTIVE: t.accuracy,
        "val_loss": t.metrics.get("val_loss"),
        "hyperparameters": {k: v for k, v in t.values.items() if not k.startswith("tuner/")},
    }


def encode(trials: list[TrialRecord], names: list[str], space: dict[str, Any]) -> tuple[list[str], list[list[float]]]:
    """Feature columns: numbers as they are (log10 for log-sampled ones), booleans 0/1, text one-hot."""
    columns, features = [], []
    for name in names:
        # As KerasTuner stored them; a value a trial lacks is None (for text, the category "None").
        values: list[Any] = [t.values.get(name) for t in trials]
        if isinstance(values[0], str):
            for category in sorted({str(v) for v in values}):
                columns.append(f"{name}={category}")
                features.append([float(str(v) == category) for v in values])
        else:
            columns.append(name)
            log = is_log(name, space)
            features.append([math.log10(float(v)) if log else float(v) for v in values])
    return columns, features


def parameter_importance(trials: list[TrialRecord], names: list[str], space: dict[str, Any]) -> list[dict[str, Any]]:
    """Per feature: Spearman correlation with validation accuracy and a random forest's importance."""
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.ensemble import RandomForestRegressor

    done = ranked(trials)
    if len(done) < 2 or not names:
        return []
    columns, features = encode(done, names, space)
    accuracy = np.array([t.accuracy for t in done])
    matrix = np.array(features).T
    importances = [math.nan] * len(columns)
    if np.ptp(accuracy) > 0:
        forest = RandomForestRegressor(n_estimators=300, random_state=0, min_samples_leaf=1)
        importances = forest.fit(matrix, accuracy).feature_importances_.tolist()
    rows = []
    for column, values, importance in zip(columns, features, importances, strict=True):
        constant = np.ptp(values) == 0 or np.ptp(accuracy) == 0
        correlation = math.nan if constant else float(spearmanr(values, accuracy).statistic)
        rows.append({"parameter": column, "importance": importance, "correlation": correlation, "trials": len(done)})
    return sorted(rows, key=lambda r: -(r["importance"] if math.isfinite(r["importance"]) else -1))
