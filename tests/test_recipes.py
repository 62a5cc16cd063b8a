"""Today's fine-tuning recipes: ConvNeXt and EfficientNetV2-M/L backbones, RandAugment and AugMix, random
erasing, MixUp and CutMix, and the moving average of the weights (--ema)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.errors import UserError
from inat_keras.models.augment import AUGMENT_PREFIX, augmentation_layers, batch_mixers, image_augmentation, make_augmentation
from inat_keras.models.backbones import BACKBONES, download_failure_message
from inat_keras.models.cnn import build_cnn
from inat_keras.models.transfer import backbone_layers, build_transfer

NEW_BACKBONES = ("convnext_tiny", "convnext_small", "convnext_base", "efficientnetv2m", "efficientnetv2l")
# Trained, saved, reloaded and exported here; the others cost 60-220 s each on 2 cores (the tflite
# conversion of 50-120 M weights), so they are built at 32 px and checked without training.
TRAINED_BACKBONE = "convnext_tiny"
SMALL_CNN = {"num_classes": 3, "input_size": 32, "num_blocks": 2, "first_filters": 4, "dense_units": [8]}


def pixels(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def check_transfer_model(model: keras.Model, name: str) -> None:
    """One flat graph, the registry's Grad-CAM layer among the backbone's, no BatchNormalization trained."""
    spec = BACKBONES[name]
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert model.get_layer(spec.last_conv_layer) in backbone_layers(model)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"


# -- backbones ------------------------------------------------------------------------------------


def test_the_registry_holds_the_new_backbones_at_their_native_sizes() -> None:
    sizes = {name: BACKBONES[name].input_size for name in NEW_BACKBONES}
    assert sizes == {
        "convnext_tiny": 224,
        "convnext_small": 224,
        "convnext_base": 224,
        "efficientnetv2m": 480,
        "efficientnetv2l": 480,
    }
    for name in NEW_BACKBONES:
        spec = BACKBONES[name]
        assert spec.preprocessing == "inside" and spec.min_size == 32
        assert callable(getattr(keras.applications, spec.constructor))
        assert callable(spec.preprocess_input)


def test_convnext_tiny_trains_two_steps_saves_reloads_and_exports(tmp_path: Path) -> None:
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained

    model = build_transfer(TRAINED_BACKBONE, 3, weights=None, unfreeze=4, input_size=32)
    check_transfer_model(model, TRAINED_BACKBONE)
    # Keras's Conv2D(groups=channels) is now a DepthwiseConv2D (its CPU gradient is 100x faster).
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 18

    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    before = [np.array(w) for w in model.trainable_weights]
    for _ in range(2):
        model.train_on_batch(pixels(2), np.eye(3)[[0, 1]])
    assert all(not np.allclose(a, np.array(w)) for a, w in zip(before, model.trainable_weights, strict=True))

    model.save(tmp_path / "model.keras")
    trained = load_trained(tmp_path / "model.keras", classes=["a", "b", "c"])
    np.testing.assert_allclose(trained.model.predict(pixels(2), verbose=0), model.predict(pixels(2), verbose=0), rtol=1e-5)
    result = export_model(trained, "tflite", tmp_path / "export")
    assert result["accepted"] and result["same_top1"]


@pytest.mark.parametrize("name", [name for name in NEW_BACKBONES if name != TRAINED_BACKBONE])
def test_each_large_backbone_builds_flat_at_32_px_and_fetches_the_weights_file_its_offline_message_names(
    name: str, monkeypatch
) -> None:
    from keras.src.utils import file_utils

    # The file Keras would download, recorded instead of fetched; the model is built all the same.
    fetched = []
    monkeypatch.setattr(file_utils, "get_file", lambda fname, origin, **kwargs: fetched.append(origin) or fname)
    monkeypatch.setattr(keras.Model, "load_weights", lambda self, *args, **kwargs: None)
    model = build_transfer(name, 3, weights="imagenet", unfreeze=4, input_size=32)
    check_transfer_model(model, name)
    assert model.output_shape == (None, 3)

    file = fetched[-1].rsplit("/", 1)[-1]
    assert (
        file
        == {
            "convnext_small": "convnext_small_notop.h5",
            "convnext_base": "convnext_base_notop.h5",
            "efficientnetv2m": "efficientnetv2-m_notop.h5",
            "efficientnetv2l": "efficientnetv2-l_notop.h5",
        }[name]
    )
    # What keras.utils.get_file raises offline, for this URL.
    offline = Exception(f"URL fetch failure on {fetched[-1]}: None -- [Errno -3] Temporary failure in name resolution")
    message = download_failure_message(BACKBONES[name], offline)
    assert f"could not download {file}, the ImageNet weights of {name}" in message
    assert f"~/.keras/models/{file}" in message and "--weights PATH" in message and "--weights none" in message


def test_an_offline_convnext_names_its_weights_file_in_one_line(offline_keras) -> None:
    with pytest.raises(UserError) as raised:
        build_transfer("convnext_tiny", 3, weights="imagenet", input_size=32)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("could not download convnext_tiny_notop.h5, the ImageNet weights of convnext_tiny")
    assert "Temporary failure in name resolution" in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_tiny_notop.h5" in message


def test_the_flat_convnext_computes_what_keras_own_convnext_does_from_the_same_weights_file(tmp_path: Path) -> None:
    from inat_keras.training.features import feature_extractor

    keras.utils.set_random_seed(3)
    saved = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "convnext_tiny_notop.weights.h5"
    saved.save_weights(path)

    model = build_transfer("convnext_tiny", 3, weights=str(path), input_size=32)
    x = pixels(2)
    # Keras's own preprocessing (a Normalization layer inside it, on 0-255 pixels) is reproduced by a Rescaling.
    np.testing.assert_allclose(BACKBONES["convnext_tiny"].preprocess_input(x.copy()), x)
    expected = np.asarray(saved(x)).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(feature_extractor(model)(x)), expected, rtol=1e-4, atol=1e-5)


def test_convnext_layer_normalisation_keeps_no_batch_statistics_and_trains_only_when_unfrozen() -> None:
    """'Frozen normalisation' for ConvNeXt: its LayerNormalization has no statistics to freeze, so training mode
    normalises each image exactly as inference does, whatever the batch; unfrozen ones train their scale and offset."""
    from inat_keras.training.features import feature_extractor

    model = build_transfer("convnext_tiny", 3, weights=None, unfreeze=7, input_size=32)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    norms = [layer for layer in backbone_layers(model) if isinstance(layer, keras.layers.LayerNormalization)]
    unfrozen = {"convnext_tiny_stage_3_block_2_layernorm", "convnext_tiny_layernorm"}  # in the top 7 layers
    assert {layer.name for layer in norms if layer.trainable} == unfrozen and len(norms) > 10

    features = feature_extractor(model)
    x = pixels(4)
    alone = np.asarray(features(x[:1], training=True))
    in_a_batch = np.asarray(features(x, training=True))[:1]
    np.testing.assert_allclose(alone, in_a_batch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone, np.asarray(features(x[:1], training=False)), rtol=1e-5, atol=1e-6)

    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    before = {layer.name: [np.array(w) for w in layer.weights] for layer in norms}
    model.train_on_batch(x, np.eye(3)[[0, 1, 2, 0]])
    changed = {layer.name for layer in norms if not np.array_equal(before[layer.name][0], np.array(layer.weights[0]))}
    assert changed == unfrozen


def test_the_exact_gelu_of_convnext_and_the_scratch_cnn_exports_to_onnx(tmp_path: Path) -> None:
    """TensorFlow writes Keras's exact GELU with Erfc, which ONNX lacks; the export computes it with erf."""
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained

    build_cnn(**SMALL_CNN, activation="gelu").save(tmp_path / "gelu.keras")
    result = export_model(load_trained(tmp_path / "gelu.keras", classes=["a", "b", "c"]), "onnx", tmp_path / "export")
    assert result["accepted"] and result["max_abs_difference"] < 1e-5


# -- augmentation policies, random erasing ---------------------------------------------------------


POLICIES = ("randaugment", "augmix")


def recipe_data(**settings) -> DataConfig:
    return DataConfig(image_size=32, seed=1, augment=True, random_erasing=0.5, **settings)


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_in_the_model_changes_training_inputs_only_saves_and_names_itself_as_an_xla_blocker(
    policy: str, tmp_path: Path, monkeypatch
) -> None:
    from inat_keras import devices
    from inat_keras.inspection.export import serving_model
    from inat_keras.models.augment import load_model
    from inat_keras.training import runtime

    data = recipe_data(augment_policy=policy, augment_placement="model")
    plain = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0)
    augmented = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0, augmentation=image_augmentation(data))
    augmented.set_weights(plain.get_weights())
    names = [layer.name for layer in augmented.layers if layer.name.startswith(AUGMENT_PREFIX)]
    assert names == [f"{AUGMENT_PREFIX}affine", f"{AUGMENT_PREFIX}flip", f"{AUGMENT_PREFIX}{policy}", f"{AUGMENT_PREFIX}erasing"]

    x = pixels(4)
    np.testing.assert_allclose(augmented.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6)
    assert not np.allclose(np.asarray(augmented(x, training=True)), np.asarray(plain(x, training=True)), atol=1e-4)

    # RandAugment and AugMix warp with Keras's RandomRotation & co. inside them; random erasing compiles.
    assert runtime.xla_blockers(augmented) == [f"{AUGMENT_PREFIX}{policy}"]
    monkeypatch.setattr(devices, "gpu_available", lambda: True)
    assert runtime.resolve_jit("auto", augmented) is False
    assert runtime.xla_left_off("auto", augmented).endswith(f"XLA cannot compile the layers {AUGMENT_PREFIX}{policy}")
    with pytest.raises(UserError, match=f"--jit-compile on: XLA cannot compile the layers {AUGMENT_PREFIX}{policy}"):
        runtime.resolve_jit("on", augmented)

    augmented.save(tmp_path / "model.keras")  # a checkpoint of a run augmenting in its model
    np.testing.assert_allclose(load_model(tmp_path / "model.keras").predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6)
    served = serving_model(augmented)
    assert not any(layer.name.startswith(AUGMENT_PREFIX) for layer in served.layers)
    np.testing.assert_allclose(np.asarray(served(x)), plain.predict(x, verbose=0), rtol=1e-6)


def test_random_erasing_and_the_basic_stack_still_train_inside_an_xla_step(monkeypatch) -> None:
    from inat_keras import devices
    from inat_keras.training import runtime

    model = build_cnn(**SMALL_CNN, augmentation=image_augmentation(DataConfig(augment=True, random_erasing=0.5)))
    assert runtime.xla_blockers(model) == []
    monkeypatch.setattr(devices, "gpu_available", lambda: True)
    assert runtime.resolve_jit("auto", model) is True and runtime.xla_left_off("auto", model) == ""
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    assert model.jit_compile is True
    assert np.isfinite(model.train_on_batch(pixels(4), np.eye(3, dtype="float32")[[0, 1, 2, 0]]))


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_in_the_pipeline_augments_training_batches_only(policy: str, tiny_dataset: Path) -> None:
    from inat_keras.data.files import make_split
    from inat_keras.data.pipeline import make_dataset

    config = recipe_data(data_dir=str(tiny_dataset), batch_size=64, augment_policy=policy, augment_placement="pipeline")
    split = make_split(config)

    def first_batch(data: DataConfig, *, training: bool = True) -> np.ndarray:
        return next(iter(make_dataset(split.train, data, 3, training=training)))[0].numpy()

    plain = first_batch(dataclasses.replace(config, augment=False, random_erasing=0.0))
    augmented = first_batch(config)
    assert augmented.dtype == np.float32 and augmented.shape == plain.shape
    assert not np.array_equal(augmented, plain)
    np.testing.assert_array_equal(
        first_batch(config, training=False), first_batch(dataclasses.replace(config, augment=False), training=False)
    )
    np.testing.assert_array_equal(first_batch(dataclasses.replace(config, augment_placement="model")), plain)


def test_every_new_layer_computes_in_float32_under_mixed_precision() -> None:
    data = recipe_data(mixup=0.2, cutmix=1.0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        images = {}
        for policy in POLICIES:
            images[policy] = make_augmentation(0, policy=policy)(np.full((2, 16, 16, 3), 200.0, "float32"), training=True)
        erasing = image_augmentation(dataclasses.replace(data, augment=False))
        assert [layer.name for layer in erasing] == [f"{AUGMENT_PREFIX}erasing"]
        images["erasing"] = erasing[0](pixels(2, 16), training=True)
        labels = {}
        for mixer in batch_mixers(data):
            mixed = mixer({"images": pixels(4, 16), "labels": np.eye(3, dtype="float32")[[0, 1, 2, 0]]}, training=True)
            images[mixer.name], labels[mixer.name] = mixed["images"], mixed["labels"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    dtypes = {name: keras.backend.standardize_dtype(tensor.dtype) for name, tensor in {**images, **labels}.items()}
    assert dtypes == dict.fromkeys(["randaugment", "augmix", "erasing", "augment_mixup", "augment_cutmix"], "float32")
    assert [keras.backend.standardize_dtype(tensor.dtype) for tensor in labels.values()] == ["float32", "float32"]


def test_the_basic_policy_is_the_stack_it_always_was() -> None:
    assert [type(layer).__name__ for layer in augmentation_layers(0)] == ["RandomAffine", "RandomFlip", "RandomColorJitter"]
    with pytest.raises(UserError, match="--augment-policy autoaugment: choose one of basic, randaugment, augmix"):
        augmentation_layers(0, policy="autoaugment")


# -- MixUp and CutMix ------------------------------------------------------------------------------


def value(index: int, count: int) -> int:
    """The pixel value of image ``index`` of ``count``: distinct, within uint8."""
    return index * (255 // count)


def pairs(count: int, num_classes: int = 4, size: int = 8) -> Any:
    """An image array as cached_images gives it, already decoded; image i is filled with ``value(i, count)``, class i % 4."""
    from inat_keras.data.pipeline import ImageArray

    images = np.stack([np.full((size, size, 3), value(i, count), np.uint8) for i in range(count)])
    return ImageArray.of(images, np.arange(count) % num_classes, num_classes)


def batches(data: DataConfig, count: int, *, training: bool = True, epochs: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    from inat_keras.data.pipeline import batched, epoch_batches

    dataset = batched(pairs(count), data, count, training=training)
    if not training:
        return [(images.numpy(), labels.numpy()) for _ in range(epochs) for images, labels in dataset]
    iterator = iter(dataset)  # endless: one iterator, an epoch's batches at a time, as fit takes them
    return [tuple(part.numpy() for part in next(iterator)) for _ in range(epochs * epoch_batches(count, data.batch_size))]


def test_mixup_mixes_images_and_labels_of_training_batches_with_the_same_weight() -> None:
    found = batches(DataConfig(batch_size=8, mixup=1.0, seed=3), 32, epochs=2)
    for images, labels in found:
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
        assert np.allclose(images.std(axis=(1, 2, 3)), 0, atol=1e-3)  # a blend of two flat images is flat
        assert images.min() >= 0 and images.max() <= value(31, 32)
    soft = np.concatenate([labels for _, labels in found])
    assert (soft.max(axis=1) < 0.99).mean() > 0.5, "Beta(1, 1) mixes most pairs"
    for _, labels in batches(DataConfig(batch_size=8, mixup=1.0, seed=3), 32, training=False):
        assert set(np.unique(labels)) == {0.0, 1.0}  # validation batches keep their one-hot labels


def test_cutmix_pastes_a_patch_and_weighs_the_labels_by_its_area() -> None:
    images, labels = batches(DataConfig(batch_size=16, cutmix=1.0, seed=5), 16)[0]
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    originals = {value(i, 16) for i in range(16)}
    assert set(np.unique(images)) <= originals  # pixels are copied, never blended
    patched = [i for i in range(16) if len(np.unique(images[i])) == 2]
    assert patched, "some images hold a patch of another"
    for i in patched:
        # Image k was value(k, 16) everywhere, of class k % 4: each class weighs as much as its share of the pixels.
        expected = np.zeros(4)
        for pixel in np.unique(images[i]):
            expected[int(pixel) // value(1, 16) % 4] += (images[i] == pixel).mean()
        np.testing.assert_allclose(labels[i], expected, atol=0.2)  # Keras weighs by the box's fractional area


def test_with_both_set_each_batch_is_either_mixed_up_or_cut_and_the_coins_change_each_epoch() -> None:
    kinds = []
    for images, _ in batches(DataConfig(batch_size=4, mixup=1.0, cutmix=1.0, seed=7), 64, epochs=2):
        copied = set(np.unique(images)) <= {value(i, 64) for i in range(64)}
        flat = np.allclose(images.std(axis=(1, 2, 3)), 0, atol=1e-3)
        assert copied or flat, "a batch is one mixer's or the other's, never both"
        kinds.append("cutmix" if copied and not flat else "mixup")
    first, second = kinds[:16], kinds[16:]
    assert 4 <= first.count("cutmix") <= 12 and first != second


def test_label_smoothing_of_a_mixed_label_is_the_mixture_of_the_smoothed_labels() -> None:
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    predicted = np.array([[0.7, 0.2, 0.1]], dtype="float32")
    a, b, weight = np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]), 0.3
    mixed = float(loss(weight * a + (1 - weight) * b, predicted))
    assert mixed == pytest.approx(weight * float(loss(a, predicted)) + (1 - weight) * float(loss(b, predicted)), rel=1e-6)


def test_mixing_or_erasing_turns_the_feature_cache_off() -> None:
    from inat_keras.training.finetune import Phase, uses_feature_cache

    head_only = [Phase("head", 0, 2, 0, 1e-3)]
    base = RunConfig(name="r", kind="transfer", model={"unfreeze": 0}, data=DataConfig())
    assert uses_feature_cache(base, head_only)
    for change in ({"mixup": 0.2}, {"cutmix": 1.0}, {"random_erasing": 0.25}):
        assert not uses_feature_cache(dataclasses.replace(base, data=DataConfig(**change)), head_only)


# -- settings: config.json, flags, search space -----------------------------------------------------


def test_an_older_config_json_loads_with_the_recipes_off() -> None:
    config = RunConfig.from_dict({"name": "old", "data": {"image_size": 64, "augment": True}, "train": {"epochs": 3}})
    assert (config.data.augment_policy, config.data.mixup, config.data.cutmix, config.data.random_erasing) == ("basic", 0, 0, 0)
    assert config.train.ema == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"augment_policy": "trivial"}, "--augment-policy trivial: choose one of basic, randaugment, augmix"),
        ({"randaugment_magnitude": 1.5}, "--randaugment-magnitude 1.5"),
        ({"randaugment_ops": 0}, "--randaugment-ops 0"),
        ({"mixup": -0.2}, "--mixup -0.2"),
        ({"random_erasing": 2.0}, "--random-erasing 2.0: a probability"),
    ],
)
def test_bad_recipe_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        DataConfig(**settings).validate()
    with pytest.raises(UserError, match=re.escape("--ema 1.0")):
        TrainConfig(ema=1.0).validate()


def test_augment_policy_turns_augmentation_on_unless_no_augment_was_given_and_every_flag_shows_its_default() -> None:
    from inat_keras.cli.finetune import make_parser as finetune_parser
    from inat_keras.cli.train_scratch import make_parser as scratch_parser

    parser = scratch_parser()
    assert parser.parse_args(["--demo", "--augment-policy", "augmix"]).augment is True
    assert parser.parse_args(["--demo", "--no-augment", "--augment-policy", "augmix"]).augment is False
    for make in (scratch_parser, finetune_parser):
        helps = {action.dest: action.help for action in make()._actions}
        for dest in ("augment_policy", "randaugment_magnitude", "randaugment_ops", "mixup", "cutmix", "random_erasing", "ema"):
            assert "(default: " in helps[dest], dest
    assert list(BACKBONES)[-3:] == ["convnext_tiny", "convnext_small", "convnext_base"]


def test_the_recipes_are_searchable_from_a_search_space_file(tmp_path: Path) -> None:
    from inat_keras.search.space import resolve_space, trial_config

    space_file = tmp_path / "space.json"
    space_file.write_text(
        json.dumps(
            {
                "augment_policy": ["basic", "randaugment", "augmix"],
                "randaugment_magnitude": {"min": 0.1, "max": 0.9},
                "mixup": [0.0, 0.2],
                "cutmix": [0.0, 1.0],
                "random_erasing": [0.0, 0.25],
                "ema": [0.0, 0.99],
                "backbone": ["convnext_tiny", "efficientnetv2m"],
            }
        )
    )
    space = resolve_space("transfer", str(space_file))
    assert space["augment_policy"] == ["basic", "randaugment", "augmix"] and space["ema"] == [0.0, 0.99]
    base = RunConfig(name="s", kind="transfer", model={"backbone": "mobilenetv2"})
    values = {"augment_policy": "augmix", "randaugment_magnitude": 0.3, "mixup": 0.2, "cutmix": 1.0, "ema": 0.99}
    config = trial_config(base, {**values, "random_erasing": 0.25, "backbone": "convnext_tiny"})
    assert (config.data.augment_policy, config.data.randaugment_magnitude, config.data.mixup) == ("augmix", 0.3, 0.2)
    assert (config.data.cutmix, config.data.random_erasing, config.train.ema) == (1.0, 0.25, 0.99)
    assert config.model["backbone"] == "convnext_tiny"
    space_file.write_text(json.dumps({"augment_policy": ["cutout"]}))
    with pytest.raises(UserError, match="augment_policy: 'cutout' choose among basic, randaugment, augmix"):
        resolve_space("scratch", str(space_file))


def test_ema_warns_when_the_model_trains_batch_normalisation_whose_statistics_keras_does_not_average() -> None:
    from inat_keras.training.runtime import ema_batch_norm_note

    config = RunConfig(name="r", train=TrainConfig(ema=0.99))
    assert ema_batch_norm_note(config, build_cnn(**SMALL_CNN, batch_norm=True)).startswith("--ema: Keras averages")
    assert ema_batch_norm_note(config, build_cnn(**SMALL_CNN, batch_norm=False)) == ""
    assert ema_batch_norm_note(RunConfig(name="r"), build_cnn(**SMALL_CNN, batch_norm=True)) == ""


# -- one run with every recipe: recorded, resumed, the averaged weights validated and kept -----------


def test_a_run_with_every_recipe_records_them_and_resumes_with_its_moving_average(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from inat_keras import runs
    from inat_keras.models.augment import load_model
    from inat_keras.training import checkpoints, loop, runtime, setup

    config = RunConfig(
        name="recipes",
        out=str(tmp_path / "runs"),
        data=DataConfig(
            data_dir=str(tiny_dataset),
            image_size=32,
            batch_size=8,
            augment=True,
            augment_policy="randaugment",
            augment_placement="model",
            random_erasing=0.25,
            mixup=0.2,
            cutmix=1.0,
        ),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(epochs=2, ema=0.9, label_smoothing=0.1, mixed_precision="off", jit_compile="off"),
        tracking=TrackingConfig(wandb="off"),
    )
    run = tmp_path / "runs" / "recipes"

    class Killed(Exception):
        pass

    original = checkpoints.EpochCheckpoint.save_epoch

    def save_then_die(checkpoint, epoch, logs=None):
        original(checkpoint, epoch, logs)
        raise Killed

    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", save_then_die)
    logged: list[str] = []
    with pytest.raises(Killed):
        loop.train_run(config, verbose=0, log=logged.append)
    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", original)
    assert any(line.startswith("MixUp or CutMix mixes each training batch") for line in logged)

    recorded = json.loads((run / "config.json").read_text())
    assert {key: recorded["data"][key] for key in ("augment_policy", "random_erasing", "mixup", "cutmix")} == {
        "augment_policy": "randaugment",
        "random_erasing": 0.25,
        "mixup": 0.2,
        "cutmix": 1.0,
    }
    assert recorded["train"]["ema"] == 0.9

    # The epoch's checkpoint: the average as the model's weights, the trained weights in the optimizer.
    checkpoint = load_model(run / "checkpoint" / "epoch-001.keras")
    optimizer = checkpoint.optimizer
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9) and int(optimizer.iterations) > 0
    averaged = [np.array(v) for v in optimizer._trainable_variables]
    trained = [np.array(v) for v in optimizer._model_variables_moving_average]
    assert any(not np.allclose(a, t) for a, t in zip(averaged, trained, strict=True))

    restored = []
    original_restore = runtime.restore_trained_weights

    def restore_and_look(model):
        original_restore(model)
        restored.append([np.array(v) for v in model.optimizer._trainable_variables])

    monkeypatch.setattr(setup, "restore_trained_weights", restore_and_look)
    result = loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=lambda message: None)
    assert result.metrics["epochs_run"] == 2
    for resumed_with, trained_weights in zip(restored[0], trained, strict=True):
        np.testing.assert_allclose(resumed_with, trained_weights, rtol=1e-6)  # training went on from its own weights

    # Validation ran on the averaged weights, the ones best.keras holds: its validation loss is the epoch's.
    from inat_keras.data import files, pipeline

    split = files.load_split(run, recorded["class_names"])
    validation = pipeline.make_dataset(split.validation, runs.load_run_config(run).data, 3, training=False)
    scores = load_model(run / "best.keras").evaluate(validation, verbose=0, return_dict=True)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    best_epoch = state["history"][state["best_epoch"] - 1]
    assert scores["loss"] == pytest.approx(best_epoch["val_loss"], rel=1e-4)
    assert scores["accuracy"] == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)


def test_the_recipes_benchmark_trains_each_variant_and_ends_with_its_figures(tiny_dataset: Path, capsys) -> None:
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    import recipes

    args = [
        "--data",
        str(tiny_dataset),
        "--variants",
        "basic",
        "cutmix",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--steps",
        "2",
        "--rounds",
        "1",
    ]
    assert recipes.main(args) == 0
    output = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" |")[0] for line in output if line.startswith(("| basic", "| cutmix"))] == [
        "| basic",
        "| cutmix",
    ]
    number = r"\d+\.\d+"
    pattern = " ".join(
        f"{variant}_test_accuracy_mean={number} {variant}_test_accuracy_std={number} {variant}_images_per_second={number}"
        for variant in ("basic", "cutmix")
    )
    assert re.fullmatch(pattern, output[-1]), output[-1]
