"""Images per second of this project's input pipeline against Keras's folder loader.

All read the same generated folder of photo-like JPEGs, 500-800 px on the long side like
iNaturalist's, and deliver batches at ``--image-size``:

- ours: ``inat_keras.data.make_dataset`` (TensorFlow's decoder reads plain JPEGs at a reduced DCT
  scale in tf.data's parallel map, without the GIL, and area-averages them to the target size; other
  files go through Pillow; the images are stored in one uint8 array, so later epochs only gather). Its
  batches are uint8, which the model casts; "ours, float32" casts them in the pipeline instead. It is
  endless and keeps one iterator for the run, as ``fit(steps_per_epoch=...)`` does;
- baseline: ``keras.utils.image_dataset_from_directory(image_size=...)`` (full-size decode and
  bilinear resize every epoch) with ``prefetch``, as keras-io's examples use it (float32);
- strong recipe: the same loader with ``batch_size=None``, then ``.cache().shuffle(N,
  reshuffle_each_iteration=True).batch(32).prefetch(AUTOTUNE)``, as the tf.data performance guide
  teaches (its cache holds float32 images); and the same with ``.repeat()`` and one iterator.

The first epoch measures building the dataset and decoding, the later ones the cache. Each pipeline is measured ``--rounds``
times, alternating, and the medians are reported, since a shared machine's speed drifts. The bench
also times one core's work per image, including the reduced-scale JPEG decode alone: entropy decoding
costs the same at any output scale, so that bounds the first-epoch speed-up any libjpeg-turbo
pipeline can reach; and it gives each pipeline's image quality, as PSNR against a Lanczos resize of the
full-size decode. It also times the first batch, and measures each pipeline's peak memory (the
growth of its process's peak RSS over two epochs, each pipeline alone in a subprocess) at two
dataset sizes: the difference per extra image is its cost per image; those runs also give images/s and
the first batch at both sizes, so a reader sees how the cost grows with the work. The last line is
``pipeline_speedup_first_epoch=X pipeline_speedup_later_epochs=Y later_vs_strong_recipe=Z
bytes_per_image=B first_batch_seconds=S`` (speed-ups against the keras-io default; B and S ours).

    python bench/pipeline.py --images 400 --epochs 3 --memory-images 400,1600
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

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


def time_epochs(build, epochs: int, first_batch: list[float] | None = None) -> list[tuple[int, float, float]]:
    """(images, wall seconds, CPU seconds of this process) per full pass over the dataset ``build()`` makes.

    ``build()`` returns (dataset, batches per epoch). The first pass's clock starts before ``build()``:
    listing the folder and building the pipeline are first-epoch work too. Each pass
    takes exactly the epoch's batches, as Keras's ``fit`` does, and never asks for one more. A finite
    dataset gets a new iterator each pass, as ``fit`` gives it, and each pass's iterator is deleted off the
    clock; an endless one (ours, and the repeated strong recipe) keeps one iterator for every pass, as
    ``fit(steps_per_epoch=...)`` does. ``first_batch`` gets the seconds from ``build()`` to the first batch.
    """
    passes = []
    start, cpu_start = time.perf_counter(), time.process_time()
    dataset, batches = build()
    endless = int(dataset.cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
    iterator = iter(dataset) if endless else None
    for _ in range(epochs):
        images = 0
        if not endless:
            iterator = iter(dataset)
        for _ in range(batches):
            batch, _ = next(iterator)
            images += int(batch.shape[0])
            if first_batch is not None and not passes and images == int(batch.shape[0]):
                first_batch.append(time.perf_counter() - start)
        passes.append((images, time.perf_counter() - start, time.process_time() - cpu_start))
        if not endless:
            del iterator  # outside the next pass's clock
        start, cpu_start = time.perf_counter(), time.process_time()
    return passes


def ours(root: Path, image_size: int, batch_size: int, num_classes: int, *, as_float: bool = False):
    import tensorflow as tf

    from inat_keras.config import DataConfig
    from inat_keras.data.files import LabelledFiles, list_class_images
    from inat_keras.data.pipeline import epoch_batches, make_dataset

    paths, labels = [], []
    for label, files in enumerate(list_class_images(root).values()):
        paths += files
        labels += [label] * len(files)
    config = DataConfig(image_size=image_size, batch_size=batch_size, cache="memory")
    dataset = make_dataset(LabelledFiles(paths, labels), config, num_classes, training=True)
    if as_float:  # the cast the model does on its device, done in the pipeline instead (CPU training pays it either way)
        dataset = dataset.map(lambda images, onehot: (tf.cast(images, tf.float32), onehot), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, epoch_batches(len(paths), batch_size)


def baseline(root: Path, image_size: int, batch_size: int):
    import keras
    import tensorflow as tf

    dataset = keras.utils.image_dataset_from_directory(
        root, image_size=(image_size, image_size), batch_size=batch_size, label_mode="categorical", seed=0, verbose=False
    )
    return dataset.prefetch(tf.data.AUTOTUNE), int(dataset.cardinality())


def strong_recipe(root: Path, image_size: int, batch_size: int, *, repeat: bool = False):
    """The tf.data guide's recipe: decode once into a float32 cache, a full-size shuffle buffer, batch, prefetch.

    ``repeat``: the same with ``.repeat()`` before ``.batch``, for ``fit(steps_per_epoch=...)``: one iterator for
    the run, as ours keeps, so no epoch restarts the pipeline.
    """
    import keras
    import tensorflow as tf

    from inat_keras.data.pipeline import epoch_batches

    dataset = keras.utils.image_dataset_from_directory(
        root, image_size=(image_size, image_size), batch_size=None, label_mode="categorical", seed=0, verbose=False
    )
    count = int(dataset.cardinality())
    dataset = dataset.cache().shuffle(count, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), epoch_batches(count, batch_size)


PIPELINES = ("baseline", "strong", "strong_repeat", "ours", "ours_float")
MEMORY_PIPELINES = ("baseline", "strong", "ours")  # the variants hold the same data as their originals


def build_pipeline(name: str, root: Path, image_size: int, batch_size: int, num_classes: int):
    """(dataset, batches per epoch) of pipeline ``name``."""
    if name == "baseline":
        return baseline(root, image_size, batch_size)
    if name.startswith("strong"):
        return strong_recipe(root, image_size, batch_size, repeat=name == "strong_repeat")
    return ours(root, image_size, batch_size, num_classes, as_float=name == "ours_float")


def rss_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(name: str, root: Path, image_size: int, batch_size: int, num_classes: int) -> dict[str, float]:
    """(In a child process) how far the peak RSS rises above the resident size while ``name`` builds and serves two
    epochs, with those epochs' images/s and the seconds to the first batch."""
    sizes = (image_size, batch_size, num_classes)
    # The runtime's own memory before the mark: TensorFlow's first pipelines allocate a fixed few hundred MB
    # (thread pools, allocator arenas) that would hide a small dataset's growth under the same peak.
    with tempfile.TemporaryDirectory() as warm_up:
        time_epochs(lambda: build_pipeline(name, subset_folder(root, Path(warm_up) / "w", 2 * num_classes), *sizes), 2)
    # Then the peak restarts from the resident size (writing 5 to clear_refs resets VmHWM).
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_bytes("VmRSS")
    first_batch: list[float] = []
    passes = time_epochs(lambda: build_pipeline(name, root, *sizes), 2, first_batch)
    growth = rss_bytes("VmHWM") - before
    (first_images, first_wall, _), (later_images, later_wall, _) = passes
    return {
        "bytes": growth,
        "first_epoch": first_images / first_wall,
        "later_epoch": later_images / later_wall,
        "first_batch": first_batch[0],
        "first_epoch_seconds": first_wall,
    }


def memory_growth(name: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """``measure_memory`` in a fresh process, so no other pipeline's memory counts."""
    command = [sys.executable, __file__, "--memory-child", name, "--folder", str(root), "--image-size", str(args.image_size)]
    command += ["--batch-size", str(args.batch_size), "--classes", str(args.classes)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def subset_folder(source: Path, target: Path, count: int) -> Path:
    """``target`` with links to the first ``count`` images of ``source``, in their classes."""
    shutil.rmtree(target, ignore_errors=True)
    for path in sample_paths(source, count):
        link = target / Path(path).parent.name / Path(path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return target


@dataclass
class Measured:
    first: list[float] = field(default_factory=list)  # images/s of each round's first epoch
    later: list[float] = field(default_factory=list)  # images/s of each round's later epochs together
    first_cpu_ms: list[float] = field(default_factory=list)  # CPU milliseconds per image, first epoch
    first_batch: list[float] = field(default_factory=list)  # seconds from building the dataset to its first batch

    def add(self, passes: list[tuple[int, float, float]]) -> None:
        images, wall, cpu = passes[0]
        self.first.append(images / wall)
        self.first_cpu_ms.append(1000 * cpu / images)
        self.later.append(sum(p[0] for p in passes[1:]) / sum(p[1] for p in passes[1:]))


def sample_paths(root: Path, count: int) -> list[str]:
    return sorted(str(p) for p in root.glob("class_*/*.jpg"))[:count]


def baseline_image(path: str, image_size: int):
    """One image as the baseline makes it: full-size decode, bilinear resize without antialiasing, float32."""
    import tensorflow as tf

    return tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), (image_size, image_size))


def per_image_ms(paths: list[str], decode) -> float:
    """Single-thread milliseconds per image of ``decode(path)``, the best of three passes."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for path in paths:
            decode(path)
        best = min(best, (time.process_time() - start) / len(paths))
    return 1000 * best


def decode_floor(root: Path, image_size: int, count: int = 100) -> dict[str, float]:
    """What one image costs one core, eagerly: the baseline's work, ours, and the decode no JPEG path avoids.

    libjpeg-turbo entropy-decodes every coefficient of the file whatever the output scale; a reduced DCT
    scale only saves the inverse transform and colour conversion. So the baseline's CPU cost per image
    in tf.data over the reduced-scale decode alone bounds the first-epoch speed-up any JPEG pipeline can
    reach on the same cores.
    """
    from PIL import Image

    from inat_keras.data.decode import HEADER_BYTES, load_image, native_jpeg_header

    def reduced_scale_decode(path: str):
        with Image.open(path) as image:
            image.draft("RGB", (image_size, image_size))
            image.load()

    paths = sample_paths(root, count)
    heads = {path: Path(path).read_bytes()[:HEADER_BYTES] for path in paths}
    return {
        "baseline decode + resize": per_image_ms(paths, lambda path: baseline_image(path, image_size)),
        "ours (load_image)": per_image_ms(paths, lambda path: load_image(path, image_size)),
        # The only Python, so the only GIL time, our pipeline spends on a plain JPEG, in its parallel map.
        "ours: header check (Python, holds the GIL)": per_image_ms(paths, lambda path: native_jpeg_header(heads[path])),
        "reduced-scale decode alone": per_image_ms(paths, reduced_scale_decode),
    }


def resize_quality(root: Path, image_size: int, count: int = 50) -> dict[str, float]:
    """Mean PSNR (dB) of each pipeline's images against a Lanczos resize of the full-size decode."""
    from PIL import Image

    from inat_keras.data.decode import load_image

    def psnr(reference: np.ndarray, image: np.ndarray) -> float:
        mse = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
        return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))

    scores: dict[str, list[float]] = {"baseline": [], "ours": []}
    for path in sample_paths(root, count):
        with Image.open(path) as image:
            reference = np.asarray(image.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS))
        baseline_pixels = np.clip(np.round(baseline_image(path, image_size).numpy()), 0, 255)
        scores["baseline"].append(psnr(reference, baseline_pixels))
        scores["ours"].append(psnr(reference, load_image(path, image_size)))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="generated JPEGs timed (default 400)")
    parser.add_argument("--classes", type=int, default=5, help="classes of the generated images (default 5)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the delivered images (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data; the first decodes (at least 2; default 3)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measure each pipeline this many times, alternating; report medians (default 3)"
    )
    parser.add_argument(
        "--memory-images",
        default="400,1600",
        help="two dataset sizes for the peak-memory measurement, e.g. 400,1600 (default); each pipeline alone in a process",
    )
    parser.add_argument("--folder", type=Path, help="keep the generated JPEGs here and reuse them (default: a temporary folder)")
    parser.add_argument("--memory-child", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child, args.folder, args.image_size, args.batch_size, args.classes)))
        return 0
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch decodes, the later ones read the cache")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    small, large = sorted(int(n) for n in args.memory_images.split(","))

    scratch = Path(tempfile.mkdtemp(prefix="inat-bench-"))
    root = args.folder or scratch / "images"
    names = {
        "baseline": "keras-io default (image_dataset_from_directory)",
        "strong": "strong recipe (.cache().shuffle(N).batch)",
        "strong_repeat": "strong recipe, .repeat(), one iterator",
        "ours": "inat_keras.data.pipeline.make_dataset (uint8)",
        "ours_float": "ours, cast to float32 in the pipeline",
    }
    results = {name: Measured() for name in PIPELINES}
    memory: dict[str, dict[int, dict[str, float]]] = {name: {} for name in MEMORY_PIPELINES}
    try:
        start = time.perf_counter()
        write_folder(root, max(args.images, large), args.classes)
        print(
            f"{max(args.images, large)} JPEGs, 500-800 px long side, in {root} ({time.perf_counter() - start:.1f} s to prepare)"
        )
        timed = subset_folder(root, scratch / "timed", args.images)
        # Alternating the pipelines in each round spreads a busy moment of a shared machine over all of them.
        for round_ in range(1, args.rounds + 1):
            for name in PIPELINES:
                measured = results[name]
                measured.add(
                    time_epochs(
                        lambda name=name: build_pipeline(name, timed, args.image_size, args.batch_size, args.classes),
                        args.epochs,
                        measured.first_batch,
                    )
                )
            print(
                f"round {round_}/{args.rounds}: "
                + ", ".join(
                    f"{name} {results[name].first[-1]:.0f} then {results[name].later[-1]:.0f} images/s" for name in PIPELINES
                ),
                flush=True,
            )
        for count in (small, large):
            folder = subset_folder(root, scratch / f"memory-{count}", count)
            for name in MEMORY_PIPELINES:
                memory[name][count] = memory_growth(name, folder, args)
        floor = decode_floor(root, args.image_size)
        quality = resize_quality(root, args.image_size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    from inat_keras.devices import usable_cores

    print(
        f"\nimages/s at {args.image_size}x{args.image_size}, {args.images} images, batch {args.batch_size}, "
        f"{usable_cores()} CPU cores, median of {args.rounds} round{'s' if args.rounds > 1 else ''}"
    )
    print(f"{'pipeline':<50}{'first epoch':>13}{'later epochs':>14}{'CPU ms/image, 1st':>19}{'first batch s':>15}")
    for name, measured in results.items():
        print(
            f"{names[name]:<50}{median(measured.first):>13.1f}{median(measured.later):>14.1f}"
            f"{median(measured.first_cpu_ms):>19.2f}{median(measured.first_batch):>15.3f}"
        )
    pixels = args.image_size * args.image_size * 3
    grown = {name: memory[name][large]["bytes"] - memory[name][small]["bytes"] for name in MEMORY_PIPELINES}
    per_image = {name: grown[name] / max(large - small, 1) for name in MEMORY_PIPELINES}
    print(f"\npeak RSS growth over two epochs, each pipeline alone in a process (uint8 pixels: {pixels:,} bytes per image)")
    print(f"{'pipeline':<50}{f'{small} images MB':>16}{f'{large} images MB':>16}{'bytes/image':>14}{'x pixels':>10}")
    for name in MEMORY_PIPELINES:
        print(
            f"{names[name]:<50}{memory[name][small]['bytes'] / 1e6:>16.1f}{memory[name][large]['bytes'] / 1e6:>16.1f}"
            f"{per_image[name]:>14,.0f}{per_image[name] / pixels:>10.2f}"
        )
    print("\nhow the cost grows with the work (the same processes, one pass each: first epoch, then one later epoch)")
    print(f"{'pipeline':<50}{'images':>8}{'1st epoch img/s':>17}{'later img/s':>13}{'first batch s':>15}{'of 1st epoch':>14}")
    for name in MEMORY_PIPELINES:
        for count in (small, large):
            run = memory[name][count]
            print(
                f"{names[name]:<50}{count:>8}{run['first_epoch']:>17.1f}{run['later_epoch']:>13.1f}"
                f"{run['first_batch']:>15.3f}{run['first_batch'] / run['first_epoch_seconds']:>14.3f}"
            )
    print(f"\none core, milliseconds per image (best of 3 passes over {min(args.images, 100)} images)")
    for name, ms in floor.items():
        print(f"{name:<50}{ms:>14.3f}")
    print(
        f"image quality, PSNR against a Lanczos resize of the full decode: baseline {quality['baseline']:.1f} dB, "
        f"ours {quality['ours']:.1f} dB"
    )
    base, strong, strong_repeat, ours_ = (results[name] for name in ("baseline", "strong", "strong_repeat", "ours"))
    # The baseline's CPU time inside tf.data (no eager dispatch) over the least any JPEG decode of
    # these files costs: the speed-up a pipeline with a free resize and no overhead would reach.
    ceiling = median(base.first_cpu_ms) / floor["reduced-scale decode alone"]
    print(f"first-epoch ceiling for any pipeline that decodes these JPEGs with libjpeg-turbo: {ceiling:.2f}x")
    first_batch_share = median(ours_.first_batch) / (args.images / median(ours_.first))
    as_float = median(results["ours_float"].later) / median(strong.later)
    print(
        f"ours: first batch after {first_batch_share:.3f} of the first epoch's time; later epochs "
        f"{median(ours_.later) / median(strong_repeat.later):.2f}x the repeated strong recipe, "
        f"{as_float:.2f}x the strong recipe when cast to float32 in the pipeline"
    )
    print(
        f"pipeline_speedup_first_epoch={median(ours_.first) / median(base.first):.2f} "
        f"pipeline_speedup_later_epochs={median(ours_.later) / median(base.later):.2f} "
        f"later_vs_strong_recipe={median(ours_.later) / median(strong.later):.2f} "
        f"bytes_per_image={per_image['ours']:.0f} first_batch_seconds={median(ours_.first_batch):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
