"""--augment-placement: augmentation in the tf.data pipeline (CPU) or as the model's first layers (GPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.data.files import make_split
from inat_keras.data.pipeline import make_dataset
from inat_keras.errors import UserError
from inat_keras.models.augment import AUGMENT_PREFIX, augmentation_layers, resolve_augment_placement
from inat_keras.models.cnn import build_cnn, count_params

SMALL_CNN = {"num_classes": 3, "input_size": 32, "num_blocks": 2, "first_filters": 4, "dense_units": [8]}


def pixels(count: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")


def test_augmentation_layers_in_the_model_change_training_inputs_only() -> None:
    # No dropout or BatchNorm: the augmentation is the only thing training=True changes.
    plain = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0)
    augmented = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0, augmentation=augmentation_layers(seed=0))
    augmented.set_weights(plain.get_weights())

    names = [layer.name for layer in augmented.layers]
    assert [n for n in names if n.startswith(AUGMENT_PREFIX)] == names[1:4]  # right after the input
    assert not any(isinstance(layer, keras.Model) for layer in augmented.layers)  # still one flat graph
    assert augmented.count_params() == count_params(**SMALL_CNN, batch_norm=False)

    images = pixels(4)
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-6)
    training_outputs = np.asarray(augmented(images, training=True))
    assert not np.allclose(training_outputs, np.asarray(plain(images, training=True)), atol=1e-4)


def test_the_augmentation_compiles_with_xla_where_keras_own_warps_cannot(monkeypatch) -> None:
    from inat_keras import devices
    from inat_keras.training import runtime

    augmented = build_cnn(**SMALL_CNN, augmentation=augmentation_layers(seed=0))
    keras_warps = build_cnn(
        **SMALL_CNN, augmentation=[keras.layers.RandomZoom(0.2, name="zoom"), keras.layers.RandomRotation(0.1, name="turn")]
    )
    assert runtime.xla_blockers(augmented) == []
    assert runtime.xla_blockers(keras_warps) == ["zoom", "turn"]

    monkeypatch.setattr(devices, "gpu_available", lambda: True)
    assert runtime.resolve_jit("auto", augmented) is True
    assert runtime.resolve_jit("auto", keras_warps) is False
    assert runtime.resolve_jit("off", augmented) is False
    with pytest.raises(UserError, match="--jit-compile on: XLA cannot compile the layers zoom, turn"):
        runtime.resolve_jit("on", keras_warps)

    # Why: Keras drops XLA for a model with its own warps, with only a warning...
    with pytest.warns(UserWarning, match="jit_compile"):
        keras_warps.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    assert keras_warps.jit_compile is False
    # ...while this project's augmentation compiles into the XLA train step, and trains.
    augmented.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    assert augmented.jit_compile is True
    assert np.isfinite(augmented.train_on_batch(pixels(4), np.eye(3, dtype="float32")[[0, 1, 2, 0]]))


def test_model_placement_leaves_the_pipeline_unaugmented(tiny_dataset: Path) -> None:
    config = DataConfig(data_dir=str(tiny_dataset), image_size=32, batch_size=64, augment=True, seed=1)
    split = make_split(config)

    def first_batch(data: DataConfig) -> np.ndarray:
        return next(iter(make_dataset(split.train, data, 3, training=True)))[0].numpy()

    unaugmented = first_batch(dataclasses.replace(config, augment=False))
    np.testing.assert_array_equal(first_batch(dataclasses.replace(config, augment_placement="model")), unaugmented)
    assert not np.array_equal(first_batch(dataclasses.replace(config, augment_placement="pipeline")), unaugmented)


def test_auto_placement_follows_the_gpu(monkeypatch) -> None:
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert resolve_augment_placement("auto") == "pipeline"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert resolve_augment_placement("auto") == "model"
    assert resolve_augment_placement("pipeline") == "pipeline"
    with pytest.raises(UserError, match="--augment-placement gpu: choose one of auto, pipeline, model"):
        resolve_augment_placement("gpu")


def train_tiny_run(dataset: Path, out: Path, name: str, jit_compile: str = "off", **data: str) -> Path:
    """One epoch of a 2-block CNN with --augment; ``data`` sets more DataConfig fields."""
    from inat_keras.training.loop import train_run

    config = RunConfig(
        name=name,
        kind="scratch",
        out=str(out),
        data=DataConfig(data_dir=str(dataset), image_size=32, batch_size=16, augment=True, **data),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(epochs=1, mixed_precision="off", jit_compile=jit_compile),
        tracking=TrackingConfig(wandb="off"),
    )
    return train_run(config, verbose=0, log=lambda message: None).run_dir


def test_a_run_augmenting_in_the_model_records_it_and_exports_without_the_random_layers(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained
    from inat_keras.storage import read_json

    run_dir = train_tiny_run(tiny_dataset, tmp_path / "runs", "augmented", augment_placement="model")
    assert read_json(run_dir / "config.json")["data"]["augment_placement"] == "model"
    trained = load_trained(run_dir)
    assert any(layer.name.startswith(AUGMENT_PREFIX) for layer in trained.model.layers)

    # ONNX has no converter for the random ops these layers leave in a traced graph.
    result = export_model(trained, "onnx", tmp_path / "export")
    assert result["max_abs_difference"] < 1e-4 and result["same_top1"]


@pytest.mark.slow
def test_a_gpu_run_augmenting_in_the_model_trains_with_xla_and_records_it(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from inat_keras import devices
    from inat_keras.storage import read_json

    monkeypatch.setattr(devices, "gpu_available", lambda: True)  # --jit-compile auto then asks for XLA (here on the CPU)
    run_dir = train_tiny_run(tiny_dataset, tmp_path / "runs", "in-model", jit_compile="auto", augment_placement="model")
    assert read_json(run_dir / "metrics.json")["jit_compile"] is True  # what Keras really compiled with
    off = train_tiny_run(tiny_dataset, tmp_path / "runs", "off", jit_compile="off", augment_placement="model")
    assert read_json(off / "metrics.json")["jit_compile"] is False


def test_auto_placement_is_recorded_resolved_so_a_resume_augments_in_the_same_place(tiny_dataset: Path, tmp_path: Path) -> None:
    from inat_keras.storage import read_json

    run_dir = train_tiny_run(tiny_dataset, tmp_path / "runs", "auto")
    recorded = read_json(run_dir / "config.json")["data"]["augment_placement"]
    assert recorded == resolve_augment_placement("auto") and recorded != "auto"


def test_transfer_backbone_layers_exclude_the_augmentation() -> None:
    from inat_keras.models.transfer import backbone_layers, build_transfer

    model = build_transfer(
        "mobilenetv2", 3, weights=None, unfreeze="all", input_size=32, augmentation=augmentation_layers(seed=0)
    )
    assert not any(layer.name.startswith(AUGMENT_PREFIX) for layer in backbone_layers(model))
    assert sum(layer.name.startswith(AUGMENT_PREFIX) for layer in model.layers) == 3
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
