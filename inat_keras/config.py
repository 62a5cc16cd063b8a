"""One dataclass per concern; together they are a run's ``config.json``.

The command-line tools build these from flags; the library takes them (or plain
arguments). ``RunConfig.from_dict(RunConfig.to_dict())`` rebuilds a run exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from inat_keras.errors import UserError

ACTIVATIONS = ("relu", "gelu", "silu", "mish", "elu", "leaky_relu", "selu")
POOLINGS = ("flatten", "avg", "max")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "plateau")
SWITCHES = ("auto", "on", "off")
WANDB_MODES = ("auto", "offline", "online", "off")
DISTRIBUTE_MODES = ("none", "mirrored", "multiworker")
LR_SCALINGS = ("linear", "sqrt", "none")
AUGMENT_PLACEMENTS = ("auto", "pipeline", "model")
# What --augment applies: "basic" (crop, flip, colour jitter), or the crop and flip with Keras's RandAugment or AugMix.
AUGMENT_POLICIES = ("basic", "randaugment", "augmix")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""

    data_dir: str | None = None
    image_size: int = 224
    val_split: float = 0.2
    # Only for a folder of class folders: the test set split off it (train/ + val/ has val/ as its test set).
    test_split: float = 0.1
    seed: int = 42
    batch_size: int = 32
    augment: bool = False
    # "auto" (in the model with a GPU, else in the tf.data pipeline), "pipeline" or "model".
    augment_placement: str = "auto"
    # The augmentation --augment applies (AUGMENT_POLICIES); ignored without --augment.
    augment_policy: str = "basic"
    # keras.layers.RandAugment's factor (0-1, one strength for all its operations) and operations per image.
    randaugment_magnitude: float = 0.5
    randaugment_ops: int = 2
    # Beta(alpha, alpha) mixing of training batches (keras.layers.MixUp / CutMix; 0 = off; both: one per batch).
    mixup: float = 0.0
    cutmix: float = 0.0
    # Probability that a training image has a random rectangle replaced by noise (keras.layers.RandomErasing).
    random_erasing: float = 0.0
    # "memory", "none", or a file path prefix for a tf.data file cache (data larger than RAM).
    cache: str = "memory"
    skip_bad: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.image_size < 1:
            raise UserError(f"--image-size {self.image_size}: must be at least 1 pixel")
        if self.augment_policy not in AUGMENT_POLICIES:
            raise UserError(f"--augment-policy {self.augment_policy}: choose one of {', '.join(AUGMENT_POLICIES)}")
        if not 0.0 <= self.randaugment_magnitude <= 1.0:
            raise UserError(f"--randaugment-magnitude {self.randaugment_magnitude}: Keras's RandAugment factor, in [0, 1]")
        if self.randaugment_ops < 1:
            raise UserError(f"--randaugment-ops {self.randaugment_ops}: apply at least 1 operation per image")
        for flag, alpha in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if alpha < 0:
                raise UserError(f"{flag} {alpha}: give the Beta distribution's alpha (> 0, e.g. 0.2 or 1.0), or 0 for off")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise UserError(f"--random-erasing {self.random_erasing}: a probability, in [0, 1]")


@dataclass
class CNNConfig:
    """The from-scratch CNN: ``num_blocks`` of Conv -> [BN] -> activation -> MaxPool, then dense."""

    num_classes: int = 10
    input_size: int = 224
    num_blocks: int = 5
    # Either an explicit list, or first_filters multiplied by filter_organisation per block.
    filters: list[int] | None = None
    first_filters: int = 32
    filter_organisation: float = 1.0
    kernel_size: int | list[int] = 3
    activation: str = "relu"
    batch_norm: bool = True
    # Keras's 0.99 needs hundreds of steps to settle; small datasets do better with 0.9.
    batch_norm_momentum: float = 0.99
    conv_dropout: float = 0.0
    pooling: str = "flatten"
    dense_units: list[int] = field(default_factory=lambda: [256])
    dense_dropout: float = 0.3
    l2: float = 0.0

    def block_filters(self) -> list[int]:
        if self.filters is not None:
            return list(self.filters)
        return [max(1, round(self.first_filters * self.filter_organisation**i)) for i in range(self.num_blocks)]

    def block_kernels(self) -> list[int]:
        """One kernel size per block: a single size (int, or a one-item list as ``--kernel-size 3`` gives) repeats."""
        if isinstance(self.kernel_size, int):
            return [self.kernel_size] * self.num_blocks
        if len(self.kernel_size) == 1:
            return list(self.kernel_size) * self.num_blocks
        return list(self.kernel_size)

    def validate(self) -> None:
        if self.num_blocks < 1:
            raise UserError(f"--num-blocks {self.num_blocks}: need at least 1 conv block")
        if len(self.block_filters()) != self.num_blocks:
            raise UserError(f"--filters {self.filters}: give one value per conv block ({self.num_blocks})")
        if len(self.block_kernels()) != self.num_blocks:
            raise UserError(f"--kernel-size {self.kernel_size}: give one value or one per conv block ({self.num_blocks})")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"--activation {self.activation}: choose one of {', '.join(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"--pooling {self.pooling}: choose one of {', '.join(POOLINGS)}")
        smallest = 2**self.num_blocks
        if self.input_size < smallest:
            raise UserError(
                f"--image-size {self.input_size} is too small for {self.num_blocks} pooling blocks: "
                f"use --image-size {smallest} or more, or fewer --num-blocks"
            )
        for name in ("conv_dropout", "dense_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be in [0, 1)")
        for flag, values in (("--filters", self.block_filters()), ("--kernel-size", self.block_kernels())):
            if min(values) < 1:
                raise UserError(f"{flag} {values}: every value must be at least 1")
        if self.dense_units and min(self.dense_units) < 1:
            raise UserError(
                f"--dense-units {self.dense_units}: every layer needs at least 1 unit "
                f"(for no dense layer before the output, pass --dense-units '')"
            )


@dataclass
class TrainConfig:
    """How the model is optimised."""

    epochs: int = 10
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    early_stopping: int | None = None
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    # --batch-size is per replica; see inat_keras.distribute for the scaling of the learning rate.
    distribute: str = "none"
    lr_scaling: str = "linear"
    # "balanced": each class's loss weighted by n_images / (n_classes * n_images_of_class) in the training split.
    class_weight: str = "none"
    # Decay of the exponential moving average of the weights (the optimizer's ema_momentum); 0 = off.
    ema: float = 0.0
    # --deterministic: TensorFlow's op determinism, so a resumed run ends bit-identical to an uninterrupted one (CPU).
    deterministic: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs {self.epochs}: train for at least 1 epoch")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate {self.learning_rate}: must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule {self.lr_schedule}: choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        if self.distribute not in DISTRIBUTE_MODES:
            raise UserError(f"--distribute {self.distribute}: choose one of {', '.join(DISTRIBUTE_MODES)}")
        if self.lr_scaling not in LR_SCALINGS:
            raise UserError(f"--lr-scaling {self.lr_scaling}: choose one of {', '.join(LR_SCALINGS)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(f"--class-weight {self.class_weight}: choose one of {', '.join(CLASS_WEIGHTS)}")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema {self.ema}: the averaging decay must be in [0, 1), e.g. 0.999; 0 for off")


@dataclass
class TrackingConfig:
    """Weights & Biases: offline unless asked otherwise, never a login prompt; TensorBoard logs on request."""

    wandb: str = "auto"
    project: str = "inat-keras"
    group: str | None = None
    # --wandb-log-model: best.keras as a W&B model artifact at the end of training (off by default: models are large).
    log_model: bool = False
    # <run>/tensorboard/ (see inat_keras.training.tensorboard); weight histograms cost a write per weight per epoch.
    tensorboard: bool = False
    tensorboard_histograms: bool = False


@dataclass
class RunConfig:
    """Everything needed to rebuild and retrain a run."""

    name: str
    kind: str = "scratch"
    out: str = "runs"
    demo: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        problem = run_config_problem(raw)
        if problem:
            raise UserError(f"not a run's settings: {problem}")
        return cls(
            name=raw["name"],
            kind=raw.get("kind", "scratch"),
            out=raw.get("out", "runs"),
            demo=raw.get("demo", False),
            data=from_dict(DataConfig, raw.get("data", {})),
            model=dict(raw.get("model", {})),
            train=from_dict(TrainConfig, raw.get("train", {})),
            tracking=from_dict(TrackingConfig, raw.get("tracking", {})),
        )


T = TypeVar("T")


def from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    """Build a config dataclass, refusing keys it does not have and plain values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)}: known are {', '.join(sorted(fields))}")
    for name, value in raw.items():
        allowed = PLAIN_TYPES.get(str(fields[name].type))
        if allowed is not None and not (isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))):
            raise UserError(f"{cls.__name__} setting {name} is {value!r}, not of type {fields[name].type}")
    return cls(**raw)


# The annotations of plain settings (as strings: this module postpones annotations) and the JSON values they accept.
PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "str | None": (str, type(None)),
    "bool | None": (bool, type(None)),
}


def run_config_problem(raw: Any) -> str | None:
    """What makes ``raw`` (a parsed ``config.json``) not a run's settings, or None: the shape only."""
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__} where an object of settings belongs"
    if not isinstance(raw.get("name"), str):
        return '"name" is missing or not a string'
    for section in ("data", "model", "train", "tracking"):
        if section in raw and not isinstance(raw[section], dict):
            return f'"{section}" is {raw[section]!r} where a section of settings belongs'
    names = raw.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return '"class_names" is not a list of class names'
    return None


# Model settings that come from the data (its class folders and --image-size), so config.json's
# "model" section never holds them: ``architecture`` leaves them out, ``for_data`` puts them in.
DATA_DERIVED = ("num_classes", "input_size")


def architecture(model: Any) -> dict[str, Any]:
    """A model config dataclass (CNNConfig, TransferConfig) as config.json's "model" section."""
    return {name: value for name, value in dataclasses.asdict(model).items() if name not in DATA_DERIVED}


def for_data(cls: type[T], architecture: dict[str, Any], *, num_classes: int, input_size: int) -> T:
    """A model config dataclass from config.json's "model" section and the data it trains on."""
    return from_dict(cls, {**architecture, "num_classes": num_classes, "input_size": input_size})


@dataclass
class TransferConfig:
    """A fine-tuned ImageNet backbone with a new head (``RunConfig.model`` of a ``transfer`` run)."""

    backbone: str = "efficientnetv2s"
    # "imagenet", None, or a path to a local no-top weights file.
    weights: str | None = "imagenet"
    # Backbone layers trained, counted from its output: 0 (head only), K, or "all".
    unfreeze: int | str = "all"
    # The keras-io recipe: head alone first, then unfreeze; ignored when nothing is unfrozen.
    two_phase: bool = True
    head_epochs: int = 2
    # Whenever backbone layers train, the learning rate is TrainConfig.learning_rate times this.
    finetune_lr_factor: float = 0.05
    dropout: float = 0.2
    dense_units: list[int] = field(default_factory=list)
    # Train the head on pooled features computed once, when nothing else would change them.
    feature_cache: bool = True
    num_classes: int = 10
    input_size: int = 224
