"""The input pipeline: images decoded once into one uint8 array, each epoch a permutation gathered in batches.

- ``ImageArray`` holds every image of a split as ``[N, size, size, 3]`` uint8 (in memory, or an
  ``np.memmap`` file for ``--cache PREFIX``) and the labels beside it: 1.0x the pixels' bytes, no
  float32 copy, no shuffle buffer.
- Epoch ``e`` visits the images in ``epoch_order(seed, e)``, a full permutation computed from the seed
  and the epoch alone, so a run resumed at epoch ``e`` sees the batches an uninterrupted one did.
- Until the array is complete, an epoch decodes its images in its own order (plain JPEGs through
  TensorFlow's reduced-DCT decoder, the rest through Pillow) and stores them: the first batch is
  ready after a batch of decodes, and later epochs only gather (one fancy index per batch).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.config import DataConfig
from inat_keras.data.decode import DECODER_VERSION, decode_with_pillow, jpeg_decoder, native_jpegs
from inat_keras.data.files import LabelledFiles
from inat_keras.errors import UserError
from inat_keras.models.augment import augments_images, augments_in_model, batch_mixers, image_augmentation
from inat_keras.models.seeding import reseed_random_layers
from inat_keras.storage import write_json


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order in which epoch ``epoch`` of a run seeded ``seed`` visits ``count`` images: a full permutation."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def mixing_coins(seed: int, epoch: int, count: int) -> np.ndarray:
    """A coin per image for an epoch; a batch tosses its first image's, picking MixUp or CutMix (``mixed_batches``)."""
    return np.random.default_rng([seed, epoch, 1]).integers(0, 2, count, dtype=np.int64)


@dataclass
class ImageArray:
    """The decoded images of one split, filled as the first epoch decodes them; ``complete`` once all are in."""

    files: LabelledFiles
    image_size: int
    num_classes: int
    images: np.ndarray
    labels: np.ndarray
    native: np.ndarray
    # Where a finished memmap cache records what it holds; written after its last image is flushed.
    marker: Path | None = None
    keep: bool = True  # False for --cache none: every epoch decodes again
    # --cache memory: the images live in a TensorFlow variable instead of ``images``, so a batch is gathered
    # and stored by TensorFlow's own ops, never through Python (5x the later epochs' rate of a numpy gather).
    variable: Any = None
    complete: bool = False
    filled: np.ndarray = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.filled = np.full(len(self.files), self.complete)

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray, num_classes: int) -> ImageArray:
        """An array already filled with ``images`` (uint8, [N, size, size, 3]) and integer ``labels``: nothing to decode."""
        names = LabelledFiles([f"image-{i}" for i in range(len(images))], [int(label) for label in labels])
        native = np.zeros(len(images), bool)
        return cls(names, images.shape[1], num_classes, images, np.asarray(labels, np.int32), native, complete=True)

    def __len__(self) -> int:
        return len(self.files)

    def store(self, indices: np.ndarray, images: np.ndarray) -> np.int64:
        """Keep a decoded batch; the last missing image completes the array (and the memmap's marker)."""
        if not self.keep or self.complete:
            return np.int64(0)
        self.images[indices] = images
        return self.mark_filled(indices)

    def pixels(self) -> np.ndarray:
        """All the images as one numpy array (a copy for ``--cache memory``)."""
        return self.variable.numpy() if self.variable is not None else np.asarray(self.images)

    def mark_filled(self, indices: np.ndarray) -> np.int64:
        """Count the stored images; the last one completes the array (and writes the memmap's marker)."""
        with self.lock:
            self.filled[indices] = True
            if not self.complete and self.filled.all():
                if self.marker is not None:
                    self.images.flush()  # type: ignore[attr-defined]
                    write_json(self.marker, marker_contents(self.images.shape))
                self.complete = True
        return np.int64(0)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]


def marker_contents(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"shape": list(shape), "dtype": "uint8", "decoder_version": DECODER_VERSION}


def cached_images(files: LabelledFiles, config: DataConfig, num_classes: int, *, cache_name: str = "") -> ImageArray:
    """The array behind ``config.cache``: memory, none, or a memmap file named by ``cache_key``; a search batches it per trial."""
    size = config.image_size
    shape = (len(files), size, size, 3)
    labels = np.asarray(files.labels, dtype=np.int32)
    native = np.asarray(native_jpegs(files.paths), dtype=bool)
    if config.cache in ("memory", "none"):
        keep = config.cache == "memory"
        variable = None
        if keep:
            import tensorflow as tf

            variable = tf.Variable(tf.zeros(shape, tf.uint8), trainable=False, name="images")
        empty = np.empty((0, size, size, 3), np.uint8)
        return ImageArray(files, size, num_classes, empty, labels, native, keep=keep, variable=variable)
    path = Path(f"{config.cache}{cache_name}-{cache_key(files, size, num_classes)}.u8")
    marker = path.with_name(path.name + ".done")
    if finished_cache(path, marker, shape):
        images = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
        return ImageArray(files, size, num_classes, images, labels, native, marker=marker, complete=True)
    return ImageArray(files, size, num_classes, new_memmap(path, marker, shape), labels, native, marker=marker)


def finished_cache(path: Path, marker: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` holds a whole array: its marker (written after the last image) agrees, and so does its size."""
    try:
        recorded = json.loads(marker.read_text())
        return recorded == marker_contents(shape) and path.stat().st_size == int(np.prod(shape))
    except (OSError, ValueError):
        return False


def new_memmap(path: Path, marker: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A memmap file for ``shape``, its blocks reserved now: a full disk fails here, not as SIGBUS mid-epoch."""
    marker.unlink(missing_ok=True)  # first: a kill from here on leaves a file without a marker, never read
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(int(np.prod(shape)), 1)
    with open(path, "wb") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            raise UserError(
                f"cannot write the image cache {path} ({os.strerror(error.errno or 0)}): it needs {size / 1e9:.2f} GB; "
                "free space there, choose another --cache PREFIX, or use --cache memory"
            ) from None
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


def cache_key(files: LabelledFiles, image_size: int, num_classes: int) -> str:
    """Names a file cache after what it holds: another size, split, seed or dataset gets its own file.

    A memmap is read by name and shape alone; reusing one written for other images would feed the wrong pixels.
    """
    digest = hashlib.sha256(f"{image_size}\n{num_classes}\n{DECODER_VERSION}\n".encode())
    for path, label in zip(files.paths, files.labels, strict=True):
        digest.update(f"{path}\t{label}\n".encode())
    return f"{image_size}px-{digest.hexdigest()[:12]}"


def make_dataset(
    files: LabelledFiles,
    config: DataConfig,
    num_classes: int,
    *,
    training: bool,
    cache_name: str = "",
    first_epoch: int = 0,
) -> Any:
    """Batches of (float32 0-255 image, one-hot label) from the array of ``cached_images``: see ``batched``."""
    return batched(
        cached_images(files, config, num_classes, cache_name=cache_name),
        config,
        len(files),
        training=training,
        first_epoch=first_epoch,
    )


def batched(array: ImageArray, config: DataConfig, count: int, *, training: bool, first_epoch: int = 0) -> Any:
    """Batches of ``array`` in each epoch's order, float32, [augmented unless the model does,] [mixed,] prefetched.

    Each iteration of the dataset is one epoch, counted from ``first_epoch`` (the epoch a resumed run
    starts at): Keras iterates a dataset once per epoch. Training batches follow ``epoch_order``;
    validation and test keep the files' order. The pipeline's random layers are reseeded from
    (seed, epoch) as each epoch starts; with TensorFlow's op determinism on (``--deterministic``)
    they also run one batch at a time, so each batch draws the same numbers in every run.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled  # not among tf.config's public names

    if count != len(array):
        raise ValueError(f"batched: count {count} != {len(array)} images in the array")
    seed, batch_size, size = config.seed, config.batch_size, array.image_size
    batches = -(-count // batch_size)
    augmentation = None
    if training and augments_images(config) and not augments_in_model(config):
        augmentation = keras.Sequential(image_augmentation(config), name="augmentation")
    mixers = batch_mixers(config) if training else []
    parallel = None if is_op_determinism_enabled() else tf.data.AUTOTUNE
    epochs = itertools.count(first_epoch)

    def plan() -> Any:
        epoch = next(epochs)
        for layer in [augmentation, *mixers]:
            if layer is not None:
                reseed_random_layers(layer, seed, epoch)
        yield np.int64(epoch), array.complete

    def order_of(epoch: np.int64) -> tuple[np.ndarray, np.ndarray]:
        order = epoch_order(seed, int(epoch), count) if training else np.arange(count)
        return order.astype(np.int64), mixing_coins(seed, int(epoch), count)

    paths = tf.constant(array.files.paths if array.files.paths else [""], dtype=tf.string)
    native = tf.constant(array.native if count else np.zeros(1, bool))
    labels = tf.constant(array.labels if count else np.zeros(1, np.int32))
    decode_jpeg = jpeg_decoder(size)

    def with_pillow(path: bytes) -> np.ndarray:
        return decode_with_pillow(path.decode("utf-8"), size)

    def decode_one(index: Any) -> Any:
        path = tf.gather(paths, index)

        def pillow() -> Any:
            image = tf.numpy_function(with_pillow, [path], tf.uint8, stateful=False)
            image.set_shape((size, size, 3))
            return image

        if array.native.all() or not array.native.any():  # one decoder: no branch to take per image
            return decode_jpeg(tf.io.read_file(path)) if array.native.all() else pillow()
        return tf.cond(tf.gather(native, index), lambda: decode_jpeg(tf.io.read_file(path)), pillow)

    def stored(indices: Any, images: Any) -> Any:
        if array.variable is None:
            done = tf.numpy_function(array.store, [indices, images], tf.int64, stateful=True)
        else:
            written = array.variable.scatter_update(tf.IndexedSlices(images, indices))
            with tf.control_dependencies([written]):
                done = tf.numpy_function(array.mark_filled, [indices], tf.int64, stateful=True)
        with tf.control_dependencies([done]):
            return indices, tf.identity(images)

    def gathered(indices: Any) -> Any:
        if array.variable is not None:
            return indices, tf.gather(array.variable, indices)
        images = tf.numpy_function(array.gather, [indices], tf.uint8, stateful=False)
        images.set_shape((None, size, size, 3))
        return indices, images

    def to_float(indices: Any, images: Any, coin: Any) -> Any:
        pair = (tf.cast(images, tf.float32), tf.one_hot(tf.gather(labels, indices), array.num_classes))
        return (pair, coin) if mixers else pair

    def epoch_batches(epoch: Any, complete: Any) -> Any:
        order, coins = tf.numpy_function(order_of, [epoch], (tf.int64, tf.int64), stateful=False)
        order.set_shape((count,))
        coins.set_shape((count,))
        with_coin = lambda indices, images: (indices, images, tf.gather(coins, indices[0]))
        decoding = tf.where(complete, 0, count)
        decoded = (
            tf.data.Dataset.from_tensor_slices(order[:decoding])
            .map(lambda index: (index, decode_one(index)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .map(stored)
        )
        read = tf.data.Dataset.from_tensor_slices(order[decoding:]).batch(batch_size).map(gathered)
        return decoded.concatenate(read).map(with_coin)

    signature = (tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.bool))
    dataset = tf.data.Dataset.from_generator(plan, output_signature=signature).flat_map(epoch_batches)
    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augmentation is not None:
        augment = lambda images, labels: (augmentation(images, training=True), labels)
        if mixers:
            dataset = dataset.map(lambda pair, coin: (augment(*pair), coin), num_parallel_calls=parallel)
        else:
            dataset = dataset.map(augment, num_parallel_calls=parallel)
    if mixers:
        dataset = mixed_batches(dataset, mixers, parallel=parallel)
    # flat_map forgets the length; Keras needs it for the first epoch's progress bar and step count.
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE)


def mixed_batches(dataset: Any, mixers: list[Any], *, parallel: Any) -> Any:
    """Each batch of (images, one-hot labels) through one of ``mixers`` (MixUp, CutMix), drawn per batch as timm does.

    ``dataset`` holds ((images, labels), coin). With one mixer every batch goes through it. With two,
    the batch's coin (``mixing_coins``: its first image's, from the seed and the epoch) picks one, so half the batches
    are MixUp's and half CutMix's, never both at once.
    """
    import tensorflow as tf

    def mix(layer: Any, images: Any, labels: Any) -> tuple[Any, Any]:
        mixed = layer({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def mix_one(batch: tuple[Any, Any], coin: Any) -> tuple[Any, Any]:
        images, labels = batch
        if len(mixers) == 1:
            return mix(mixers[0], images, labels)
        return tf.cond(coin % 2 == 0, lambda: mix(mixers[0], images, labels), lambda: mix(mixers[1], images, labels))

    return dataset.map(mix_one, num_parallel_calls=parallel)
