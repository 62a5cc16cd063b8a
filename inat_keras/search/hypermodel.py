"""The hypermodel: one trial's model, built from the run's base config and the trial's values, and trained."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import keras_tuner as kt

from inat_keras.config import RunConfig
from inat_keras.data.files import DatasetSplit, balanced_class_weights
from inat_keras.data.pipeline import batched, cached_images, epoch_batches
from inat_keras.models.factory import build_model
from inat_keras.runs import trial_number
from inat_keras.search.space import OBJECTIVE, declare, trial_config
from inat_keras.training.determinism import epoch_reseeding
from inat_keras.training.finetune import fit_transfer
from inat_keras.training.runtime import compile_model, ema_callbacks, set_precision
from inat_keras.training.tensorboard import tensorboard_callback, trial_log_dir
from inat_keras.training.tracking import WandbRun, start_wandb

if TYPE_CHECKING:
    import tensorflow as tf


# Early stopping inside a trial when --early-stopping does not set it: a trial that stalls for
# three epochs rarely becomes the best one, and the budget goes to the next trial instead.
TRIAL_PATIENCE = 3


class TrialModels(kt.HyperModel):
    """Builds and trains one trial's model from the run's base config and the trial's values."""

    def __init__(self, base: RunConfig, space: dict[str, Any], split: DatasetSplit, search_dir: Path) -> None:
        super().__init__(name=base.kind)
        self.base, self.space, self.split, self.search_dir = base, space, split, search_dir
        self.num_classes = len(split.class_names)
        self.images: dict[str, Any] = {}
        self.executions: dict[str, int] = {}

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        config = trial_config(self.base, declare(hp, self.space, self.base))
        # KerasTuner clears the Keras session before each build, which resets the precision policy.
        set_precision(config.train.mixed_precision)
        model = build_model(config, self.num_classes)
        compile_model(model, config, steps_per_epoch=epoch_batches(len(self.split.train), config.data.batch_size))
        return model

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        *args: Any,
        trial_id: str,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int | str = "auto",
        epochs: int | None = None,
        initial_epoch: int = 0,
        **kwargs: Any,
    ) -> keras.callbacks.History:
        config = trial_config(self.base, hp.values)
        patience = config.train.early_stopping or TRIAL_PATIENCE
        # One History over all of fit_transfer's phases (each model.fit call starts its own).
        history = keras.callbacks.History()
        callbacks = [
            epoch_reseeding(config.data.seed),  # each epoch's random layers draw from (seed, epoch): trials repeat
            *callbacks,
            keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=patience),
            history,
        ]
        wandb_run = self.start_tracking(config, trial_id, hp.values)
        if wandb_run is not None:
            callbacks.extend(wandb_run.callbacks())
        if config.tracking.tensorboard:
            log_dir = trial_log_dir(self.search_dir.parent, trial_id, self.executions[trial_id])
            callbacks.append(tensorboard_callback(log_dir, config.tracking, first_epoch=initial_epoch))
        train, validation = self.datasets(config, first_epoch=initial_epoch)
        budget = epochs or config.train.epochs
        steps_per_epoch = epoch_batches(len(self.split.train), config.data.batch_size)  # the training batches are endless
        class_weight = None
        if config.train.class_weight == "balanced":  # as a run weighs its classes, so does each trial
            class_weight = balanced_class_weights(self.split.train.labels, self.num_classes)
        if config.kind == "transfer":
            fit_transfer_trial(
                model,
                config,
                {"train": train, "validation": validation},
                callbacks,
                budget=budget,
                initial_epoch=initial_epoch,
                verbose=verbose,
                steps_per_epoch=steps_per_epoch,
                train_from=lambda epoch: self.train_batches(config, epoch),
                class_weight=class_weight,
            )
        else:
            model.fit(
                train,
                validation_data=validation,
                epochs=budget,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                shuffle=False,  # the tf.data pipeline shuffles
                callbacks=[*ema_callbacks(config), *callbacks],  # fit_transfer adds its own
                verbose=verbose,
                class_weight=class_weight,
            )
        if wandb_run is not None:
            wandb_run.log_summary({"best_" + OBJECTIVE: max(history.history[OBJECTIVE])})
            wandb_run.finish()
        return history

    def datasets(self, config: RunConfig, first_epoch: int = 0) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """Images decoded and cached once for the whole search; batched per trial (batch size, augmentation)."""
        validation = batched(self.cached()["validation"], config.data, len(self.split.validation), training=False)
        return self.train_batches(config, first_epoch), validation

    def train_batches(self, config: RunConfig, first_epoch: int) -> tf.data.Dataset:
        """The trial's training batches from ``first_epoch`` on (a fine-tuning phase's fit starts its own)."""
        return batched(self.cached()["train"], config.data, len(self.split.train), training=True, first_epoch=first_epoch)

    def cached(self) -> dict[str, Any]:
        """The search's decoded images of each split (``cached_images``), made on first use."""
        if not self.images:
            for subset in ("train", "validation"):
                files = getattr(self.split, subset)
                self.images[subset] = cached_images(files, self.base.data, self.num_classes, cache_name=f"search-{subset}")
        return self.images

    def start_tracking(self, config: RunConfig, trial_id: str, values: dict[str, Any]) -> WandbRun | None:
        execution = self.executions[trial_id] = self.executions.get(trial_id, 0) + 1
        name = f"{self.base.name}-trial-{trial_number(trial_id)}" + (f"-{execution}" if execution > 1 else "")
        tracking = dataclasses.replace(config.tracking, group=config.tracking.group or self.base.name)
        return start_wandb(
            tracking,
            self.search_dir / f"trial_{trial_id}",
            name=name,
            job_type="search",
            config={**values, "trial": trial_number(trial_id), "trial_id": trial_id, "search": self.base.name},
        )


def fit_transfer_trial(
    model: keras.Model,
    config: RunConfig,
    datasets: dict[str, Any],
    callbacks: list[keras.callbacks.Callback],
    *,
    budget: int,
    initial_epoch: int,
    verbose: int | str,
    steps_per_epoch: int,
    train_from: Callable[[int], Any],
    class_weight: dict[int, float] | None,
) -> None:
    """A fine-tuning trial through the run's phases (head, then unfreezing), stopped at the trial's epoch budget."""
    # Always on full images: KerasTuner saves the model that fit trains, which on cached features is the head alone.
    config.model["feature_cache"] = False
    state: dict[str, Any] = {"epochs_done": initial_epoch, "stopped": None}

    fit_transfer(
        model,
        config,
        datasets,
        state,
        [*callbacks, EpochBudget(state, budget)],
        steps_per_epoch=steps_per_epoch,
        train_from=train_from,
        class_weight=class_weight,
        verbose=verbose,
        log=lambda message: None,
    )


class EpochBudget(keras.callbacks.Callback):
    """Counts epochs for fit_transfer's phases and ends the trial at its budget or on early stopping."""

    def __init__(self, state: dict[str, Any], budget: int) -> None:
        super().__init__()
        self.state, self.budget = state, budget

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.state["epochs_done"] = epoch + 1
        if self.state["epochs_done"] >= self.budget or self.model.stop_training:
            self.state["stopped"] = "budget"
            self.model.stop_training = True
