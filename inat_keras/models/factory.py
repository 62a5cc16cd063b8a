"""The model a run's config describes: the scratch CNN or a transfer backbone, and its counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from inat_keras.config import CNNConfig, RunConfig, architecture, for_data
from inat_keras.errors import UserError
from inat_keras.models.augment import augmentation_for_model
from inat_keras.models.cnn import build_cnn, count_macs, count_params, layer_macs
from inat_keras.models.transfer import build_transfer, transfer_config

# -- model and optimizer --------------------------------------------------------------------


def cnn_config(config: RunConfig, num_classes: int) -> CNNConfig:
    """The run's scratch CNN, checked, for ``num_classes`` classes at the run's image size."""
    model = for_data(CNNConfig, config.model, num_classes=num_classes, input_size=config.data.image_size)
    model.validate()
    return model


def build_model(config: RunConfig, num_classes: int) -> Any:
    """The model a run's config describes (scratch CNN or transfer backbone)."""
    augmentation = augmentation_for_model(config.data)
    if config.kind == "scratch":
        return build_cnn(cnn_config(config, num_classes), augmentation=augmentation)
    if config.kind == "transfer":
        return build_transfer_from_config(config, num_classes, augmentation)
    raise UserError(f"run kind {config.kind!r} in config.json: expected 'scratch' or 'transfer'")


def complete_model_settings(config: RunConfig, num_classes: int) -> dict[str, Any]:
    """Every model setting, defaults included: config.json then rebuilds the run whatever later defaults become.

    The class count and input size are left out: they come from the data (class folders, --image-size).
    """
    if config.kind == "transfer":
        return architecture(transfer_config(config, num_classes))
    return architecture(cnn_config(config, num_classes))


def model_counts(config: RunConfig, model: Any, num_classes: int) -> dict[str, int]:
    """Parameters and multiply-accumulates; analytic for the scratch CNN."""
    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    if config.kind == "scratch":
        cnn = cnn_config(config, num_classes)
        return {"num_params": count_params(cnn), "macs": count_macs(cnn), "trainable_params": trainable}
    return {"num_params": int(model.count_params()), "macs": layer_macs(model), "trainable_params": trainable}


def build_transfer_from_config(config: RunConfig, num_classes: int, augmentation: Sequence[Any] | None = None) -> Any:
    """The model of a ``transfer`` run, trainable as its final (or only) phase asks."""
    model_config = transfer_config(config, num_classes)
    return build_transfer(
        model_config.backbone,
        num_classes,
        weights=model_config.weights,
        unfreeze=model_config.unfreeze,
        input_size=model_config.input_size,
        dropout=model_config.dropout,
        dense_units=model_config.dense_units,
        augmentation=augmentation,
    )
