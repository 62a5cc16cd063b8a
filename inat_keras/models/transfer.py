"""Fine-tuning ImageNet backbones from ``keras.applications`` with a new classification head.

The model is one flat functional graph: raw 0-255 RGB image -> the backbone's own preprocessing
-> the backbone's layers (built on the model's input tensor, not nested, so Grad-CAM and guided
backpropagation can reach every layer) -> global average pooling -> dropout -> [dense] -> a
float32 softmax. BatchNormalization layers stay frozen (inference mode) in every strategy, as the
Keras transfer-learning guide advises: unfreezing them wrecks the pretrained statistics on
small batches. ConvNeXt normalises with LayerNormalization instead, which has no statistics to
freeze (see ``set_trainable``).
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
    model = flat_graph(keras.Model(images, outputs, name=f"transfer_{spec.name}"))
    set_trainable(model, unfreeze)
    return model


def is_grouped_depthwise(layer: Any) -> bool:
    """A ``Conv2D`` with one group per input channel and one filter per group: a depthwise convolution."""
    import keras

    return (
        isinstance(layer, keras.layers.Conv2D)
        and layer.groups > 1
        and layer.groups == layer.filters == int(layer.kernel.shape[-1])
        and int(layer.kernel.shape[-2]) == 1
    )


def as_depthwise(layer: Any) -> Any:
    """A ``DepthwiseConv2D`` computing what the grouped ``Conv2D`` ``layer`` does, with its name; weights set on call."""
    import keras

    config = layer.get_config()
    return keras.layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        data_format=config["data_format"],
        dilation_rate=config["dilation_rate"],
        activation=config["activation"],
        use_bias=config["use_bias"],
        name=layer.name,
        dtype=layer.dtype_policy,
        trainable=layer.trainable,
    )


def depthwise_weights(layer: Any) -> list[Any]:
    """The weights of a grouped ``Conv2D`` in ``DepthwiseConv2D``'s layout."""
    import keras
    import numpy as np

    # Conv2D's grouped kernel is (height, width, 1, channels); DepthwiseConv2D's is (height, width, channels, 1).
    kernel = np.transpose(keras.ops.convert_to_numpy(layer.kernel), (0, 1, 3, 2))
    return [kernel, *([keras.ops.convert_to_numpy(layer.bias)] if layer.use_bias else [])]


def is_fixed_normalization(layer: Any) -> bool:
    """A ``Normalization`` given its mean and variance as constants (no weights), such as ConvNeXt's first layer."""
    import keras

    return isinstance(layer, keras.layers.Normalization) and not layer.weights and not layer.invert


def as_rescaling(layer: Any) -> Any:
    """The ``Rescaling`` (named ``preprocess``, like the other backbones' preprocessing) that a fixed ``Normalization`` is."""
    import keras
    import numpy as np

    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), dtype=np.float64).reshape(-1)
    deviation = np.sqrt(np.asarray(keras.ops.convert_to_numpy(layer.variance), dtype=np.float64).reshape(-1))
    scale = 1.0 / np.maximum(deviation, keras.config.epsilon())
    return keras.layers.Rescaling(scale.tolist(), offset=(-mean * scale).tolist(), name=PREPROCESS_NAME)


def flat_graph(model: Any) -> Any:
    """``model`` with the layers of nested Sequential blocks called one by one, grouped depthwise
    convolutions as ``DepthwiseConv2D`` and fixed normalisations as ``Rescaling``; the same weights and
    outputs (to float rounding). A model with none of these is returned as it is.

    ConvNeXt (``keras.applications``) nests its stem and downsampling layers in Sequential models,
    which Grad-CAM, the feature maps and the layer count of ``--unfreeze`` cannot see into; it
    writes its 7x7 depthwise convolutions as ``Conv2D(groups=channels)``, whose gradient TensorFlow
    computes about 100 times slower on a CPU than ``DepthwiseConv2D``'s (0.6 s against 0.006 s for
    one layer on a batch of two 8x8 maps, measured here): an eager ConvNeXt-Tiny step took 15-20 s;
    and its input ``Normalization`` holds its statistics as constants, which tf2onnx mistakes for
    missing model inputs, so the ONNX export failed.

    Every layer of the new graph is a copy called once: a layer called in two graphs would answer
    ``layer.output`` (feature cache, Grad-CAM) from the first one.
    """
    import keras

    if not any(
        isinstance(layer, keras.Sequential) or is_grouped_depthwise(layer) or is_fixed_normalization(layer)
        for layer in model.layers
    ):
        return model

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(layer, keras.Sequential):
            x = args[0]
            for inner in layer.layers:
                x = call(inner, x)
            return x
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # an operation of the graph, such as ConvNeXt's residual additions
        if is_grouped_depthwise(layer):
            copy, weights = as_depthwise(layer), depthwise_weights(layer)
        elif is_fixed_normalization(layer):
            copy, weights = as_rescaling(layer), []
        else:
            copy, weights = layer.__class__.from_config(layer.get_config()), layer.get_weights()
        outputs = copy(*args, **kwargs)
        if weights:
            copy.set_weights(weights)
        return outputs

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


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

    "Frozen normalisation" is about BatchNormalization's moving mean and variance, which a small
    batch would overwrite. LayerNormalization (ConvNeXt's) normalises each image at each position
    by its own channels, the same in training and inference, and keeps no statistics: an unfrozen
    one trains its scale and offset like any other layer, and a frozen one keeps them.

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
