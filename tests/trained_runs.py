"""The tiny trained runs behind conftest's ``scratch_run`` and ``transfer_run`` session fixtures,
shared by the evaluate, predict, explain and export tests."""

from __future__ import annotations

from pathlib import Path

from conftest import make_dataset_root

NUM_CLASSES = 10
TEST_PER_CLASS = 3


def train_tiny_scratch_run(base: Path) -> Path:
    """10 classes, 4 train and 3 test images each, 32x32, a 5-block CNN (4 to 64 filters) trained 6 epochs."""
    from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
    from inat_keras.training.loop import train_run

    data = make_dataset_root(
        base / "data", num_classes=NUM_CLASSES, train_per_class=4, val_per_class=TEST_PER_CLASS, size=(32, 32)
    )
    config = RunConfig(
        name="tiny",
        kind="scratch",
        out=str(base / "runs"),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=16),
        model={
            "num_blocks": 5,
            "first_filters": 4,
            "filter_organisation": 2.0,
            "dense_units": [16],
            "batch_norm_momentum": 0.9,
        },
        train=TrainConfig(epochs=6, learning_rate=3e-3, mixed_precision="off", jit_compile="off"),
        tracking=TrackingConfig(wandb="off"),
    )
    return train_run(config, verbose=0, log=lambda message: None).run_dir


def make_tiny_transfer_run(base: Path, scratch: Path) -> Path:
    """An untrained MobileNetV2 transfer model (weights=None) as a run directory sharing the scratch
    run's test split: evaluate and explain need only best.keras, config.json and split.csv.
    64 px, not 32: MobileNetV2 divides by 32, and a 1x1 last feature map gives a constant Grad-CAM."""
    import shutil

    from inat_keras.config import DataConfig, RunConfig
    from inat_keras.models.transfer import build_transfer
    from inat_keras.storage import read_json, write_json

    class_names = read_json(scratch / "config.json")["class_names"]
    run_dir = base / "runs" / "mobilenetv2"
    run_dir.mkdir(parents=True)
    model = build_transfer("mobilenetv2", len(class_names), weights=None, input_size=64)
    calibrate_batch_norm(model, split_test_images(scratch)[0])
    model.save(run_dir / "best.keras")
    config = RunConfig(
        name="mobilenetv2",
        kind="transfer",
        out=str(base / "runs"),
        data=DataConfig(image_size=64),
        model={"backbone": "mobilenetv2", "weights": None},
    )
    write_json(run_dir / "config.json", {**config.to_dict(), "class_names": class_names})
    shutil.copy(scratch / "split.csv", run_dir / "split.csv")
    return run_dir


def calibrate_batch_norm(model, paths: list[str]) -> None:
    """Set every BatchNormalization's moving statistics to those of ``paths`` in one pass.

    Without ImageNet weights the moving statistics are the initial 0 and 1, and 50 layers of
    MobileNetV2 shrink the activations to ~1e-13: every gradient and Grad-CAM would be zero.
    """
    import keras
    import numpy as np

    from inat_keras.data.decode import load_image

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    images = np.stack([load_image(path, int(model.input_shape[1])) for path in paths]).astype("float32")
    model(images, training=True)
    for layer in norms:
        layer.trainable, layer.momentum = False, 0.99


def split_test_images(run_dir: Path) -> tuple[list[str], list[str]]:
    """(paths, class names) of a run's test split, in split.csv order."""
    from inat_keras.storage import read_csv

    rows = [row for row in read_csv(run_dir / "split.csv") if row["subset"] == "test"]
    return [row["path"] for row in rows], [row["label"] for row in rows]
