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
    # --ema: the optimizer keeps an exponential moving average of the trained weights (see ema_callbacks).
    ema: dict[str, Any] = {"use_ema": True, "ema_momentum": train.ema} if train.ema else {}
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=decay, **ema)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay or 1e-4, **ema)
    return keras.optimizers.SGD(schedule, momentum=train.momentum, nesterov=True, weight_decay=decay, **ema)


# -- the moving average of the weights (--ema) -----------------------------------------------


def ema_callbacks(config: RunConfig) -> list:
    """Keras's ``SwapEMAWeights`` for one ``fit`` of an ``--ema`` run (a new one per fit: it tracks whose weights
    the model holds), to go before the checkpoint callback.

    It swaps the averaged weights into the model for each validation (so ``val_accuracy`` and the
    choice of ``best.keras`` are the average's) and at each epoch's end, so the epoch's checkpoint
    saves the averaged weights as the model's and the trained ones in the optimizer's average slots;
    the next epoch swaps them back. At a fit's end Keras leaves the average in the model.
    """
    import keras

    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.train.ema else []


def mixing_note(config: RunConfig) -> str:
    """What the training accuracy of a run whose batches MixUp or CutMix mix means, else ""."""
    data = config.data
    mixers = [name for name, alpha in (("MixUp", data.mixup), ("CutMix", data.cutmix)) if alpha]
    if not mixers:
        return ""
    return (
        f"{' or '.join(mixers)} mixes each training batch: the training accuracy in history.csv and the curves "
        f"counts a prediction right when it names the larger share of a mixed label, so it runs below "
        f"val_accuracy (clean images); compare runs by val_accuracy"
    )


def ema_batch_norm_note(config: RunConfig, model: Any) -> str:
    """A warning for ``--ema`` on a model whose BatchNormalization trains (the scratch CNN's), else ""."""
    import keras

    trained = any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in all_layers(model))
    if not (config.train.ema and trained):
        return ""
    return (
        "--ema: Keras averages the trainable weights only, so the averaged model runs with the BatchNormalization "
        "statistics of the latest weights; on the demo digits this cost the scratch CNN 6 points of test accuracy "
        "(docs/recipes.md): prefer --no-batch-norm with --ema, or --ema for fine-tuning, whose BatchNormalization is frozen"
    )


def restore_trained_weights(model: Any) -> None:
    """Swap a resumed ``--ema`` checkpoint's weights back: trained weights in the model, the average in the optimizer.

    A checkpoint written mid-fit holds them the other way round (``ema_callbacks``); one written at a
    fit's end holds the average in both, which this leaves as it is. Uses the callback's own swap.
    """
    import keras

    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(model)
    swap.on_test_begin()  # one swap of the model's weights with the optimizer's averages


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
    """The layers of ``model`` XLA cannot compile (Keras's ``supports_jit``, of the layer or of one inside it).

    Given one, Keras's ``compile(jit_compile=True)`` only warns and trains without XLA. Keras's
    RandomZoom, RandomTranslation and RandomRotation are such layers (their warp,
    ``ImageProjectiveTransformV3``, has no XLA kernel), which is why the basic ``--augment`` uses
    ``augment.RandomAffine`` instead. RandAugment and AugMix hold them inside (``--augment-policy``).
    """
    # _flatten_layers: the layers a layer holds as attributes, which Keras's own check reads too.
    return [layer.name for layer in all_layers(model) if not all(inner.supports_jit for inner in layer._flatten_layers())]


def resolve_jit(value: str, model: Any) -> bool:
    """Whether ``model`` trains with XLA: "auto" is on with a GPU unless the model holds layers XLA cannot compile."""
    blockers = xla_blockers(model)
    if value == "on" and blockers:
        raise UserError(f"--jit-compile on: XLA cannot compile the layers {', '.join(blockers)}; use --jit-compile auto or off")
    if value == "auto":
        # XLA pays off on a GPU; on a CPU its compile time outweighs the gain for these models.
        return devices.gpu_available() and not blockers
    return value == "on"


def xla_left_off(value: str, model: Any) -> str:
    """The line saying which layers kept ``--jit-compile auto`` from turning XLA on (a GPU run), else ""."""
    blockers = xla_blockers(model)
    if value != "auto" or not blockers or not devices.gpu_available():
        return ""
    return f"XLA left off (--jit-compile auto): XLA cannot compile the layers {', '.join(blockers)}"
