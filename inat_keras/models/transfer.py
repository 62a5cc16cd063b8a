"""Fine-tuning ImageNet backbones from ``keras.applications`` with a new classification head.

The model is one flat functional graph: raw 0-255 RGB image -> the backbone's own preprocessing
-> the backbone's layers (built on the model's input tensor, not nested, so Grad-CAM and guided
backpropagation can reach every layer) -> global average pooling -> dropout -> [dense] -> a
float32 softmax. BatchNormalization layers stay frozen (inference mode) in every strategy, as the
Keras transfer-learning guide advises: unfreezing them wrecks the pretrained statistics on
small batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from inat_keras.config import RunConfig, TransferConfig, for_data
from inat_keras.errors import UserError
from inat_keras.models.augment import is_augmentation_layer
from inat_keras.models.backbones import (
    FEATURES_NAME,
    HEAD_PREFIX,
    INPUT_NAME,
    PREDICTIONS_NAME,
    PREPROCESS_NAME,
    build_backbone_on,
    get_backbone,
    parse_unfreeze,
    preprocess,
    resolve_weights,
)
from inat_keras.models.cnn import apply_layers


def build_transfer(
    backbone: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = "imagenet",
    unfreeze: int | str = 0,
    input_size: int | None = None,
    dropout: float = 0.2,
    dense_units: list[int] | tuple[int, ...] = (),
    augmentation: Sequence[Any] | None = None,
) -> Any:
    """A ``keras.applications`` backbone with a new ``num_classes``-way head, as one flat model.

    ``weights``: "imagenet" (through Keras's download cache), ``None``, or a local no-top weights
    file. ``unfreeze``: 0 trains the head only, K also the top K backbone layers, "all" every
    backbone layer; BatchNormalization layers are never trained. ``input_size`` defaults to the
    backbone's native resolution. The model takes raw 0-255 RGB images. ``augmentation`` layers
    (``data.augmentation_layers``) go first and change images in training only.
    """
    import keras

    spec = get_backbone(backbone)
    size = input_size or spec.input_size
    if size < spec.min_size:
        raise UserError(f"--image-size {size} is too small for {spec.name}: use --image-size {spec.min_size} or more")
    check_head(num_classes, dropout, dense_units)
    parse_unfreeze(unfreeze)

    # -- layers and graph: the backbone is built on our input tensor, so the model stays flat.
    images = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    base = build_backbone_on(spec, preprocess(spec, apply_layers(augmentation or (), images)), resolve_weights(weights))
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_NAME)(base.output)
    x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    for index, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dense_dropout{index}")(x)
    # float32 softmax: under mixed precision a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=PREDICTIONS_NAME)(x)
    model = keras.Model(images, outputs, name=f"transfer_{spec.name}")
    set_trainable(model, unfreeze)
    return model


def check_head(num_classes: int, dropout: float, dense_units: Sequence[int]) -> None:
    if num_classes < 2:
        raise UserError(f"{num_classes} class(es): a classifier needs at least 2")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--head-dropout {dropout}: must be in [0, 1)")
    if any(units < 1 for units in dense_units):
        raise UserError(f"--head-dense-units {list(dense_units)}: every layer needs at least 1 unit")


# -- freezing -------------------------------------------------------------------------------


def is_own_layer(layer: Any) -> bool:
    """A layer this module added (input, preprocessing, head), not one of the backbone's."""
    name = layer.name
    return (
        name in (INPUT_NAME, PREPROCESS_NAME, FEATURES_NAME, PREDICTIONS_NAME)
        or name.startswith(HEAD_PREFIX)
        or is_augmentation_layer(layer)
    )


def backbone_layers(model: Any) -> list[Any]:
    """The backbone's layers in the order they appear in it (input side first)."""
    return [layer for layer in model.layers if not is_own_layer(layer)]


def head_layers(model: Any) -> list[Any]:
    """The layers after the pooled features, in order."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX) or layer.name == PREDICTIONS_NAME]


def set_trainable(model: Any, unfreeze: int | str) -> None:
    """Head trainable; the top ``unfreeze`` backbone layers too (or all); never BatchNormalization.

    Call ``compile`` afterwards: Keras fixes the set of trained weights when a model is compiled.
    """
    import keras

    unfreeze = parse_unfreeze(unfreeze)
    layers = backbone_layers(model)
    # parse_unfreeze returns "all" or a count, so a str here is "all".
    count = len(layers) if isinstance(unfreeze, str) else min(unfreeze, len(layers))
    for index, layer in enumerate(layers):
        unfrozen = index >= len(layers) - count
        layer.trainable = unfrozen and not isinstance(layer, keras.layers.BatchNormalization)
    for layer in head_layers(model):
        layer.trainable = True


def count_trainable(model: Any) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def calibrate_batch_norm(model: Any, images: Any) -> None:
    """Set every BatchNormalization's statistics from one batch, for a backbone without pretrained weights.

    A randomly initialised backbone whose BatchNormalization layers are frozen at their initial
    statistics (mean 0, variance 1) shrinks its signal layer after layer: MobileNetV2's pooled
    features come out near 1e-12 and nothing can be learnt. One forward pass in training mode
    with momentum 0 stores the batch's statistics; the layers stay frozen afterwards.
    """
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    try:
        model(images, training=True)
    finally:
        for layer, (trainable, momentum) in zip(norms, saved, strict=True):
            layer.trainable, layer.momentum = trainable, momentum


def transfer_config(config: RunConfig, num_classes: int) -> TransferConfig:
    """The run's model settings with the class count and image size of its data."""
    return for_data(TransferConfig, config.model, num_classes=num_classes, input_size=config.data.image_size)
