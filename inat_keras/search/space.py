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
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inat_keras.config import ACTIVATIONS, AUGMENT_POLICIES, OPTIMIZERS, POOLINGS, RunConfig
from inat_keras.errors import UserError
from inat_keras.models.backbones import BACKBONES

TUNERS = ("bayes", "random", "hyperband")
OBJECTIVE = "val_accuracy"


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


def unit_interval(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def one_of(options: Collection[Any]) -> Callable[[Any], str | None]:
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
    # Today's recipes (docs/recipes.md); not in the default spaces, a --search-space file adds them.
    "augment_policy": Parameter("data", str, one_of(AUGMENT_POLICIES)),
    "randaugment_magnitude": Parameter("data", float, unit_interval),
    "randaugment_ops": Parameter("data", int, positive),
    "mixup": Parameter("data", float, non_negative),
    "cutmix": Parameter("data", float, non_negative),
    "random_erasing": Parameter("data", float, unit_interval),
    "ema": Parameter("train", float, fraction),
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
            raise UserError(
                f'{where}: a range is {{"min": ..., "max": ..., "log": true|false, "step": ...}}; got keys {sorted(entry)}'
            )
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
        raise UserError(
            f"--search-space {path}: not valid {path.suffix[1:].upper() or 'JSON'} ({error})".replace("\n", " ")
        ) from None
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
        parameters = {**parameters, "backbone": dataclasses.replace(parameters["backbone"], check=one_of(tuple(BACKBONES)))}
    return {name: normalise_entry(name, entry, parameters[name], source) for name, entry in space.items()}


def declare(hp: Any, space: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """Declare the space on a KerasTuner ``HyperParameters`` and return this trial's values."""
    values: dict[str, Any] = {}
    for name, entry in space.items():
        if name == "kernel_size_per_block":
            for block in range(1, most_blocks(space, base.model.get("num_blocks", 5)) + 1):
                values[f"kernel_size_{block}"] = declare_one(hp, f"kernel_size_{block}", entry, int)
            continue
        values[name] = declare_one(hp, name, entry, parameters_for(base.kind)[name].kind)
    return values


def declare_one(hp: Any, name: str, entry: Any, kind: type) -> Any:
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
