"""build_cnn across configurations, and the analytic counts against Keras and a per-layer sum."""

from __future__ import annotations

import numpy as np
import pytest

from inat_keras import CNNConfig, UserError, build_cnn, count_macs, count_params
from inat_keras.models.cnn import layer_macs

CONFIGS = [
    CNNConfig(),
    CNNConfig(input_size=64, batch_norm=False, pooling="avg", activation="gelu"),
    CNNConfig(input_size=64, first_filters=64, filter_organisation=0.5, kernel_size=[7, 5, 5, 3, 3], activation="mish"),
    CNNConfig(input_size=96, first_filters=16, filter_organisation=2, dense_units=[512, 128], activation="silu", l2=1e-4),
    CNNConfig(input_size=37, num_blocks=3, filters=[8, 16, 24], kernel_size=5, pooling="max", activation="leaky_relu"),
    CNNConfig(input_size=32, num_blocks=4, conv_dropout=0.2, dense_units=[], activation="selu", num_classes=7),
    CNNConfig(input_size=50, num_blocks=2, filters=[4, 6], activation="elu", dense_units=[10]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.input_size}px-{c.num_blocks}b-{c.activation}-{c.pooling}")
def test_analytic_counts_equal_keras_and_a_per_layer_sum(config: CNNConfig) -> None:
    model = build_cnn(config)
    assert count_params(config) == model.count_params()
    assert count_macs(config) == layer_macs(model)


def test_macs_follow_the_textbook_formula_for_one_block() -> None:
    # m filters of k x k on an s x s x 3 image: s*s*k*k*3*m, then n dense neurons on (s/2)^2*m inputs.
    s, k, m, n = 16, 3, 8, 10
    config = CNNConfig(input_size=s, num_blocks=1, filters=[m], kernel_size=k, dense_units=[n], num_classes=4)
    expected = s * s * k * k * 3 * m + (s // 2) ** 2 * m * n + n * 4
    assert count_macs(config) == expected


def test_model_has_stable_layer_names_and_float32_softmax_output() -> None:
    model = build_cnn(CNNConfig(input_size=32, dense_units=[16, 8]))
    names = {layer.name for layer in model.layers}
    assert {"conv1", "conv2", "conv3", "conv4", "conv5", "dense1", "dense2", "predictions"} <= names
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_stays_float32_under_mixed_precision() -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_cnn(CNNConfig(input_size=32, num_blocks=2, filters=[4, 8], dense_units=[8]))
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_filter_organisation_halves_keeps_or_doubles_per_block() -> None:
    assert CNNConfig(first_filters=64, filter_organisation=0.5).block_filters() == [64, 32, 16, 8, 4]
    assert CNNConfig(first_filters=32, filter_organisation=2).block_filters() == [32, 64, 128, 256, 512]
    model = build_cnn(CNNConfig(input_size=32, first_filters=8, filter_organisation=2))
    assert [model.get_layer(f"conv{i}").filters for i in range(1, 6)] == [8, 16, 32, 64, 128]


def test_batch_norm_switch_adds_or_removes_bn_layers_and_conv_bias() -> None:
    with_bn = build_cnn(CNNConfig(input_size=32))
    without = build_cnn(CNNConfig(input_size=32, batch_norm=False))
    assert with_bn.get_layer("bn1") and not with_bn.get_layer("conv1").use_bias
    assert not any(layer.name.startswith("bn") for layer in without.layers) and without.get_layer("conv1").use_bias


def test_overrides_are_keyword_arguments() -> None:
    model = build_cnn(input_size=32, num_blocks=3, activation="gelu")
    assert model.get_layer("act1").activation.__name__ == "gelu"
    assert "conv4" not in {layer.name for layer in model.layers}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"input_size": 16}, "too small for 5 pooling blocks"),
        ({"activation": "swish2"}, "--activation swish2"),
        ({"filters": [8, 16]}, "one value per conv block"),
        ({"kernel_size": [3, 3]}, "one per conv block"),
        ({"dense_dropout": 1.5}, "--dense-dropout"),
    ],
)
def test_bad_settings_raise_one_line_user_errors(overrides, message) -> None:
    with pytest.raises(UserError, match=message) as caught:
        build_cnn(**overrides)
    assert "\n" not in str(caught.value)


def test_one_kernel_size_given_as_a_list_applies_to_every_block() -> None:
    from inat_keras.cli.values import int_list

    config = CNNConfig(input_size=32, num_blocks=3, kernel_size=int_list("5"))  # what --kernel-size 5 parses to
    assert config.block_kernels() == [5, 5, 5]
    model = build_cnn(config)
    assert [model.get_layer(f"conv{i}").kernel_size for i in (1, 2, 3)] == [(5, 5)] * 3
    assert count_params(config) == model.count_params()
    with pytest.raises(UserError, match="give one value or one per conv block"):
        build_cnn(CNNConfig(input_size=32, num_blocks=3, kernel_size=[3, 5]))
