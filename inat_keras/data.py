"""Dataset discovery, the stratified split, image decoding and the tf.data pipeline.

A dataset root has the iNaturalist-12K layout: ``<root>/train/<Class>/*`` and
``<root>/val/<Class>/*``. ``val/`` is the held-out test set: it is never used for
model selection. The validation set is a stratified split of ``train/``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .config import AUGMENT_PLACEMENTS, DataConfig
from .errors import UserError
from .io import read_csv, write_csv

# HEIC/HEIF are listed so the data check reports them as unsupported instead of silently ignoring photos.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
SPLIT_FILE = "split.csv"


@dataclass
class LabelledFiles:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DatasetSplit:
    """The three subsets of a run, with the class names that index the labels."""

    class_names: list[str]
    train: LabelledFiles
    validation: LabelledFiles
    test: LabelledFiles


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_class_images(folder: Path) -> dict[str, list[str]]:
    """Image files under each class folder of ``folder`` (recursively, hidden entries skipped)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {}
    for name in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(Path(f)))
        found[name] = files
    return found


def discover_dataset(
    root: str | os.PathLike, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], LabelledFiles, LabelledFiles]:
    """Class names, the ``train/`` files and the ``val/`` (test) files of a dataset root, less ``exclude``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist: pass --data DIR with train/ and val/ inside, or --demo")
    for subset in ("train", "val"):
        if not (root / subset).is_dir():
            parent = root.parent
            hint = (
                f"; {root} looks like one of them, so pass its parent: --data {parent}"
                if root.name in ("train", "val") and (parent / "train").is_dir() and (parent / "val").is_dir()
                else ""
            )
            raise UserError(
                f"{root / subset} is missing: the data directory needs train/<class>/ and val/<class>/ folders{hint}"
            )
    subsets = {}
    for subset in ("train", "val"):
        folder = root / subset
        per_class = {name: [f for f in files if f not in exclude] for name, files in list_class_images(folder).items()}
        if not per_class:
            raise UserError(f"{folder} has no class folders: put each class's images in {folder}/<class>/")
        empty = [name for name, files in per_class.items() if not files]
        if empty:
            usable = "usable " if exclude else ""
            raise UserError(f"{folder}/{empty[0]} holds no {usable}images: add images or remove the folder")
        subsets[subset] = per_class
    train_classes, test_classes = list(subsets["train"]), list(subsets["val"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_val = sorted(set(test_classes) - set(train_classes))
        raise UserError(
            f"train/ and val/ in {root} have different classes (only in train: {only_train or 'none'}; "
            f"only in val: {only_val or 'none'}): give both the same class folders"
        )
    return train_classes, _flatten(subsets["train"]), _flatten(subsets["val"])


def _flatten(per_class: dict[str, list[str]]) -> LabelledFiles:
    paths, labels = [], []
    for label, files in enumerate(per_class.values()):
        paths.extend(files)
        labels.extend([label] * len(files))
    return LabelledFiles(paths, labels)


def stratified_split(
    files: LabelledFiles, val_fraction: float, seed: int, class_names: Sequence[str] = ()
) -> tuple[LabelledFiles, LabelledFiles]:
    """Split into (train, validation) keeping class proportions; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-split {val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    counts = np.bincount(files.labels)
    if counts.min() < 2:
        smallest = int(counts.argmin())
        name = f"class {class_names[smallest]!r}" if class_names else f"class {smallest}"
        raise UserError(
            f"{name} has only {int(counts.min())} training image(s): "
            "each class needs at least 2 to split off a validation set; add images or remove the class"
        )
    num_val = max(int(round(len(files) * val_fraction)), len(counts))
    if len(files) - num_val < len(counts):
        raise UserError(f"--val-split {val_fraction} leaves too few training images: lower it or add images")
    train_idx, val_idx = train_test_split(
        np.arange(len(files)), test_size=num_val, stratify=files.labels, random_state=seed
    )
    pick = lambda idx: LabelledFiles([files.paths[i] for i in sorted(idx)], [files.labels[i] for i in sorted(idx)])
    return pick(train_idx), pick(val_idx)


def make_split(config: DataConfig, exclude: frozenset[str] = frozenset()) -> DatasetSplit:
    class_names, train_files, test_files = discover_dataset(config.data_dir, exclude)
    train, validation = stratified_split(train_files, config.val_split, config.seed, class_names)
    return DatasetSplit(class_names, train, validation, test_files)


def save_split(split: DatasetSplit, run_dir: str | os.PathLike) -> None:
    """``split.csv``: one row per image (path, label, subset), to reproduce or audit a run."""
    rows = []
    for subset, files in (("train", split.train), ("validation", split.validation), ("test", split.test)):
        rows.extend((path, split.class_names[label], subset) for path, label in zip(files.paths, files.labels))
    write_csv(Path(run_dir) / SPLIT_FILE, ("path", "label", "subset"), rows)


def load_split(run_dir: str | os.PathLike, class_names: list[str]) -> DatasetSplit:
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing, so the run cannot be resumed: start a new run with another --name")
    index = {name: i for i, name in enumerate(class_names)}
    subsets = {"train": LabelledFiles([], []), "validation": LabelledFiles([], []), "test": LabelledFiles([], [])}
    for row in read_csv(path):
        subsets[row["subset"]].paths.append(row["path"])
        subsets[row["subset"]].labels.append(index[row["label"]])
    return DatasetSplit(class_names, subsets["train"], subsets["validation"], subsets["test"])


# -- decoding ---------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: EXIF orientation applied, alpha over white, 16-bit scaled.

    Loads ``image`` and may change it in place: copies are made only when the pixels change, since
    Pillow copies hold the GIL, which the decoding threads share.
    """
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow clips 16-bit values to 255 when converting; scale them down instead.
        array = np.asarray(image, dtype=np.int64)
        scale = 257.0 if array.max() > 255 else 1.0
        image = Image.fromarray(np.clip(array / scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


EXIF_ORIENTATION = 0x0112
# The DCT scalings TensorFlow's decode_jpeg offers (its ``ratio``), as Pillow's ``draft`` does.
JPEG_SCALES = (1, 2, 4, 8)


def decodes_natively(image: Image.Image) -> bool:
    """Whether TensorFlow's JPEG decoder shows the same picture as ``to_rgb`` would.

    That is a JPEG in colour or grey, not turned by an EXIF orientation (TensorFlow ignores the tag);
    CMYK JPEGs and every other format go through Pillow. Reads only the header.
    """
    return image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(EXIF_ORIENTATION, 1) == 1


def native_jpeg(path: str | os.PathLike) -> bool:
    """``decodes_natively`` for a file; False for anything Pillow cannot open, so its path reports the error."""
    try:
        with Image.open(path) as image:
            return decodes_natively(image)
    except Exception:  # a bad file is not this probe's to report: load_image's Pillow path names what is wrong
        return False


@functools.cache
def jpeg_decoder(size: int):
    """A TensorFlow function: JPEG bytes to a ``size`` x ``size`` x 3 uint8 image, the GIL never taken.

    Decodes at the largest DCT scale that keeps the short side at least ``size`` (what ``draft`` picks),
    then averages the covered pixels (area resize: antialiased, and cheaper than a bilinear filter with
    antialiasing); images smaller than ``size`` are enlarged bilinearly instead, since area enlarges
    by repeating pixels.
    """
    import tensorflow as tf

    def decode_at(contents, scale: int):
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=scale)

    def resize(image, method: str, antialias: bool = False):
        return lambda: tf.image.resize(image, (size, size), method=method, antialias=antialias)

    @tf.function(input_signature=[tf.TensorSpec((), tf.string)])
    def decode(contents):
        fits = tf.reduce_min(tf.image.extract_jpeg_shape(contents)[:2]) // size
        scale_index = tf.reduce_sum(tf.cast(fits >= tf.constant(JPEG_SCALES[1:]), tf.int32))
        image = tf.switch_case(scale_index, [decode_at(contents, scale) for scale in JPEG_SCALES])
        image.set_shape((None, None, 3))
        shrinks = tf.reduce_min(tf.shape(image)[:2]) >= size
        resized = tf.cond(shrinks, resize(image, "area"), resize(image, "bilinear", antialias=True))
        # Both filters average non-negative weights, so values stay within 0-255: + 0.5 rounds.
        return tf.cast(resized + 0.5, tf.uint8)

    return decode


def decode_with_pillow(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file Pillow reads, at a reduced JPEG scale where the target allows, with an antialiased resize."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        rgb = to_rgb(image)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(rgb, dtype=np.uint8)


def decoder_reason(error) -> str:
    """The sentence of a TensorFlow decoding error, without its op and device prefix."""
    return error.message.split("}}")[-1].strip().splitlines()[0]


def verify_jpeg(contents: bytes) -> None:
    """Raise ValueError with TensorFlow's reason when ``jpeg_decoder`` would fail on these bytes.

    Decodes at the smallest DCT scale: entropy decoding, where damage shows, reads every byte at any scale.
    """
    import tensorflow as tf

    try:
        tf.io.decode_jpeg(contents, channels=3, ratio=JPEG_SCALES[-1])
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"TensorFlow's JPEG decoder cannot read it: {decoder_reason(error)}") from None


def decode_natively(path: str | os.PathLike, size: int) -> np.ndarray:
    """A JPEG through ``jpeg_decoder``; a file it rejects raises Pillow's reason, or TensorFlow's when Pillow reads it."""
    import tensorflow as tf

    try:
        return jpeg_decoder(size)(tf.constant(Path(path).read_bytes())).numpy()
    except tf.errors.InvalidArgumentError as error:
        decode_with_pillow(path, size)  # raises with Pillow's words (truncated, say) when it fails too
        raise ValueError(f"TensorFlow's JPEG decoder cannot read {path}: {decoder_reason(error)}") from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode any common image file to a ``size`` x ``size`` x 3 uint8 RGB array, as training sees it.

    Plain JPEGs (``native_jpeg``) take TensorFlow's decoder, everything else Pillow; both decode at a
    reduced DCT scale when the target is much smaller, which is most of the cost for 500-800 px photos
    resized to 224.
    """
    return decode_natively(path, size) if native_jpeg(path) else decode_with_pillow(path, size)


# -- tf.data ----------------------------------------------------------------------------


AUGMENT_PREFIX = "augment_"


def augmentation_layers(seed: int | None = None) -> list:
    """Random zoom in, shift and small rotation (one warp), horizontal flip, colour jitter.

    Keras layers (the warp is ours: ``augment.RandomAffine``, which XLA compiles): they change
    images only when called with ``training=True``, so the same layers serve in the tf.data map and
    inside a model (where inference skips them).
    """
    import keras

    from .augment import RandomAffine

    # float32 whatever the mixed-precision policy: float16 arithmetic on a CPU is emulated (slower) and
    # rounds 0-255 pixel values.
    f32 = {"seed": seed, "dtype": "float32"}
    return [
        RandomAffine(zoom_in=0.4, shift=0.1, rotation=0.04, name=f"{AUGMENT_PREFIX}affine", **f32),
        keras.layers.RandomFlip("horizontal", name=f"{AUGMENT_PREFIX}flip", **f32),
        keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=0.2, contrast_factor=0.2, saturation_factor=0.2,
            name=f"{AUGMENT_PREFIX}colour", **f32,
        ),
    ]


def is_augmentation_layer(layer) -> bool:
    return layer.name.startswith(AUGMENT_PREFIX)


def make_augmentation(seed: int | None = None):
    """The augmentation layers as one Sequential, for the tf.data map."""
    import keras

    return keras.Sequential(augmentation_layers(seed), name="augmentation")


def resolve_augment_placement(placement: str) -> str:
    """"pipeline" or "model"; "auto" puts augmentation in the model when a GPU is present.

    On a GPU the warps and colour jitter take microseconds, while the CPU's tf.data map would
    starve it (a few hundred images/s per core); on a CPU both share the same cores, and the
    pipeline's parallel map overlaps them with training.
    """
    from .training import gpu_available

    if placement not in AUGMENT_PLACEMENTS:
        raise UserError(f"--augment-placement {placement}: choose one of {', '.join(AUGMENT_PLACEMENTS)}")
    if placement != "auto":
        return placement
    return "model" if gpu_available() else "pipeline"


def augments_in_model(config: DataConfig) -> bool:
    return config.augment and resolve_augment_placement(config.augment_placement) == "model"


def augmentation_for_model(config: DataConfig) -> list | None:
    """The layers a model builder puts after its input, or None when the pipeline augments."""
    return augmentation_layers(config.seed) if augments_in_model(config) else None


# Images per tf.numpy_function call: each call holds the GIL for about 0.2 ms of bookkeeping, time
# the decoding threads wait for; a chunk pays it once.
DECODE_CHUNK = 32
DECODE_TASK = 4  # files per thread-pool task
# Part of a file cache's name: caches written by an older decoder (Pillow for every file, before 2)
# hold other pixels, so they are not reused.
DECODER_VERSION = 2


def usable_cores() -> int:
    """CPU cores this process may run on (a container's CPU set, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """The shared decoding threads.

    Pillow releases the GIL while it decodes and resizes, so they use every core; its header parsing,
    allocation and conversions hold it (about 1 ms per photo), which caps them near 900 images/s.
    """
    return ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="inat-decode")


def on_decode_pool(count: int, work) -> None:
    """``work(i)`` for i in range(count) on the decoding threads, ``DECODE_TASK`` indices per task.

    A few files per task: a future per file costs GIL time of its own. list() waits for every task
    and re-raises the first error.
    """

    def task(start: int) -> None:
        for i in range(start, min(start + DECODE_TASK, count)):
            work(i)

    list(decode_pool().map(task, range(0, count, DECODE_TASK)))


def load_images(paths: Sequence[str | os.PathLike], size: int, decode=load_image) -> np.ndarray:
    """``decode`` (``load_image``) of each path, in parallel, stacked in order: (len(paths), size, size, 3) uint8."""
    images = np.empty((len(paths), size, size, 3), np.uint8)

    def decode_into(i: int) -> None:
        images[i] = decode(paths[i], size)

    on_decode_pool(len(paths), decode_into)
    return images


def native_jpegs(paths: Sequence[str]) -> list[bool]:
    """``native_jpeg`` of each path, in order (header reads on the decoding threads: tens of microseconds a file)."""
    flags = [False] * len(paths)

    def probe(i: int) -> None:
        flags[i] = native_jpeg(paths[i])

    on_decode_pool(len(paths), probe)
    return flags


def natively_decoded(files: LabelledFiles, image_size: int, num_classes: int):
    """(uint8 image, one-hot label) of plain JPEGs, decoded by TensorFlow on every core tf.data gives the map."""
    import tensorflow as tf

    decode = jpeg_decoder(image_size)
    read = lambda path, label: (decode(tf.io.read_file(path)), tf.one_hot(label, num_classes))
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files.paths, dtype=tf.string), tf.constant(files.labels, dtype=tf.int32))
    )
    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pillow_decoded(files: LabelledFiles, image_size: int, num_classes: int):
    """(uint8 image, one-hot label) through Pillow, ``DECODE_CHUNK`` files per call on the decoding threads."""
    import tensorflow as tf

    def decode_chunk(paths: np.ndarray) -> np.ndarray:
        return load_images([path.decode("utf-8") for path in paths], image_size, decode_with_pillow)

    def read(paths, labels):
        images = tf.numpy_function(decode_chunk, [paths], tf.uint8, stateful=False)
        images.set_shape((None, image_size, image_size, 3))
        return images, tf.one_hot(labels, num_classes)

    paths = tf.constant(files.paths, dtype=tf.string)
    labels = tf.constant(files.labels, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).batch(DECODE_CHUNK)
    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def decoded_images(files: LabelledFiles, image_size: int, num_classes: int):
    """A tf.data dataset of (uint8 image, one-hot label) in the order of ``files``, decoded on all cores.

    Plain JPEGs go through TensorFlow's decoder, which never takes the GIL, and the rest through
    Pillow in chunks; ``choose_from_datasets`` takes each file from its decoder in turn, so the order
    (and every seeded shuffle after it) is the files' own.
    """
    import tensorflow as tf

    native = native_jpegs(files.paths)
    pick = lambda wanted: LabelledFiles(
        [path for path, n in zip(files.paths, native) if n == wanted],
        [label for label, n in zip(files.labels, native) if n == wanted],
    )
    if all(native):
        dataset = natively_decoded(files, image_size, num_classes)
    elif not any(native):
        dataset = pillow_decoded(files, image_size, num_classes)
    else:
        parts = [natively_decoded(pick(True), image_size, num_classes), pillow_decoded(pick(False), image_size, num_classes)]
        choice = tf.data.Dataset.from_tensor_slices(tf.constant([0 if n else 1 for n in native], dtype=tf.int64))
        dataset = tf.data.Dataset.choose_from_datasets(parts, choice)
    # unbatch() and choose_from_datasets forget the length; Keras needs it for the first epoch's progress bar and step count.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(files)))


def make_dataset(
    files: LabelledFiles,
    config: DataConfig,
    num_classes: int,
    *,
    training: bool,
    cache_name: str = "",
):
    """Batches of (float32 0-255 image, one-hot label): decode, cache, [shuffle, augment], prefetch.

    The cache holds resized uint8 images (4x smaller than float32), so epochs after
    the first read memory (or ``config.cache`` files) instead of decoding JPEGs again.
    """
    images = cached_images(files, config, num_classes, cache_name=cache_name)
    return batched(images, config, len(files), training=training)


def cached_images(files: LabelledFiles, config: DataConfig, num_classes: int, *, cache_name: str = ""):
    """Decoded (uint8 image, one-hot label) pairs behind ``config.cache``; a search batches them per trial."""
    dataset = decoded_images(files, config.image_size, num_classes)
    if config.cache == "memory":
        dataset = dataset.cache()
    elif config.cache != "none":
        Path(config.cache).parent.mkdir(parents=True, exist_ok=True)
        dataset = dataset.cache(f"{config.cache}{cache_name}-{cache_key(files, config.image_size, num_classes)}")
    return dataset


def cache_key(files: LabelledFiles, image_size: int, num_classes: int) -> str:
    """Names a file cache after what it holds: another size, split, seed or dataset gets its own files.

    tf.data reads a file cache by name alone; reusing one written for other images would feed the
    wrong pixels or fail mid-epoch on a shape mismatch.
    """
    digest = hashlib.sha256(f"{image_size}\n{num_classes}\n{DECODER_VERSION}\n".encode())
    for path, label in zip(files.paths, files.labels):
        digest.update(f"{path}\t{label}\n".encode())
    return f"{image_size}px-{digest.hexdigest()[:12]}"


def batched(dataset, config: DataConfig, count: int, *, training: bool):
    """[shuffle,] batch, float32, [augment unless the model does,] prefetch the pairs of ``cached_images``."""
    import tensorflow as tf

    if training:
        dataset = dataset.shuffle(min(count, 10_000), seed=config.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(config.batch_size)
    to_float = lambda images, labels: (tf.cast(images, tf.float32), labels)
    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training and config.augment and not augments_in_model(config):
        augmentation = make_augmentation(config.seed)
        dataset = dataset.map(
            lambda images, labels: (augmentation(images, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
