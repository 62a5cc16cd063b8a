"""The from-scratch CNN and its analytic parameter and computation counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras

from inat_keras.config import CNNConfig


def build_cnn(
    config: CNNConfig | None = None,
    *,
    augmentation: Sequence[keras.layers.Layer] | None = None,
    **overrides: Any,
) -> keras.Model:
    """Build the flexible CNN as a functional model taking raw 0-255 RGB images.

    ``build_cnn(CNNConfig(...))`` or ``build_cnn(num_blocks=4, activation="gelu")``.
    Layers are named ``conv1``..``convN``, ``dense1``.., ``predictions``. ``augmentation``
    layers (``data.augmentation_layers``) go first: they change images in training only.
    """
    config = dataclasses.replace(config or CNNConfig(), **overrides)
    config.validate()
    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None

    inputs = keras.Input(shape=(config.input_size, config.input_size, 3), name="image")
    x = apply_layers(augmentation or (), inputs)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for index, (filters, kernel) in enumerate(zip(config.block_filters(), config.block_kernels(), strict=True), start=1):
        # A bias before BatchNormalization is cancelled by its mean subtraction.
        x = keras.layers.Conv2D(
            filters,
            kernel,
            padding="same",
            use_bias=not config.batch_norm,
            kernel_regularizer=regularizer,
            name=f"conv{index}",
        )(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(momentum=config.batch_norm_momentum, name=f"bn{index}")(x)
        x = keras.layers.Activation(config.activation, name=f"act{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
        if config.conv_dropout > 0:
            x = keras.layers.Dropout(config.conv_dropout, name=f"conv_dropout{index}")(x)

    if config.pooling == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    elif config.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    else:
        x = keras.layers.GlobalMaxPooling2D(name="global_pool")(x)

    for index, units in enumerate(config.dense_units, start=1):
        x = keras.layers.Dense(units, kernel_regularizer=regularizer, name=f"dense{index}")(x)
        x = keras.layers.Activation(config.activation, name=f"dense_act{index}")(x)
        if config.dense_dropout > 0:
            x = keras.layers.Dropout(config.dense_dropout, name=f"dense_dropout{index}")(x)

    # float32 softmax: under mixed precision a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(config.num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def apply_layers(layers: Sequence[keras.layers.Layer], x: Any) -> Any:
    """Call ``layers`` in turn: each stays a layer of the model, which remains one flat graph."""
    for layer in layers:
        x = layer(x)
    return x


def _feature_shapes(config: CNNConfig) -> list[tuple[int, int, int, int, int]]:
    """(input side, kernel, in channels, out channels, output side after pooling) per block."""
    side, channels, shapes = config.input_size, 3, []
    for filters, kernel in zip(config.block_filters(), config.block_kernels(), strict=True):
        pooled = side // 2  # 2x2 max pooling, stride 2, "valid": floor
        shapes.append((side, kernel, channels, filters, pooled))
        side, channels = pooled, filters
    return shapes


def _head_inputs(config: CNNConfig) -> int:
    _, _, _, channels, pooled = _feature_shapes(config)[-1]
    return pooled * pooled * channels if config.pooling == "flatten" else channels


def count_params(config: CNNConfig | None = None, **overrides: Any) -> int:
    """Parameters of ``build_cnn(config)`` by formula, non-trainable BatchNorm statistics included.

    A block of m filters of k x k on c input channels has k*k*c*m weights, plus m biases
    without BatchNorm or 4m BatchNorm values (scale, offset, moving mean and variance) with it.
    A dense layer of n neurons on d inputs has d*n + n.
    """
    config = dataclasses.replace(config or CNNConfig(), **overrides)
    total = 0
    for _, kernel, c_in, c_out, _ in _feature_shapes(config):
        total += kernel * kernel * c_in * c_out
        total += 4 * c_out if config.batch_norm else c_out
    width = _head_inputs(config)
    for units in [*config.dense_units, config.num_classes]:
        total += width * units + units
        width = units
    return total


def count_macs(config: CNNConfig | None = None, **overrides: Any) -> int:
    """Multiply-accumulates of one forward pass of one image, by formula.

    A "same" convolution of m filters of k x k on an s x s x c input costs s*s*k*k*c*m;
    a dense layer of n neurons on d inputs costs d*n. Pooling, activations and
    BatchNorm (foldable into the convolution) are not counted.
    """
    config = dataclasses.replace(config or CNNConfig(), **overrides)
    total = sum(side * side * kernel * kernel * c_in * c_out for side, kernel, c_in, c_out, _ in _feature_shapes(config))
    width = _head_inputs(config)
    for units in [*config.dense_units, config.num_classes]:
        total += width * units
        width = units
    return total


def layer_macs(model: keras.Model) -> int:
    """Multiply-accumulates of any built model, summed layer by layer from its shapes.

    Counts Conv2D, DepthwiseConv2D, SeparableConv2D and Dense; an independent check of
    :func:`count_macs`, and the count used for transfer backbones.
    """
    total = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.SeparableConv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += h * w * (kh * kw * c_in * layer.depth_multiplier + c_in * layer.depth_multiplier * c_out)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * c_out
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1] // layer.groups
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, nested models opened."""
    layers: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(all_layers(layer))
        else:
            layers.append(layer)
    return layers
