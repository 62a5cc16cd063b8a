"""The embedded demo dataset: scikit-learn's 1,797 real handwritten digits as image files.

Written once, in the iNaturalist layout (``train/<digit>/``, ``val/<digit>/``), so the
demo runs through exactly the same file-based pipeline as the real data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_NAME = "digits-v1"
DEMO_TEST_FRACTION = 0.2
DEMO_SEED = 0


def cache_home() -> Path:
    """``$INAT_KERAS_HOME``, else ``~/.cache/inat_keras``."""
    return Path(os.environ.get("INAT_KERAS_HOME") or Path.home() / ".cache" / "inat_keras")


def write_digits_dataset(dest: str | os.PathLike) -> Path:
    """Write the digits as 8x8 grayscale PNGs, split about 80/20 by class, into ``dest``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16 ink counts; stretch them to the 0..255 of an ordinary image.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(indices, test_size=DEMO_TEST_FRACTION, stratify=digits.target, random_state=DEMO_SEED)
    dest = Path(dest)
    for subset, subset_idx in (("train", train_idx), ("val", test_idx)):
        for i in sorted(subset_idx):
            folder = dest / subset / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"digit_{i:04d}.png")
    return dest


def demo_dataset_dir() -> Path:
    """The demo dataset folder, written on first use (atomically: a killed write leaves nothing)."""
    target = cache_home() / DEMO_NAME
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEMO_NAME}."))
    try:
        write_digits_dataset(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # another process may have won the race
            raise
    return target
