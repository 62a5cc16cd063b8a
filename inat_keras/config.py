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


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""

    data_dir: str | None = None
    image_size: int = 224
    val_split: float = 0.2
    seed: int = 42
    batch_size: int = 32
    augment: bool = False
    # "auto" (in the model with a GPU, else in the tf.data pipeline), "pipeline" or "model".
    augment_placement: str = "auto"
    # "memory", "none", or a file path prefix for a tf.data file cache (data larger than RAM).
    cache: str = "memory"
    skip_bad: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.image_size < 1:
            raise UserError(f"--image-size {self.image_size}: must be at least 1 pixel")


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


@dataclass
class TrackingConfig:
    """Weights & Biases: offline unless asked otherwise, never a login prompt."""

    wandb: str = "auto"
    project: str = "inat-keras"
    group: str | None = None


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
    """Build a config dataclass, refusing keys it does not have."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)}: known are {', '.join(sorted(names))}")
    return cls(**raw)


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
