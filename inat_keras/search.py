"""Hyperparameter search with KerasTuner: search spaces, tuners, a resumable search, the best run retrained.

``runs/<name>/search/`` is KerasTuner's project directory (``oracle.json``, ``trial_*/trial.json``)
plus ``search.json`` (what was asked) and the sweep analysis (``inat_keras.sweep_analysis``).
Re-running the same command reloads the oracle (KerasTuner's ``overwrite=False``): finished trials
are kept, the trial a kill interrupted runs again with the same values, the rest follow. When the
search ends, the best values are retrained into ``runs/<name>/`` as an ordinary run (``train_run``).

Distributed search is KerasTuner's own: with ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT`` and
``KERASTUNER_TUNER_ID`` set, the process whose id contains "chief" serves the oracle over gRPC and the
others ("tuner0", "tuner1", ...) ask it for trials; the chief then analyses and retrains.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ACTIVATIONS, OPTIMIZERS, POOLINGS, RunConfig
from .errors import UserError
from .io import read_json, write_json

TUNERS = ("bayes", "random", "hyperband")
OBJECTIVE = "val_accuracy"
SEARCH_DIR = "search"
SETTINGS_FILE = "search.json"
RETRAINED_FILE = "retrained.json"  # which trial the run beside the search retrains
# Early stopping inside a trial when --early-stopping does not set it: a trial that stalls for
# three epochs rarely becomes the best one, and the budget goes to the next trial instead.
TRIAL_PATIENCE = 3
HYPERBAND_FACTOR = 3


# -- hyperparameters and search spaces -------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """A hyperparameter: where it goes in a RunConfig, its Python type, and the check of its values."""

    section: str  # "model", "train" or "data"
    kind: type  # int, float, bool or str
    check: Callable[[Any], str | None] = lambda value: None


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def fraction(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def one_of(options) -> Callable[[Any], str | None]:
    return lambda value: None if value in options else f"choose among {', '.join(map(str, options))}"


def unfreeze_depth(value: str) -> str | None:
    return None if value == "all" or (value.isdigit()) else "give a number of top backbone layers, 0 or 'all'"


COMMON_PARAMETERS = {
    "learning_rate": Parameter("train", float, positive),
    "optimizer": Parameter("train", str, one_of(OPTIMIZERS)),
    "weight_decay": Parameter("train", float, non_negative),
    "label_smoothing": Parameter("train", float, fraction),
    "batch_size": Parameter("data", int, positive),
    "augment": Parameter("data", bool),
}
SCRATCH_PARAMETERS = {
    "first_filters": Parameter("model", int, positive),
    "filter_organisation": Parameter("model", float, positive),
    "num_blocks": Parameter("model", int, positive),
    "kernel_size": Parameter("model", int, positive),
    # One kernel size per conv block: hyperparameters kernel_size_1 ... kernel_size_<most blocks>.
    "kernel_size_per_block": Parameter("model", int, positive),
    "activation": Parameter("model", str, one_of(ACTIVATIONS)),
    "batch_norm": Parameter("model", bool),
    "batch_norm_momentum": Parameter("model", float, fraction),
    "conv_dropout": Parameter("model", float, fraction),
    "dense_dropout": Parameter("model", float, fraction),
    "pooling": Parameter("model", str, one_of(POOLINGS)),
    "dense_units": Parameter("model", int, positive),
    "l2": Parameter("model", float, non_negative),
    **COMMON_PARAMETERS,
}
TRANSFER_PARAMETERS = {
    "backbone": Parameter("model", str),  # checked against inat_keras.transfer.BACKBONES
    # Strings, because a KerasTuner Choice holds one type and "all" is a depth too.
    "unfreeze": Parameter("model", str, unfreeze_depth),
    "dropout": Parameter("model", float, fraction),
    "dense_units": Parameter("model", int, non_negative),  # 0: no dense layer in the head
    "finetune_lr_factor": Parameter("model", float, lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
    **COMMON_PARAMETERS,
}

# The course's sweep over the from-scratch CNN. One kernel size for all blocks by default: a size
# per block adds five dimensions to a budget of a few dozen trials (opt in with kernel_size_per_block).
SCRATCH_SPACE: dict[str, Any] = {
    "first_filters": [32, 64, 128],
    "filter_organisation": [0.5, 1.0, 2.0],
    "num_blocks": [3, 4, 5],
    "kernel_size": [3, 5],
    "activation": ["relu", "gelu", "silu", "mish"],
    "batch_norm": [True, False],
    "dense_dropout": [0.0, 0.2, 0.3],
    "dense_units": [128, 256, 512],
    "learning_rate": {"min": 1e-4, "max": 1e-2, "log": True},
    "batch_size": [32, 64],
    "augment": [True, False],
    "l2": [0.0, 1e-5, 1e-4, 1e-3],
}
TRANSFER_SPACE: dict[str, Any] = {
    "backbone": ["resnet50", "efficientnetv2s", "mobilenetv2"],
    "unfreeze": ["0", "20", "50", "all"],
    "dropout": [0.0, 0.2, 0.4],
    "dense_units": [0, 256, 512],
    "learning_rate": {"min": 1e-4, "max": 1e-2, "log": True},
}
# A flag given on the command line fixes its hyperparameter; these flags fix others too.
PINNED_ALSO = {
    "filters": ("first_filters", "filter_organisation", "num_blocks"),
    "kernel_size": ("kernel_size_per_block",),
}


def parameters_for(kind: str) -> dict[str, Parameter]:
    return TRANSFER_PARAMETERS if kind == "transfer" else SCRATCH_PARAMETERS


def default_space(kind: str) -> dict[str, Any]:
    return dict(TRANSFER_SPACE if kind == "transfer" else SCRATCH_SPACE)


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coerce(value: Any, parameter: Parameter, where: str) -> Any:
    """One value of a space entry, as the parameter's type, or a UserError naming it."""
    kind = parameter.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:  # a whole number is fine where the text is a number ("unfreeze": [0, 20, "all"])
        ok = isinstance(value, str) or (is_number(value) and float(value).is_integer())
    else:
        ok = is_number(value) and (kind is float or float(value).is_integer())
    if not ok:
        raise UserError(f"{where}: {value!r} is not {TYPE_NAMES[kind]}")
    value = str(int(value)) if kind is str and is_number(value) else kind(value)
    problem = parameter.check(value)
    if problem:
        raise UserError(f"{where}: {value!r} {problem}")
    return value


def normalise_entry(name: str, entry: Any, parameter: Parameter, source: str) -> Any:
    """A list (a choice), a single value (fixed), or {min, max[, log, step]} (a numeric range)."""
    where = f"{source}: {name}"
    if isinstance(entry, list):
        if not entry:
            raise UserError(f"{where}: the list of values is empty; give at least one value, or null to leave it out")
        values = [coerce(value, parameter, where) for value in entry]
        return list(dict.fromkeys(values))
    if isinstance(entry, dict):
        if parameter.kind not in (int, float):
            raise UserError(f"{where}: a {{min, max}} range needs a numeric hyperparameter; give a list of values")
        unknown = sorted(set(entry) - {"min", "max", "log", "step"})
        if unknown or not {"min", "max"} <= set(entry):
            raise UserError(f"{where}: a range is {{\"min\": ..., \"max\": ..., \"log\": true|false, \"step\": ...}}; got keys {sorted(entry)}")
        low, high = coerce(entry["min"], parameter, where), coerce(entry["max"], parameter, where)
        if not low < high:
            raise UserError(f"{where}: min {low} must be below max {high}")
        log = entry.get("log", False)
        if not isinstance(log, bool) or (log and low <= 0):
            raise UserError(f"{where}: log must be true or false, and a log range needs min > 0")
        step = entry.get("step")
        if step is not None:
            step = coerce(step, parameter, f"{where} step")
        return {"min": low, "max": high, "log": log, **({"step": step} if step is not None else {})}
    return coerce(entry, parameter, where)


def load_space_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"--search-space {path}: cannot read it ({error.strerror})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            import json

            raw = json.loads(text)
    except Exception as error:  # JSONDecodeError or yaml.YAMLError: both say where
        raise UserError(f"--search-space {path}: not valid {path.suffix[1:].upper() or 'JSON'} ({error})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise UserError(f"--search-space {path}: expected a mapping of hyperparameter names to values")
    return raw


def resolve_space(kind: str, space_file: str | None = None, pinned: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The default space, overridden entry by entry by the file (null removes one), minus pinned names."""
    parameters = parameters_for(kind)
    space: dict[str, Any] = default_space(kind)
    source = "default search space"
    if space_file:
        source = f"--search-space {space_file}"
        overrides = load_space_file(space_file)
        unknown = sorted(set(overrides) - set(parameters))
        if unknown:
            raise UserError(f"{source}: unknown hyperparameter(s) {', '.join(unknown)}; known are {', '.join(parameters)}")
        space.update(overrides)
    space = {name: entry for name, entry in space.items() if entry is not None and name not in pinned}
    if "kernel_size_per_block" in space:
        space.pop("kernel_size", None)  # one size per block replaces the single size
    if kind == "transfer" and "backbone" in space:
        from .transfer import BACKBONES

        parameters = {**parameters, "backbone": dataclasses.replace(parameters["backbone"], check=one_of(tuple(BACKBONES)))}
    return {name: normalise_entry(name, entry, parameters[name], source) for name, entry in space.items()}


def declare(hp, space: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """Declare the space on a KerasTuner ``HyperParameters`` and return this trial's values."""
    values = {}
    for name, entry in space.items():
        if name == "kernel_size_per_block":
            for block in range(1, most_blocks(space, base.model.get("num_blocks", 5)) + 1):
                values[f"kernel_size_{block}"] = declare_one(hp, f"kernel_size_{block}", entry, int)
            continue
        values[name] = declare_one(hp, name, entry, parameters_for(base.kind)[name].kind)
    return values


def declare_one(hp, name: str, entry: Any, kind: type) -> Any:
    if isinstance(entry, dict):
        numeric = hp.Int if kind is int else hp.Float
        sampling = "log" if entry["log"] else "linear"
        return numeric(name, min_value=entry["min"], max_value=entry["max"], step=entry.get("step"), sampling=sampling)
    if not isinstance(entry, list) or len(entry) == 1:
        return hp.Fixed(name, entry[0] if isinstance(entry, list) else entry)
    if kind is bool:
        return hp.Boolean(name)
    return hp.Choice(name, entry)


def most_blocks(space: dict[str, Any], default: int = 5) -> int:
    entry = space.get("num_blocks", default)
    if isinstance(entry, dict):
        return int(entry["max"])
    return max(entry) if isinstance(entry, list) else int(entry)


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The RunConfig of one set of hyperparameter values (KerasTuner's own "tuner/..." values are ignored)."""
    config = RunConfig.from_dict(base.to_dict())
    parameters = parameters_for(config.kind)
    sections = {"model": config.model, "train": config.train, "data": config.data}
    for name, value in values.items():
        if name not in parameters or name == "kernel_size_per_block":
            continue
        if name == "dense_units":
            value = [value] if value else []
        elif name == "unfreeze":
            value = "all" if value == "all" else int(value)
        target = sections[parameters[name].section]
        if isinstance(target, dict):
            target[name] = value
        else:
            setattr(target, name, value)
    if "kernel_size_1" in values:
        blocks = config.model.get("num_blocks", 5)
        config.model["kernel_size"] = [values[f"kernel_size_{block}"] for block in range(1, blocks + 1)]
    return config


def pinned_by_flags(args: argparse.Namespace, kind: str) -> set[str]:
    """Hyperparameters whose flag was given: the search keeps the flag's value."""
    given = {name for name, value in vars(args).items() if value is not None}
    pinned = given & set(parameters_for(kind))
    for flag, names in PINNED_ALSO.items():
        if flag in given:
            pinned.update(names)
    return pinned


def check_space_fits(base: RunConfig, space: dict[str, Any], num_classes: int) -> None:
    """Refuse, before any trial, a space that cannot be built: too deep for the images, a bad backbone."""
    if base.kind == "transfer":
        from .transfer import validate_transfer

        backbones = space.get("backbone", [base.model.get("backbone")])
        for backbone in backbones if isinstance(backbones, list) else [backbones]:
            config = trial_config(base, {"backbone": backbone} if backbone else {})
            try:
                validate_transfer(config, num_classes)  # also fetches ImageNet weights once, before any trial
            except UserError as error:
                raise UserError(f"search space (backbone {backbone}): {error}") from None
        return
    from .training import cnn_config

    deepest = trial_config(base, {"num_blocks": most_blocks(space, base.model.get("num_blocks", 5))})
    if "kernel_size_per_block" in space:
        deepest.model.pop("kernel_size", None)
    try:
        cnn_config(deepest, num_classes)
    except UserError as error:
        raise UserError(f"search space: {error}") from None


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
            change
            for key in COMPARED_SETTINGS
            for change in changed_settings(previous.get(key, "unset"), record[key], key)
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


# -- KerasTuner classes (built on first use: keras_tuner imports TensorFlow) -------------------------


@functools.cache
def tuner_classes() -> dict[str, type]:
    """This project's tuner for each --tuner, and the hypermodel they train."""
    import keras_tuner as kt

    class AtomicStateFiles:
        """KerasTuner writes oracle.json and trial.json in place; a kill mid-write would leave them unreadable."""

        def save(self):
            write_json(self._get_oracle_fname(), self.get_state())

        def _save_trial(self, trial):
            write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())

    class TrialRecording:
        """Runs a trial, then reports its best-epoch metrics with its start time and duration.

        Returning them as metrics sends them through the oracle (and over gRPC in a distributed
        search), so the chief's ``trial.json`` files hold everything the sweep analysis needs.
        """

        def __init__(self, oracle, **kwargs):
            kt.Tuner.__init__(self, oracle=oracle, **kwargs)  # the tuner classes only add their own oracle
            self.trials_run: list[str] = []

        def run_trial(self, trial, *args, **kwargs):
            started = time.time()
            self.trials_run.append(trial.trial_id)
            histories = super().run_trial(trial, *args, trial_id=trial.trial_id, **kwargs)
            return {**average_best_epochs(histories), "trial_start": started, "trial_seconds": time.time() - started}

    oracles = {
        "bayes": kt.oracles.BayesianOptimizationOracle,
        "random": kt.oracles.RandomSearchOracle,
        "hyperband": kt.oracles.HyperbandOracle,
    }
    tuners = {"bayes": kt.BayesianOptimization, "random": kt.RandomSearch, "hyperband": kt.Hyperband}
    classes: dict[str, type] = {"hypermodel": make_hypermodel_class(kt)}
    for name in TUNERS:
        classes[f"{name}_oracle"] = type(f"{oracles[name].__name__}", (AtomicStateFiles, oracles[name]), {})
        classes[name] = type(f"{tuners[name].__name__}Search", (TrialRecording, tuners[name]), {})
    return classes


def average_best_epochs(histories: list) -> dict[str, float]:
    """Each execution's metrics at its best validation-accuracy epoch, averaged over executions."""
    import numpy as np

    rows = []
    for history in histories:
        series = history.history
        best = int(np.argmax(series[OBJECTIVE]))
        rows.append({**{name: float(values[best]) for name, values in series.items()}, "epochs_run": len(series[OBJECTIVE])})
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def make_hypermodel_class(kt) -> type:
    class TrialModels(kt.HyperModel):
        """Builds and trains one trial's model from the run's base config and the trial's values."""

        def __init__(self, base: RunConfig, space: dict[str, Any], split, search_dir: Path) -> None:
            super().__init__(name=base.kind)
            self.base, self.space, self.split, self.search_dir = base, space, split, search_dir
            self.num_classes = len(split.class_names)
            self.images: dict[str, Any] = {}
            self.executions: dict[str, int] = {}

        def build(self, hp):
            from .training import build_model, compile_model, set_precision

            config = trial_config(self.base, declare(hp, self.space, self.base))
            # KerasTuner clears the Keras session before each build, which resets the precision policy.
            set_precision(config.train.mixed_precision)
            model = build_model(config, self.num_classes)
            compile_model(model, config, steps_per_epoch=math.ceil(len(self.split.train) / config.data.batch_size))
            return model

        def fit(self, hp, model, *args, trial_id: str, callbacks=(), verbose="auto", epochs=None, initial_epoch=0, **kwargs):
            import keras

            config = trial_config(self.base, hp.values)
            patience = config.train.early_stopping or TRIAL_PATIENCE
            # One History over all of fit_transfer's phases (each model.fit call starts its own).
            history = keras.callbacks.History()
            callbacks = [*callbacks, keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=patience), history]
            wandb_run = self.start_tracking(config, trial_id, hp.values)
            if wandb_run is not None:
                callbacks.extend(wandb_run.callbacks())
            train, validation = self.datasets(config)
            budget = epochs or config.train.epochs
            if config.kind == "transfer":
                fit_transfer_trial(model, config, {"train": train, "validation": validation}, callbacks,
                                   budget=budget, initial_epoch=initial_epoch, verbose=verbose,
                                   steps_per_epoch=math.ceil(len(self.split.train) / config.data.batch_size))
            else:
                model.fit(
                    train,
                    validation_data=validation,
                    epochs=budget,
                    initial_epoch=initial_epoch,
                    shuffle=False,  # the tf.data pipeline shuffles
                    callbacks=callbacks,
                    verbose=verbose,
                )
            if wandb_run is not None:
                wandb_run.log_summary({"best_" + OBJECTIVE: max(history.history[OBJECTIVE])})
                wandb_run.finish()
            return history

        def datasets(self, config: RunConfig):
            """Images decoded and cached once for the whole search; batched per trial (batch size, augmentation)."""
            from . import data as data_lib

            if not self.images:
                for subset in ("train", "validation"):
                    files = getattr(self.split, subset)
                    self.images[subset] = data_lib.cached_images(files, self.base.data, self.num_classes, cache_name=f"search-{subset}")
            return (
                data_lib.batched(self.images["train"], config.data, len(self.split.train), training=True),
                data_lib.batched(self.images["validation"], config.data, len(self.split.validation), training=False),
            )

        def start_tracking(self, config: RunConfig, trial_id: str, values: dict[str, Any]):
            from .tracking import start_wandb

            execution = self.executions[trial_id] = self.executions.get(trial_id, 0) + 1
            name = f"{self.base.name}-trial-{trial_id}" + (f"-{execution}" if execution > 1 else "")
            tracking = dataclasses.replace(config.tracking, group=config.tracking.group or self.base.name)
            return start_wandb(
                tracking,
                self.search_dir / f"trial_{trial_id}",
                name=name,
                job_type="search",
                config={**values, "trial_id": trial_id, "search": self.base.name},
            )

    return TrialModels


def fit_transfer_trial(model, config: RunConfig, datasets: dict[str, Any], callbacks: list, *,
                       budget: int, initial_epoch: int, verbose, steps_per_epoch: int) -> None:
    """A fine-tuning trial through the run's phases (head, then unfreezing), stopped at the trial's epoch budget."""
    import keras

    from .transfer import fit_transfer

    # Always on full images: KerasTuner saves the model that fit trains, which on cached features is the head alone.
    config.model["feature_cache"] = False
    state: dict[str, Any] = {"epochs_done": initial_epoch, "stopped": None}

    class EpochBudget(keras.callbacks.Callback):
        """Counts epochs for fit_transfer's phases and ends the trial at its budget or on early stopping."""

        def on_epoch_end(self, epoch, logs=None):
            state["epochs_done"] = epoch + 1
            if state["epochs_done"] >= budget or self.model.stop_training:
                state["stopped"] = "budget"
                self.model.stop_training = True

    fit_transfer(model, config, datasets, state, [*callbacks, EpochBudget()], steps_per_epoch=steps_per_epoch,
                 verbose=verbose, log=lambda message: None)


def make_tuner(base: RunConfig, settings: SearchSettings, hypermodel, search_dir: Path):
    import keras_tuner as kt

    classes = tuner_classes()
    objective = kt.Objective(OBJECTIVE, direction="max")
    oracle_class = classes[f"{settings.tuner}_oracle"]
    if settings.tuner == "hyperband":
        # KerasTuner's Hyperband has no trial budget: allow as many iterations as trials and let max_trials end it.
        oracle = oracle_class(
            objective=objective, max_epochs=base.train.epochs, factor=HYPERBAND_FACTOR,
            hyperband_iterations=settings.max_trials, seed=base.data.seed,
        )
        oracle.max_trials = settings.max_trials
    else:
        oracle = oracle_class(objective=objective, max_trials=settings.max_trials, seed=base.data.seed)
    return classes[settings.tuner](
        oracle=oracle,
        hypermodel=hypermodel,
        directory=str(search_dir.parent),
        project_name=search_dir.name,
        overwrite=False,
        executions_per_trial=settings.executions_per_trial,
    )


# -- distributed mode -------------------------------------------------------------------------


def tuner_role(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """"single", or KerasTuner's "chief" (serves the oracle) or "worker" (runs trials), from its variables."""
    if "KERASTUNER_ORACLE_IP" not in environ:
        return "single"
    missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not environ.get(name)]
    if missing:
        raise UserError(
            f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not: a distributed search needs all three "
            f"(the chief's KERASTUNER_TUNER_ID is 'chief', the workers' tuner0, tuner1, ...)"
        )
    return "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"


def serve_oracle(oracle, poll_seconds: float = 0.2) -> None:
    """KerasTuner's chief server (``oracle_chief.start_server``), polling for the end every 0.2 s.

    KerasTuner's own loop sleeps 20 s between checks once the first worker is told to stop.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    if not server.add_insecure_port(address):
        raise UserError(f"cannot serve the oracle on {address}: pick a free KERASTUNER_ORACLE_PORT")
    server.start()
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=1)


# -- the search --------------------------------------------------------------------------------


@dataclass
class SearchResult:
    search_dir: Path
    role: str
    trials_run: list[str]
    best: dict[str, Any] | None = None
    run: Any = None  # the RunResult of the retrained best configuration
    messages: list[str] = field(default_factory=list)


def run_search(
    base: RunConfig,
    settings: SearchSettings,
    *,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Search (or continue searching), analyse the trials, and retrain the best configuration."""
    import keras

    from . import data as data_lib
    from .datacheck import check_before_training
    from .training import configure_devices, resolve_data_dir, run_dir_of, train_run

    settings.validate()
    base.train.validate()
    base.data.validate()
    if base.train.distribute != "none":
        raise UserError(
            f"--distribute {base.train.distribute} with --tuner: trials run on one device each; spread a search over "
            f"devices or machines with KerasTuner's distributed mode (see README, 'Distributed search')"
        )
    role = tuner_role()
    configure_devices()
    resolve_data_dir(base)
    data_lib.discover_dataset(base.data.data_dir)  # the folder layout first: it costs no decoding
    data_report = check_before_training(base.data.data_dir, skip_bad=base.data.skip_bad, log=log)
    split = data_lib.make_split(base.data, exclude=data_report.bad_paths)
    check_space_fits(base, settings.space, len(split.class_names))
    search_dir = run_dir_of(base) / SEARCH_DIR
    search_dir.mkdir(parents=True, exist_ok=True)
    if role != "worker":
        record_or_check(search_dir, search_record(base, settings))

    check_search_files(search_dir)
    keras.utils.set_random_seed(base.data.seed)
    hypermodel = tuner_classes()["hypermodel"](base, settings.space, split, search_dir)
    tuner = make_tuner(base, settings, hypermodel, search_dir)
    if role == "chief":
        tuner.oracle.verbose = verbose
        tuner.save()
        log(f"chief: serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}")
        serve_oracle(tuner.oracle)
    else:
        try:
            tuner.search(verbose=verbose)
        except KeyboardInterrupt:
            raise UserError(
                f"interrupted: the finished trials are kept in {search_dir}; re-run the same command to continue"
            ) from None
    result = SearchResult(search_dir, role, list(tuner.trials_run))
    if role == "worker":
        return result

    from .sweep_analysis import write_analysis

    analysis = write_analysis(search_dir)
    result.best = analysis.best
    result.messages.append(analysis.headline)
    if settings.retrain and analysis.best is not None:
        config = trial_config(base, analysis.best["hyperparameters"])
        config.tracking = dataclasses.replace(config.tracking, group=config.tracking.group or base.name)
        run_dir = run_dir_of(config)
        best_id = str(analysis.best["trial_id"])
        set_aside_other_retrain(run_dir, search_dir, best_id, log)
        log(f"retraining the best configuration (trial {best_id}) into {run_dir}")
        write_json(search_dir / RETRAINED_FILE, {"trial_id": best_id})
        result.run = train_run(config, resume=(run_dir / "config.json").exists(), verbose=verbose, log=log)
    return result


def set_aside_other_retrain(run_dir: Path, search_dir: Path, best_id: str, log: Callable[[str], None]) -> None:
    """Move a retrain of another trial into ``retrain-trial-<id>/`` so the new best gets a run of its own.

    A larger --max-trials can find a better trial after the best one was retrained; resuming that
    run would report the old trial's model under the new trial's name. A search recorded before
    RETRAINED_FILE existed names no trial, and its retrain is resumed as before.
    """
    marker = search_dir / RETRAINED_FILE
    if not (run_dir / "config.json").exists() or not marker.exists():
        return
    previous_id = str(read_json(marker).get("trial_id"))
    if previous_id == best_id:
        return
    archive = run_dir / f"retrain-trial-{previous_id}"
    archive.mkdir(exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.name != SEARCH_DIR and not entry.name.startswith("retrain-trial-"):
            entry.rename(archive / entry.name)
    log(f"the best configuration is now trial {best_id}, no longer trial {previous_id}: its retrain moved to {archive}")


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


# -- command line ----------------------------------------------------------------------------


def add_search_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameter search (KerasTuner)")
    group.add_argument("--tuner", choices=TUNERS, help="search hyperparameters instead of training one configuration")
    group.add_argument("--max-trials", type=int, default=20, help="trials to run (default 20); caps hyperband too")
    group.add_argument("--executions-per-trial", type=int, default=1, help="trainings averaged per trial (default 1)")
    group.add_argument("--search-space", metavar="FILE", help="JSON or YAML overriding entries of the default space (null removes one)")
    group.add_argument("--no-retrain", dest="retrain", action="store_false", help="do not retrain the best configuration")


def search_command(args: argparse.Namespace, config: RunConfig, pinned: set[str] | None = None) -> int:
    """``--tuner``: the search the flags describe; flags given explicitly fix their hyperparameters."""
    if args.resume:
        raise UserError("--resume with --tuner: a search continues when you re-run its own command (same --name)")
    if args.name is None:
        config.name = f"{config.kind}-search-{args.tuner}"  # so that re-running the command resumes it
    pinned = pinned_by_flags(args, config.kind) if pinned is None else pinned
    settings = SearchSettings(
        tuner=args.tuner,
        max_trials=args.max_trials,
        executions_per_trial=args.executions_per_trial,
        space=resolve_space(config.kind, args.search_space, pinned),
        retrain=args.retrain,
    )
    if pinned:
        print(f"fixed by flags: {', '.join(sorted(pinned))}")
    result = run_search(config, settings, verbose=0 if args.quiet else "auto")
    if result.role == "worker":
        print(f"{os.environ.get('KERASTUNER_TUNER_ID')} ran trials: {', '.join(result.trials_run) or 'none'}")
        return 0
    for message in result.messages:
        print(message)
    if result.run is not None:
        for message in result.run.messages:
            print(message)
        print(f"run: {result.run.run_dir}  test accuracy: {result.run.metrics['test_accuracy']:.4f}")
    return 0
