"""Fine-tuning a transfer model in phases: the head first, then the unfrozen backbone at a lower rate.

A phase is a stretch of epochs with one trainability and one learning rate. A head-only run on
unaugmented images trains on cached backbone features (``training.features``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inat_keras.config import RunConfig, TransferConfig, from_dict
from inat_keras.errors import UserError
from inat_keras.models.augment import randomises_training_data
from inat_keras.models.backbones import fetch_imagenet_weights, get_backbone, parse_unfreeze, resolve_weights
from inat_keras.models.transfer import (
    backbone_layers,
    build_transfer,
    calibrate_batch_norm,
    check_head,
    count_trainable,
    set_trainable,
    transfer_config,
)
from inat_keras.training.features import fit_head_on_features
from inat_keras.training.runtime import compile_model, ema_callbacks


def _keras_progress_base() -> Any:
    import keras

    return keras.callbacks.ProgbarLogger


if TYPE_CHECKING:
    from keras.callbacks import ProgbarLogger
else:
    # At run time the base comes from a function, keeping keras out of this module's imports; mypy reads it from keras.
    ProgbarLogger = _keras_progress_base()

# -- phases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one trainability and one learning rate."""

    name: str
    first_epoch: int  # epochs done before the phase starts
    last_epoch: int  # epochs done when it ends
    unfreeze: int | str
    learning_rate: float


def plan_phases(config: RunConfig) -> list[Phase]:
    """Head then fine-tuning (two-phase), or one phase; backbone layers always train at the lower rate."""
    model = model_settings(config)
    unfreeze = parse_unfreeze(model.unfreeze)
    epochs, rate = config.train.epochs, config.train.learning_rate
    low_rate = rate * model.finetune_lr_factor
    if unfreeze == 0:
        return [Phase("head", 0, epochs, 0, rate)]
    if not model.two_phase:
        return [Phase("fine-tune", 0, epochs, unfreeze, low_rate)]
    if not 1 <= model.head_epochs < epochs:
        raise UserError(
            f"--head-epochs {model.head_epochs} with --epochs {epochs}: the head phase needs at least 1 epoch "
            f"and must leave some for fine-tuning (or pass --no-two-phase)"
        )
    return [Phase("head", 0, model.head_epochs, 0, rate), Phase("fine-tune", model.head_epochs, epochs, unfreeze, low_rate)]


def phase_config(config: RunConfig, phase: Phase) -> RunConfig:
    """The run's config as one phase sees it: its own epochs, so the warm-up and decay fit the phase."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=phase.last_epoch - phase.first_epoch))


class PhaseProgress(ProgbarLogger):
    """Keras's progress bar under a header naming the phase and the epoch: ``phase 1/2 (head), epoch 1/6``.

    It stands in for Keras's own ``Epoch 2/6`` header, which Keras leaves out of a one-epoch fit, such
    as the demo's one-epoch head phase.
    """

    epochs: int  # of the current fit, set by Keras

    def __init__(self, phases: list[Phase]) -> None:
        super().__init__()
        self.phases = phases

    def header(self, epoch: int) -> str:
        """``phase 1/2 (head), epoch 1/6`` for the 0-based ``epoch`` of the whole run."""
        number, phase = next((i, p) for i, p in enumerate(self.phases, 1) if epoch < p.last_epoch or i == len(self.phases))
        return f"phase {number}/{len(self.phases)} ({phase.name}), epoch {epoch + 1}/{self.phases[-1].last_epoch}"

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epochs = self.epochs
        self.epochs = 1  # Keras prints its own header only when a fit has several epochs
        try:
            super().on_epoch_begin(epoch, logs)
        finally:
            self.epochs = epochs
        if self.verbose:
            print(self.header(epoch), flush=True)


def model_settings(config: RunConfig) -> TransferConfig:
    return from_dict(TransferConfig, dict(config.model))


def uses_feature_cache(config: RunConfig, phases: list[Phase]) -> bool:
    """Head-only training on unaugmented images: the backbone's output never changes, so compute it once."""
    model = model_settings(config)
    return model.feature_cache and not randomises_training_data(config.data) and all(p.unfreeze == 0 for p in phases)


def fit_transfer(
    model: Any,
    config: RunConfig,
    datasets: dict[str, Any],
    state: dict[str, Any],
    callbacks: list,
    *,
    steps_per_epoch: int,
    train_from: Callable[[int], Any] | None = None,
    learning_rate: float | None = None,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
    class_weight: dict[int, float] | None = None,
) -> None:
    """Train through the run's phases from ``state['epochs_done']``, recompiling at each phase change.

    A run resumed inside a phase keeps the checkpoint's optimizer state; trainability is applied
    again anyway, so a resumed fine-tuning phase trains exactly the layers it trained before.
    ``learning_rate`` is the run's rate after any scaling for several replicas; ``class_weight`` is
    Keras's per-class loss weight (``--class-weight balanced``), the same in every phase.
    ``train_from(epoch)`` gives the training batches from ``epoch`` on: each phase's fit starts its own
    iterator, at the phase's first epoch (without it, every phase starts where ``datasets["train"]`` does).
    """

    phases = plan_phases(config)
    if state["epochs_done"] == 0 and model_settings(config).weights is None:
        images, _ = next(iter(datasets["train"]))
        calibrate_batch_norm(model, images)
    scale = (learning_rate or config.train.learning_rate) / config.train.learning_rate
    cached = uses_feature_cache(config, phases)
    for phase in phases:
        if state["epochs_done"] >= phase.last_epoch or state["stopped"]:
            continue
        resumed_inside = state["epochs_done"] > phase.first_epoch and model.optimizer is not None
        set_trainable(model, phase.unfreeze)
        if not resumed_inside:
            # Under --distribute the optimizer's variables must be created in the model's strategy.
            with model.distribute_strategy.scope():
                compile_model(model, phase_config(config, phase), steps_per_epoch, phase.learning_rate * scale)
        if len(phases) > 1:
            log(
                f"phase {phase.name}: epochs {phase.first_epoch + 1}-{phase.last_epoch}, "
                f"{count_trainable(model):,} trainable parameters, learning rate {phase.learning_rate * scale:g}"
            )
        fit_kwargs: dict[str, Any] = {
            "epochs": phase.last_epoch,
            "initial_epoch": state["epochs_done"],
            # Keras's progress bar, under a header that names the phase (it adds its own only without one).
            # First the swap of the averaged weights (--ema), which must precede the checkpoint's epoch end.
            "callbacks": [
                *ema_callbacks(config),
                *callbacks,
                *([PhaseProgress(phases)] if len(phases) > 1 and verbose != 0 else []),
            ],
            "verbose": verbose,
        }
        if class_weight is not None:
            fit_kwargs["class_weight"] = class_weight  # also reaches the head's fit on cached features
        if cached:
            one_pass = {**datasets, "train": datasets["train"].take(steps_per_epoch)}
            fit_head_on_features(model, config, one_pass, fit_kwargs, log=log)
        else:
            train = train_from(state["epochs_done"]) if train_from is not None else datasets["train"]
            # The tf.data pipeline shuffles; Keras would only warn.
            model.fit(train, validation_data=datasets["validation"], steps_per_epoch=steps_per_epoch, shuffle=False, **fit_kwargs)


def validate_transfer(config: RunConfig, num_classes: int) -> None:
    """Refuse bad transfer settings before any file is written."""
    model = transfer_config(config, num_classes)
    spec = get_backbone(model.backbone)
    if model.input_size < spec.min_size:
        raise UserError(f"--image-size {model.input_size} is too small for {spec.name}: use --image-size {spec.min_size} or more")
    check_head(num_classes, model.dropout, model.dense_units)
    if not 0 < model.finetune_lr_factor <= 1:
        raise UserError(f"--finetune-lr-factor {model.finetune_lr_factor}: must be in (0, 1], e.g. 0.05")
    refuse_unfreeze_beyond_backbone(spec.name, parse_unfreeze(model.unfreeze), model.input_size)
    if resolve_weights(model.weights) == "imagenet":
        fetch_imagenet_weights(spec, model.input_size)
    plan_phases(config)


def refuse_unfreeze_beyond_backbone(backbone: str, unfreeze: int | str, input_size: int) -> None:
    """``--unfreeze K`` with more layers than the backbone has: refused naming how many it has (not silently 'all')."""
    if isinstance(unfreeze, str) or unfreeze == 0:
        return
    # Counted on the model as built (random weights, nothing downloaded): the layers --unfreeze counts from the top.
    available = len(backbone_layers(build_transfer(backbone, 2, weights=None, input_size=input_size)))
    if unfreeze > available:
        raise UserError(f"--unfreeze {unfreeze}: {backbone} has {available} layers; give at most {available}, or 'all'")


def apply_final_trainability(model: Any, config: RunConfig) -> None:
    """Trainable as the run's last phase asks (what metrics.json reports as trainable_params)."""
    set_trainable(model, plan_phases(config)[-1].unfreeze)
