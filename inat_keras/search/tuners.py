"""KerasTuner's three tuners, as this project runs them: atomic state files, and trials that report
their best epoch with their start time and duration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np

from inat_keras.config import RunConfig
from inat_keras.search.hypermodel import TrialModels
from inat_keras.search.record import SearchSettings
from inat_keras.search.space import OBJECTIVE
from inat_keras.storage import write_json

HYPERBAND_FACTOR = 3


# The two mixins below derive from the KerasTuner class they extend, so their methods see its attributes. The
# classes that combine them keep the same method resolution order: mixin, then KerasTuner's tuner or oracle.
class AtomicStateFiles(kt.Oracle):
    """KerasTuner writes oracle.json and trial.json in place; a kill mid-write would leave them unreadable."""

    def save(self) -> None:
        write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial: kt.engine.trial.Trial) -> None:
        write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())


class BayesianOracle(AtomicStateFiles, kt.oracles.BayesianOptimizationOracle):
    pass


class RandomOracle(AtomicStateFiles, kt.oracles.RandomSearchOracle):
    pass


class HyperbandOracle(AtomicStateFiles, kt.oracles.HyperbandOracle):
    pass


class TrialRecording(kt.Tuner):
    """Runs a trial, then reports its best-epoch metrics with its start time and duration.

    Returning them as metrics sends them through the oracle (and over gRPC in a distributed
    search), so the chief's ``trial.json`` files hold everything the sweep analysis needs.
    """

    def __init__(self, oracle: kt.Oracle, **kwargs: Any) -> None:
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)  # the tuner classes only add their own oracle
        self.trials_run: list[str] = []

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        started = time.time()
        self.trials_run.append(trial.trial_id)
        histories = super().run_trial(trial, *args, trial_id=trial.trial_id, **kwargs)
        return {**average_best_epochs(histories), "trial_start": started, "trial_seconds": time.time() - started}


class BayesianSearch(TrialRecording, kt.BayesianOptimization):
    pass


class RandomSearch(TrialRecording, kt.RandomSearch):
    pass


class HyperbandSearch(TrialRecording, kt.Hyperband):
    pass


# --tuner: (oracle, tuner)
TUNER_CLASSES: dict[str, tuple[type[AtomicStateFiles], type[TrialRecording]]] = {
    "bayes": (BayesianOracle, BayesianSearch),
    "random": (RandomOracle, RandomSearch),
    "hyperband": (HyperbandOracle, HyperbandSearch),
}


def average_best_epochs(histories: list) -> dict[str, float]:
    """Each execution's metrics at its best validation-accuracy epoch, averaged over executions."""
    rows = []
    for history in histories:
        series = history.history
        best = int(np.argmax(series[OBJECTIVE]))
        rows.append({**{name: float(values[best]) for name, values in series.items()}, "epochs_run": len(series[OBJECTIVE])})
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def make_tuner(base: RunConfig, settings: SearchSettings, hypermodel: TrialModels, search_dir: Path) -> TrialRecording:
    oracle_class, tuner_class = TUNER_CLASSES[settings.tuner]
    objective = kt.Objective(OBJECTIVE, direction="max")
    if settings.tuner == "hyperband":
        # KerasTuner's Hyperband has no trial budget: allow as many iterations as trials and let max_trials end it.
        oracle = oracle_class(
            objective=objective,
            max_epochs=base.train.epochs,
            factor=HYPERBAND_FACTOR,
            hyperband_iterations=settings.max_trials,
            seed=base.data.seed,
        )
        oracle.max_trials = settings.max_trials
    else:
        oracle = oracle_class(objective=objective, max_trials=settings.max_trials, seed=base.data.seed)
    return tuner_class(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=str(search_dir.parent),
        project_name=search_dir.name,
        overwrite=False,
        executions_per_trial=settings.executions_per_trial,
    )
