"""build_transfer: every backbone, flat graphs, freezing strategies, preprocessing, weights files, offline errors."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras import UserError, build_transfer
from inat_keras.models.backbones import BACKBONES, parse_unfreeze
from inat_keras.models.transfer import backbone_layers, head_layers
from inat_keras.training.features import feature_extractor


def images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def is_batch_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


# The ConvNeXt and EfficientNetV2-M/L backbones have their own tests, within the suite's time budget, in test_recipes.py.
RECIPE_BACKBONES = ("convnext_tiny", "convnext_small", "convnext_base", "efficientnetv2m", "efficientnetv2l")


@pytest.mark.parametrize("name", [name for name in BACKBONES if name not in RECIPE_BACKBONES])
def test_every_registered_backbone_builds_one_flat_model_that_trains_a_step(name: str) -> None:
    spec = BACKBONES[name]
    size = max(32, spec.min_size)
    model = build_transfer(name, 3, weights=None, unfreeze=4, input_size=size)

    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert model.get_layer(spec.last_conv_layer) in backbone_layers(model)
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert not [layer.name for layer in model.layers if layer.trainable and layer.weights and is_batch_norm(layer)]

    # Eager: tracing a 500-layer graph for one step costs more than running it.
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    before = [np.array(w) for w in model.trainable_weights]
    frozen_before = np.array(backbone_layers(model)[1].weights[0]) if backbone_layers(model)[1].weights else None
    model.train_on_batch(images(2, size), np.eye(3)[[0, 1]])
    assert any(not np.allclose(a, np.array(w)) for a, w in zip(before, model.trainable_weights, strict=True))
    if frozen_before is not None:
        np.testing.assert_array_equal(frozen_before, np.array(backbone_layers(model)[1].weights[0]))
    probabilities = np.asarray(model(images(2, size), training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("unfreeze", [0, 12, "all"])
def test_each_unfreeze_strategy_trains_exactly_its_layers_and_never_batch_norm(unfreeze) -> None:
    model = build_transfer("mobilenetv2", 4, weights=None, unfreeze=unfreeze, input_size=32)
    layers = backbone_layers(model)
    top = layers if unfreeze == "all" else layers[len(layers) - unfreeze :] if unfreeze else []
    expected = {layer.name for layer in top if layer.weights and not is_batch_norm(layer)}
    expected |= {layer.name for layer in head_layers(model) if layer.weights}

    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == expected
    assert not any(is_batch_norm(layer) and layer.trainable for layer in model.layers)
    head_params = sum(int(np.prod(w.shape)) for layer in head_layers(model) for w in layer.trainable_weights)
    trained = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (trained == head_params) == (unfreeze == 0)


def test_the_model_reproduces_each_backbones_own_preprocess_input() -> None:
    for name in ("vgg16", "mobilenetv2"):
        spec = BACKBONES[name]
        model = build_transfer(name, 3, weights=None, input_size=32)
        first_backbone_layer = backbone_layers(model)[0]
        preprocessing = keras.Model(model.input, first_backbone_layer.input)
        x = images(2, 32)
        np.testing.assert_allclose(preprocessing(x), spec.preprocess_input(x.copy()), rtol=1e-5, atol=1e-3)


def test_a_saved_transfer_model_loads_and_predicts_the_same(tmp_path: Path) -> None:
    model = build_transfer("vgg16", 3, weights=None, input_size=32, dense_units=[8])
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x = images(2, 32)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5)


def test_loading_a_local_weights_file_gives_the_outputs_of_the_model_whose_weights_were_saved(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    saved = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    for variable in saved.weights:  # non-trivial statistics, so a wrong or skipped load shows
        variable.assign(np.random.default_rng(2).uniform(0.5, 1.5, variable.shape).astype("float32") * variable)
    path = tmp_path / "mobilenetv2_notop.weights.h5"
    saved.save_weights(path)

    model = build_transfer("mobilenetv2", 3, weights=str(path), input_size=32)
    x = images(3, 32)
    expected = np.asarray(saved(BACKBONES["mobilenetv2"].preprocess_input(x.copy()))).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(feature_extractor(model)(x)), expected, rtol=1e-4, atol=1e-6)


def test_a_failed_imagenet_download_is_one_line_that_names_a_local_file_or_none(offline_keras) -> None:
    with pytest.raises(UserError) as raised:
        build_transfer("mobilenetv2", 3, weights="imagenet", input_size=96)
    message = str(raised.value)
    assert "\n" not in message
    assert "ImageNet weights of mobilenetv2" in message and "--weights PATH" in message and "--weights none" in message


def test_a_missing_weights_file_or_a_bad_unfreeze_or_too_small_image_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        build_transfer("mobilenetv2", 3, weights=str(tmp_path / "absent.h5"), input_size=32)
    with pytest.raises(UserError, match="--unfreeze"):
        parse_unfreeze("-3")
    with pytest.raises(UserError, match="--unfreeze"):
        parse_unfreeze("some")
    with pytest.raises(UserError, match="--image-size 71 or more"):
        build_transfer("xception", 3, weights=None, input_size=40)
    with pytest.raises(UserError, match="--backbone"):
        build_transfer("alexnet", 3, weights=None)


def test_a_weights_file_in_the_format_keras_downloads_loads_into_the_flat_model(tmp_path: Path) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    # Keras's *_notop.h5 ImageNet files are in the legacy HDF5 layout, matched layer by layer in order.
    saved = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, saved)

    model = build_transfer("vgg16", 3, weights=str(path), input_size=32)
    x = images(2, 32)
    expected = np.asarray(saved(BACKBONES["vgg16"].preprocess_input(x.copy()))).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(feature_extractor(model)(x)), expected, rtol=1e-5, atol=1e-6)
