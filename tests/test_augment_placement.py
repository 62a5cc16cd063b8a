"""--augment-placement: augmentation in the tf.data pipeline (CPU) or as the model's first layers (GPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.data import AUGMENT_PREFIX, augmentation_layers, make_dataset, make_split, resolve_augment_placement
from inat_keras.errors import UserError
from inat_keras.models import build_cnn, count_params

SMALL_CNN = {"num_classes": 3, "input_size": 32, "num_blocks": 2, "first_filters": 4, "dense_units": [8]}


def pixels(count: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")


def test_augmentation_layers_in_the_model_change_training_inputs_only() -> None:
    # No dropout or BatchNorm: the augmentation is the only thing training=True changes.
    plain = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0)
    augmented = build_cnn(**SMALL_CNN, batch_norm=False, dense_dropout=0.0, augmentation=augmentation_layers(seed=0))
    augmented.set_weights(plain.get_weights())

    names = [layer.name for layer in augmented.layers]
    assert [n for n in names if n.startswith(AUGMENT_PREFIX)] == names[1:6]  # right after the input
    assert not any(isinstance(layer, keras.Model) for layer in augmented.layers)  # still one flat graph
    assert augmented.count_params() == count_params(**SMALL_CNN, batch_norm=False)

    images = pixels(4)
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-6)
    training_outputs = np.asarray(augmented(images, training=True))
    assert not np.allclose(training_outputs, np.asarray(plain(images, training=True)), atol=1e-4)


def test_xla_is_chosen_only_for_models_it_can_compile(monkeypatch) -> None:
    from inat_keras import training

    augmented = build_cnn(**SMALL_CNN, augmentation=augmentation_layers(seed=0))
    plain = build_cnn(**SMALL_CNN)
    assert training.xla_blockers(augmented) == ["augment_zoom", "augment_translation", "augment_rotation"]
    assert training.xla_blockers(plain) == []

    monkeypatch.setattr(training, "gpu_available", lambda: True)
    assert training.resolve_jit("auto", plain) is True
    assert training.resolve_jit("auto", augmented) is False
    assert training.resolve_jit("off", plain) is False
    with pytest.raises(UserError, match=r"--jit-compile on: XLA cannot compile augment_zoom, augment_translation, "
                                        r"augment_rotation .*--augment-placement pipeline"):
        training.resolve_jit("on", augmented)

    # Why: Keras itself drops XLA for the augmented model, with only a warning...
    with pytest.warns(UserWarning, match="jit_compile"):
        augmented.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    assert augmented.jit_compile is False
    # ...while the plain model compiles its train step with XLA.
    plain.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    assert plain.jit_compile is True
    assert np.isfinite(plain.train_on_batch(pixels(4), np.eye(3, dtype="float32")[[0, 1, 2, 0]]))


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
    from inat_keras.training import train_run

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
    from inat_keras.export import export_model
    from inat_keras.io import read_json
    from inat_keras.runs import load_trained

    run_dir = train_tiny_run(tiny_dataset, tmp_path / "runs", "augmented", augment_placement="model")
    assert read_json(run_dir / "config.json")["data"]["augment_placement"] == "model"
    trained = load_trained(run_dir)
    assert any(layer.name.startswith(AUGMENT_PREFIX) for layer in trained.model.layers)

    # ONNX has no converter for the random ops these layers leave in a traced graph.
    result = export_model(trained, "onnx", tmp_path / "export")
    assert result["max_abs_difference"] < 1e-4 and result["same_top1"]


def test_metrics_record_whether_xla_really_compiled_the_training(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from inat_keras import training
    from inat_keras.io import read_json

    monkeypatch.setattr(training, "gpu_available", lambda: True)  # --jit-compile auto then asks for XLA
    runs = tmp_path / "runs"
    in_model = train_tiny_run(tiny_dataset, runs, "in-model", jit_compile="auto", augment_placement="model")
    in_pipeline = train_tiny_run(tiny_dataset, runs, "in-pipeline", jit_compile="auto", augment_placement="pipeline")
    assert read_json(in_model / "metrics.json")["jit_compile"] is False
    assert read_json(in_pipeline / "metrics.json")["jit_compile"] is True
    with pytest.raises(UserError, match="--jit-compile on: XLA cannot compile augment_zoom, augment_translation"):
        train_tiny_run(tiny_dataset, runs, "refused", jit_compile="on", augment_placement="model")
    assert not (runs / "refused").exists()  # refused before any file is written: the same --name works once fixed


def test_a_search_that_may_augment_in_the_model_refuses_jit_compile_on_before_any_trial() -> None:
    from inat_keras.search import check_space_fits

    base = RunConfig(
        name="search",
        data=DataConfig(image_size=32, augment_placement="model"),
        model={"num_blocks": 2},
        train=TrainConfig(jit_compile="on"),
    )
    check_space_fits(base, {"augment": [False]}, num_classes=3)
    with pytest.raises(UserError, match="--jit-compile on: XLA cannot compile"):
        check_space_fits(base, {"augment": [True, False]}, num_classes=3)
    base.data.augment_placement = "pipeline"
    check_space_fits(base, {"augment": [True, False]}, num_classes=3)


def test_auto_placement_is_recorded_resolved_so_a_resume_augments_in_the_same_place(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from inat_keras.io import read_json

    run_dir = train_tiny_run(tiny_dataset, tmp_path / "runs", "auto")
    recorded = read_json(run_dir / "config.json")["data"]["augment_placement"]
    assert recorded == resolve_augment_placement("auto") and recorded != "auto"


def test_transfer_backbone_layers_exclude_the_augmentation() -> None:
    from inat_keras.transfer import backbone_layers, build_transfer

    model = build_transfer(
        "mobilenetv2", 3, weights=None, unfreeze="all", input_size=32, augmentation=augmentation_layers(seed=0)
    )
    assert not any(layer.name.startswith(AUGMENT_PREFIX) for layer in backbone_layers(model))
    assert sum(layer.name.startswith(AUGMENT_PREFIX) for layer in model.layers) == 5
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
