"""What fit needs for one process of a run: seeds, precision, the datasets and the model (new, or the
resumed run's last checkpoint), and what they cost."""

from __future__ import annotations

import os
import unittest.mock
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig
from inat_keras.data.files import DatasetSplit, balanced_class_weights
from inat_keras.data.pipeline import batched, cached_images, epoch_batches
from inat_keras.devices import describe_device, device_line
from inat_keras.models.factory import build_model, model_counts
from inat_keras.training.checkpoints import load_checkpoint
from inat_keras.training.determinism import enable_determinism
from inat_keras.training.distribute import (
    Distribution,
    adapt_model_to_multiworker,
    describe_scaling,
    distribution_report,
    scaled_learning_rate,
    shard_by_data,
)
from inat_keras.training.finetune import apply_final_trainability
from inat_keras.training.runtime import (
    compile_model,
    ema_batch_norm_note,
    mixing_note,
    restore_trained_weights,
    set_precision,
    xla_left_off,
)


@dataclass
class TrainingSetup:
    """What fit needs, built once per process: the model, its data and what they cost."""

    model: Any
    datasets: dict[str, Any]
    steps_per_epoch: int
    learning_rate: float
    policy: str
    counts: dict[str, int]
    scaling: dict[str, Any]
    device: str = ""
    # --class-weight balanced: Keras's class_weight for fit (None: every image weighs 1).
    class_weight: dict[int, float] | None = None
    # The training batches from a given epoch on, over the same decoded images: a fine-tuning phase's fit.
    train_from: Callable[[int], Any] | None = None


def set_up_training(
    config: RunConfig,
    run_dir: Path,
    split: DatasetSplit,
    distribution: Distribution,
    state: dict[str, Any],
    log: Callable[[str], None],
) -> TrainingSetup:
    """Seeds, precision, datasets and the model: new, or the resumed run's last checkpoint."""
    import keras

    num_classes = len(split.class_names)
    keras.utils.set_random_seed(config.data.seed + state["epochs_done"])
    enable_determinism(config.train.deterministic)
    policy = set_precision(config.train.mixed_precision)
    # --batch-size is per replica: one step takes a global batch from the pipeline.
    global_data = replace(config.data, batch_size=distribution.global_batch_size(config.data.batch_size))
    arrays = {
        subset: cached_images(getattr(split, subset), global_data, num_classes, cache_name=name)
        for subset, name in (("train", "train"), ("validation", "val"))
    }

    def train_from(first_epoch: int) -> Any:
        # Every fit starts the training batches at its first epoch: the batches an uninterrupted run sees (data.pipeline).
        dataset = batched(arrays["train"], global_data, len(split.train), training=True, first_epoch=first_epoch)
        return shard_by_data(dataset, distribution)

    datasets = {
        "train": train_from(state["epochs_done"]),
        "validation": shard_by_data(
            batched(arrays["validation"], global_data, len(split.validation), training=False), distribution
        ),
    }
    steps_per_epoch = epoch_batches(len(split.train), global_data.batch_size)
    learning_rate = scaled_learning_rate(config.train.learning_rate, distribution.num_replicas, config.train.lr_scaling)
    scaling = distribution_report(distribution, config, learning_rate)
    if distribution.mode != "none":
        log(f"distribution {distribution.describe()}; {describe_scaling(scaling)}")

    with distribution.scope():  # variables created here are mirrored on every replica
        if state["checkpoint"]:
            model = load_checkpoint(run_dir, state["checkpoint"])
            log(f"resuming {run_dir} after epoch {state['epochs_done']} of {config.train.epochs}")
            if config.train.ema:
                restore_trained_weights(model)  # the checkpoint holds the average as the model's weights
            if config.kind == "transfer":
                apply_final_trainability(model, config)  # a phase-1 checkpoint is still frozen
        else:
            model = build_model(config, num_classes)
            compile_model(model, config, steps_per_epoch, learning_rate)
    adapt_model_to_multiworker(model, distribution)
    counts = model_counts(config, model, num_classes)
    device = describe_device(all_gpus=distribution.mode != "none")
    log(device_line(device, policy, bool(model.jit_compile)))
    for note in (xla_left_off(config.train.jit_compile, model), mixing_note(config), ema_batch_norm_note(config, model)):
        if note:
            log(note)
    log(
        f"{config.kind} model: {counts['num_params']:,} parameters ({counts['trainable_params']:,} trainable), "
        f"{counts['macs'] / 1e6:,.1f} M multiply-accumulates per image; "
        f"{len(split.train)} train / {len(split.validation)} validation / {len(split.test)} test images"
    )
    class_weight = None
    if config.train.class_weight == "balanced":
        class_weight = balanced_class_weights(split.train.labels, num_classes)
        weights = ", ".join(f"{name} {class_weight[i]:.2f}" for i, name in enumerate(split.class_names))
        log(f"class weights (--class-weight balanced, from the training split): {weights}")
    return TrainingSetup(
        model, datasets, steps_per_epoch, learning_rate, policy, counts, scaling, device, class_weight, train_from
    )


# Wide enough for a functional backbone's "Connected to" column and its longest layer names.
SUMMARY_COLUMNS = 120


def model_summary(model: Any) -> str:
    """Keras's ``model.summary()`` as text, ``SUMMARY_COLUMNS`` wide: the layers, their output shapes and parameter counts.

    Keras draws the table with rich, which fits it to the console: 80 columns when the output is not a
    terminal, where it cut layer names short and dropped columns. Rich reads the width from ``COLUMNS``,
    which is set for the call only.
    """
    parts: list[str] = []
    with unittest.mock.patch.dict(os.environ, {"COLUMNS": str(SUMMARY_COLUMNS)}):  # restores the variable after
        model.summary(print_fn=parts.append, line_length=SUMMARY_COLUMNS)
    return "".join(parts)
