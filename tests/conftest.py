"""Shared fixtures: small generated image folders in the iNaturalist layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


def write_class_images(folder: Path, label: int, count: int, size: tuple[int, int], rng, fmt: str = "png") -> None:
    """Images whose colour and stripe direction depend on the label, so a tiny CNN can learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(count):
        base = np.zeros((height, width, 3), dtype=np.float32)
        base[..., label % 3] = 200
        stripes = (np.arange(width if label % 2 else height) // 4) % 2 * 55
        base += stripes[None, :, None] if label % 2 else stripes[:, None, None]
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img_{i:03d}.{fmt}")


def make_dataset_root(
    root: Path,
    *,
    num_classes: int = 3,
    train_per_class: int = 8,
    val_per_class: int = 4,
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        name = f"class_{chr(ord('a') + label)}"
        write_class_images(root / "train" / name, label, train_per_class, size, rng)
        write_class_images(root / "val" / name, label, val_per_class, size, rng, fmt="jpg")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """3 classes, 8 train and 4 val images each, 40x30 PNG (train) and JPEG (val)."""
    return make_dataset_root(tmp_path / "data")


@pytest.fixture
def offline_keras(tmp_path: Path, monkeypatch) -> None:
    """Keras's downloads fail as they do without a network, and no weights are cached: what a user offline meets."""
    import urllib.error

    from keras.src.utils import file_utils

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> None:
    """Keep the demo cache and W&B files out of the user's home."""
    home = tmp_path_factory.getbasetemp() / "inat_keras_home"
    monkeypatch.setenv("INAT_KERAS_HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="session")
def scratch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class scratch run trained once per test process (see trained_runs.py)."""
    from trained_runs import train_tiny_scratch_run

    return train_tiny_scratch_run(tmp_path_factory.mktemp("scratch-run"))


@pytest.fixture(scope="session")
def transfer_run(tmp_path_factory: pytest.TempPathFactory, scratch_run: Path) -> Path:
    """An untrained MobileNetV2 transfer run (weights=None) sharing the scratch run's test split."""
    from trained_runs import make_tiny_transfer_run

    return make_tiny_transfer_run(tmp_path_factory.mktemp("transfer-run"), scratch_run)
