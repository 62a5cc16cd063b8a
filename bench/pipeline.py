"""Images per second of this project's input pipeline against Keras's folder loader.

Both read the same generated folder of photo-like JPEGs, 500-800 px on the long side like
iNaturalist's, and deliver float32 batches at ``--image-size``:

- ours: ``inat_keras.data.make_dataset`` (Pillow decodes at a reduced DCT scale, resizes, and the
  resized uint8 images are cached, so later epochs never decode again);
- baseline: ``keras.utils.image_dataset_from_directory(image_size=...)`` (full-size decode and
  bilinear resize every epoch) with ``prefetch``, as a careful user would write it.

The first epoch measures decoding, the later ones the cache. The last line is
``pipeline_speedup_first_epoch=X pipeline_speedup_later_epochs=Y``.

    python bench/pipeline.py --images 400 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def photo_like(rng: np.random.Generator, long_side: int) -> np.ndarray:
    """Gradients, soft blobs and multi-scale texture, like foliage or fur.

    Saved at JPEG quality 90 they take about 0.6 bytes per pixel, as iNaturalist-12K's photos
    do (3.6 GB for 12,000 images): the entropy decoding cost, not only the pixel count, is real.
    """
    portrait = rng.random() < 0.3
    short_side = int(long_side * rng.uniform(0.66, 0.8))
    height, width = (long_side, short_side) if portrait else (short_side, long_side)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        a, b, c = rng.uniform(-0.3, 0.3, 3)
        image[..., channel] = 128 + 70 * np.sin(a * x / 40 + b * y / 40 + c * 6)
    for _ in range(int(rng.integers(4, 10))):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, long_side / 4)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        image += blob * rng.uniform(-100, 100, 3)
    for cell in (16, 4, 1):  # coarse to fine detail, upsampled by repetition
        noise = rng.normal(0, 14, (height // cell + 1, width // cell + 1, 1)).astype(np.float32)
        image += np.repeat(np.repeat(noise, cell, 0), cell, 1)[:height, :width]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root: Path, count: int, num_classes: int, seed: int = 0) -> Path:
    """``root/class_k/img_i.jpg``; reused when it already holds ``count`` images."""
    from PIL import Image

    if len(list(root.glob("class_*/*.jpg"))) == count:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = photo_like(rng, int(rng.integers(500, 801)))
        Image.fromarray(pixels).save(folder / f"img_{i:05d}.jpg", quality=90)
    return root


def time_epochs(dataset, epochs: int) -> list[tuple[int, float]]:
    """(images, seconds) per full pass over ``dataset``."""
    passes = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
        passes.append((images, time.perf_counter() - start))
    return passes


def ours(root: Path, image_size: int, batch_size: int, num_classes: int):
    from inat_keras.config import DataConfig
    from inat_keras.data import LabelledFiles, list_class_images, make_dataset

    paths, labels = [], []
    for label, files in enumerate(list_class_images(root).values()):
        paths += files
        labels += [label] * len(files)
    config = DataConfig(image_size=image_size, batch_size=batch_size, cache="memory")
    return make_dataset(LabelledFiles(paths, labels), config, num_classes, training=True)


def baseline(root: Path, image_size: int, batch_size: int):
    import keras
    import tensorflow as tf

    dataset = keras.utils.image_dataset_from_directory(
        root, image_size=(image_size, image_size), batch_size=batch_size, label_mode="categorical", seed=0, verbose=False
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def throughput(passes: list[tuple[int, float]]) -> tuple[float, float]:
    """Images per second in the first epoch, and over the later ones together."""
    first = passes[0][0] / passes[0][1]
    later = sum(n for n, _ in passes[1:]) / sum(s for _, s in passes[1:])
    return first, later


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="generated JPEGs (default 400: about a minute on 2 cores)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data; the first decodes (at least 2)")
    parser.add_argument("--folder", type=Path, help="keep the generated JPEGs here and reuse them (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch decodes, the later ones read the cache")

    scratch = None if args.folder else Path(tempfile.mkdtemp(prefix="inat-bench-"))
    root = args.folder or scratch / "images"
    try:
        start = time.perf_counter()
        write_folder(root, args.images, args.classes)
        print(f"{args.images} JPEGs, 500-800 px long side, in {root} ({time.perf_counter() - start:.1f} s to prepare)")
        results = {
            "baseline (image_dataset_from_directory)": throughput(
                time_epochs(baseline(root, args.image_size, args.batch_size), args.epochs)
            ),
            "inat_keras.data.make_dataset": throughput(
                time_epochs(ours(root, args.image_size, args.batch_size, args.classes), args.epochs)
            ),
        }
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nimages/s at {args.image_size}x{args.image_size}, batch {args.batch_size}, {os.cpu_count()} CPU cores")
    print(f"{'pipeline':<42}{'first epoch':>14}{'later epochs':>14}")
    for name, (first, later) in results.items():
        print(f"{name:<42}{first:>14.1f}{later:>14.1f}")
    (base_first, base_later), (our_first, our_later) = results.values()
    print(f"pipeline_speedup_first_epoch={our_first / base_first:.2f} pipeline_speedup_later_epochs={our_later / base_later:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
