"""How a model trains on this machine: precision policy, XLA, the optimizer and its schedule, compile."""

from __future__ import annotations

from typing import Any

from inat_keras import devices
from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.models.cnn import all_layers


def resolve_switch(value: str, *, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def set_precision(mixed_precision: str) -> str:
    """Mixed float16 on a GPU by default (Keras then scales the loss); float32 on a CPU."""
    import keras

    policy = "mixed_float16" if resolve_switch(mixed_precision, default=devices.gpu_available()) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def make_optimizer(config: RunConfig, steps_per_epoch: int, learning_rate: float | None = None) -> Any:
    import keras

    train = config.train
    rate = learning_rate or train.learning_rate
    schedule: Any = rate
    if train.lr_schedule == "cosine":
        warmup = train.warmup_epochs * steps_per_epoch
        total = max(train.epochs * steps_per_epoch - warmup, 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=rate / 100 if warmup else rate,
            decay_steps=total,
            warmup_target=rate if warmup else None,
            warmup_steps=warmup,
        )
    decay = train.weight_decay or None
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=decay)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay or 1e-4)
    return keras.optimizers.SGD(schedule, momentum=train.momentum, nesterov=True, weight_decay=decay)


def compile_model(model: Any, config: RunConfig, steps_per_epoch: int, learning_rate: float | None = None) -> None:
    import keras

    # In the strategy the model was built under (--distribute), wherever this is called from: the
    # optimizer's variables must be mirrored like the model's.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch, learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=training_metrics(),
            jit_compile=resolve_jit(config.train.jit_compile, model),
        )


def training_metrics() -> list:
    import keras

    return ["accuracy", keras.metrics.TopKCategoricalAccuracy(k=3, name="top3_accuracy")]


def xla_blockers(model: Any) -> list[str]:
    """The layers of ``model`` XLA cannot compile (Keras's ``supports_jit``).

    Given one, Keras's ``compile(jit_compile=True)`` only warns and trains without XLA. Keras's
    RandomZoom, RandomTranslation and RandomRotation are such layers (their warp,
    ``ImageProjectiveTransformV3``, has no XLA kernel), which is why ``--augment`` uses
    ``augment.RandomAffine`` instead.
    """

    return [layer.name for layer in all_layers(model) if not layer.supports_jit]


def resolve_jit(value: str, model: Any) -> bool:
    """Whether ``model`` trains with XLA: "auto" is on with a GPU unless the model holds layers XLA cannot compile."""
    blockers = xla_blockers(model)
    if value == "on" and blockers:
        raise UserError(f"--jit-compile on: XLA cannot compile the layers {', '.join(blockers)}; use --jit-compile auto or off")
    if value == "auto":
        # XLA pays off on a GPU; on a CPU its compile time outweighs the gain for these models.
        return devices.gpu_available() and not blockers
    return value == "on"
