"""The input pipeline: images decoded once into one uint8 array, each epoch a permutation gathered in batches.

- ``ImageArray`` holds every image of a split as ``[N, size, size, 3]`` uint8 (in memory, or an
  ``np.memmap`` file for ``--cache PREFIX``) and the labels beside it: 1.0x the pixels' bytes, no
  float32 copy, no shuffle buffer.
- Batch ``step`` of a training run holds ``batch_indices(seed, step)``: epoch ``e`` visits the images in
  ``epoch_order(seed, e)``, a full permutation computed from the seed and the epoch alone, and the batch's
  random layers draw from (seed, step), so a run resumed at epoch ``e`` sees the batches an uninterrupted one did.
- A batch whose images are not all stored yet decodes them (plain JPEGs through TensorFlow's reduced-DCT
  decoder, the rest through Pillow) and stores them: the first batch is ready after a batch of decodes,
  and later epochs only gather (one gather per batch, uint8 to the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.config import DataConfig
from inat_keras.data.decode import DECODER_VERSION, decode_with_pillow, jpeg_decoder, native_jpeg
from inat_keras.data.files import LabelledFiles
from inat_keras.errors import UserError
from inat_keras.models.augment import augments_images, augments_in_model, batch_mixers, image_augmentation
from inat_keras.models.seeding import reseed_random_layers, step_seed_assignments
from inat_keras.storage import write_json


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order in which epoch ``epoch`` of a run seeded ``seed`` visits ``count`` images: a full permutation.

    ``batch_indices`` computes it batch by batch inside the pipeline; this is the same order, whole.
    """
    return batch_indices(seed, epoch, count, count, training=True).numpy()  # one batch of the whole epoch


def mixing_coin(seed: int, step: Any) -> Any:
    """0 or 1 from (seed, step): which of two mixers batch ``step`` goes through (a tensor op)."""
    import tensorflow as tf

    pair = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]), 1)
    return tf.random.stateless_uniform([], seed=pair, minval=0, maxval=2, dtype=tf.int32)


@dataclass
class ImageArray:
    """The decoded images of one split, filled as the first epoch decodes them; ``complete`` once all are in."""

    files: LabelledFiles
    image_size: int
    num_classes: int
    images: np.ndarray
    labels: np.ndarray
    # Where a finished memmap cache records what it holds; written after its last image is flushed.
    marker: Path | None = None
    keep: bool = True  # False for --cache none: every epoch decodes again
    # --cache memory: the images live in a TensorFlow variable instead of ``images``, so a batch is gathered
    # and stored by TensorFlow's own ops, never through Python (5x the later epochs' rate of a numpy gather).
    variable: Any = None
    complete: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # Which images are stored: a bool variable the pipeline reads and sets, the array's only such record.
    flags: Any = field(default=None, init=False, repr=False)

    def filled_flags(self) -> Any:
        """Which images are stored, as a bool variable the pipeline reads and sets (one per array, shared by its datasets)."""
        with self.lock:
            if self.flags is None:
                import tensorflow as tf

                initial = np.full(max(len(self), 1), self.complete and len(self) > 0)
                self.flags = tf.Variable(initial, trainable=False, name="filled")
            return self.flags

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray, num_classes: int) -> ImageArray:
        """An array already filled with ``images`` (uint8, [N, size, size, 3]) and integer ``labels``: nothing to decode."""
        import tensorflow as tf

        names = LabelledFiles([f"image-{i}" for i in range(len(images))], [int(label) for label in labels])
        variable = tf.Variable(images, trainable=False, name="images")
        empty = np.empty((0, *images.shape[1:]), np.uint8)
        labels = np.asarray(labels, np.int32)
        return cls(names, images.shape[1], num_classes, empty, labels, variable=variable, complete=True)

    def __len__(self) -> int:
        return len(self.files)

    def store(self, indices: np.ndarray, images: np.ndarray) -> np.int64:
        """Write a decoded batch into the memmap (a finished array is read-only, and stores nothing)."""
        if not self.complete:
            self.images[indices] = images
        return np.int64(0)

    def pixels(self) -> np.ndarray:
        """All the images as one numpy array (a copy for ``--cache memory``)."""
        return self.variable.numpy() if self.variable is not None else np.asarray(self.images)

    def finish(self) -> np.int64:
        """Every image is stored: the array is complete (a memmap is flushed, then its marker written). Idempotent."""
        with self.lock:
            if not self.complete:
                if self.marker is not None:
                    self.images.flush()  # type: ignore[attr-defined]
                    write_json(self.marker, marker_contents(self.images.shape))
                self.complete = True
        return np.int64(0)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]

    def plain_jpegs(self, indices: np.ndarray) -> np.ndarray:
        """Which of images ``indices`` TensorFlow's JPEG decoder takes (``native_jpeg``: their header bytes)."""
        return np.array([native_jpeg(self.files.paths[i]) for i in indices], dtype=bool)


def marker_contents(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"shape": list(shape), "dtype": "uint8", "decoder_version": DECODER_VERSION}


def cached_images(files: LabelledFiles, config: DataConfig, num_classes: int, *, cache_name: str = "") -> ImageArray:
    """The array behind ``config.cache``: memory, none, or a memmap file named by ``cache_key``; a search batches it per trial."""
    size = config.image_size
    shape = (len(files), size, size, 3)
    labels = np.asarray(files.labels, dtype=np.int32)
    if config.cache in ("memory", "none"):
        keep = config.cache == "memory"
        variable = None
        if keep:
            import tensorflow as tf

            # Uninitialised: zero-filling 1.5 GB (iNaturalist-12K at 224 px) would hold up the first batch for 0.5 s,
            # and no image is read before it is stored (the ``filled`` flags).
            unset = tf.raw_ops.Empty(shape=shape, dtype=tf.uint8, init=False)
            variable = tf.Variable(unset, trainable=False, name="images")
        empty = np.empty((0, size, size, 3), np.uint8)
        return ImageArray(files, size, num_classes, empty, labels, keep=keep, variable=variable)
    path = Path(f"{config.cache}{cache_name}-{cache_key(files, size, num_classes)}.u8")
    marker = path.with_name(path.name + ".done")
    if finished_cache(path, marker, shape):
        images = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
        return ImageArray(files, size, num_classes, images, labels, marker=marker, complete=True)
    return ImageArray(files, size, num_classes, new_memmap(path, marker, shape), labels, marker=marker)


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


def epoch_batches(count: int, batch_size: int) -> int:
    """The batches of one epoch over ``count`` images: the ``steps_per_epoch`` every ``fit`` of a training dataset needs."""
    return -(-count // batch_size)


def batch_indices(seed: int, step: Any, count: int, batch_size: int, *, training: bool) -> Any:
    """The image indices of batch ``step`` of a run, counted from the first batch of epoch 0 (a tensor op).

    Training batches cut epoch ``step // batches`` of ``epoch_order`` into ``batch_size`` runs (the last one
    shorter); other splits keep the files' order. A pure function of (seed, step): no state, nothing to restore.
    """
    import tensorflow as tf

    batches = epoch_batches(count, batch_size)
    epoch, within = step // batches, step % batches
    positions = tf.range(within * batch_size, tf.minimum((within + 1) * batch_size, count), dtype=tf.int64)
    if not training:
        return positions
    seed_pair = tf.stack([tf.constant(seed, tf.int64), epoch])
    return tf.random.experimental.index_shuffle(positions, seed=seed_pair, max_index=count - 1)


def batched(array: ImageArray, config: DataConfig, count: int, *, training: bool, first_epoch: int = 0) -> Any:
    """Batches of ``array``: (uint8 images, or float32 where the pipeline augments or mixes, one-hot labels).

    A training dataset is endless and starts at ``first_epoch``: ``fit`` needs
    ``steps_per_epoch=epoch_batches(count, batch_size)``, and then keeps one iterator for the whole run, so
    no epoch pays for starting a pipeline. Batch ``step`` holds ``batch_indices(seed, step)`` and its random
    layers (augmentation, MixUp, CutMix) are reseeded from (seed, step) just before they run, so a resumed
    run sees the batches an uninterrupted one did. Validation and test datasets are one pass in file order.

    A batch whose images are all in the array is one gather; any other decodes its images (plain JPEGs
    through TensorFlow's reduced-DCT decoder, the rest through Pillow) and stores them, so the first epoch
    fills the array in its own order and training starts after one batch of decodes. Images stay uint8
    to the model, which casts them on its device: a quarter of the bytes to copy, and to send to a GPU.
    With TensorFlow's op determinism on (``--deterministic``) the random layers run one batch at a time.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled  # not among tf.config's public names

    if count != len(array):
        raise ValueError(f"batched: count {count} != {len(array)} images in the array")
    seed, batch_size = config.seed, config.batch_size
    batches = epoch_batches(count, batch_size)
    augmentation = None
    if training and augments_images(config) and not augments_in_model(config):
        augmentation = keras.Sequential(image_augmentation(config), name="augmentation")
    mixers = batch_mixers(config) if training else []
    parallel = None if is_op_determinism_enabled() else tf.data.AUTOTUNE
    # Random layers running one batch at a time draw from (seed, step); run in parallel, from (seed, first epoch) on.
    step_seed = seed if parallel is None else None
    if step_seed is None:
        for layer in [augmentation, *mixers]:
            if layer is not None:
                reseed_random_layers(layer, seed, first_epoch)
    labels = tf.constant(array.labels if count else np.zeros(1, np.int32))
    reader = ImageReader(array)
    # The functions below use tf.cond where they branch: autograph would only add its conversion (half a second) to the start.
    plain = tf.autograph.experimental.do_not_convert

    def indices_of(step: Any) -> Any:
        return batch_indices(seed, step, count, batch_size, training=training)

    # The batch's step travels with it only as far as a random layer needs it.
    needs_step = augmentation is not None or bool(mixers)

    def with_labels(indices: Any, images: Any, step: Any) -> tuple[Any, ...]:
        onehot = tf.one_hot(tf.gather(labels, indices), array.num_classes)
        return (images, onehot, step) if needs_step else (images, onehot)

    def steps_from(start: int, stop: int | None = None, *, stored: bool = False) -> Any:
        """Batch after batch, each read (or, ``stored``, gathered) as a whole."""
        read = reader.gather if stored else reader.read

        @plain
        def batch(step: Any) -> Any:
            indices = indices_of(step)
            return with_labels(indices, read(indices), step)

        steps = tf.data.Dataset.counter(start) if stop is None else tf.data.Dataset.range(start, stop)
        return steps.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    @plain
    def indices_with_step(step: Any) -> tuple[Any, Any, Any]:
        indices = indices_of(step)
        return indices, reader.plain_jpegs(indices), tf.fill(tf.shape(indices), step)

    @plain
    def decoded(index: Any, native: Any, step: Any) -> tuple[Any, Any, Any]:
        return index, reader.decode_one(index, native), step

    def decoding_epoch(start: int) -> Any:
        """One epoch from ``start`` decoded image by image in parallel, then stored batch by batch: a quick first batch.

        It decodes every image of its epoch, also one a read-ahead of another iterator over the array has
        stored meanwhile (the same pixels again): asking per image whether it is stored cost 3% of the rate.
        """
        return (
            tf.data.Dataset.range(start, start + batches)
            .map(indices_with_step)
            .unbatch()
            .map(decoded, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .map(plain(lambda indices, images, steps: with_labels(indices, reader.store(indices, images), steps[0])))
        )

    first_step = first_epoch * batches
    if not training or not array.keep:
        dataset = steps_from(0, batches) if not training else steps_from(first_step)
    elif array.complete:
        dataset = steps_from(first_step, stored=True)
    else:
        # The decoding epoch apart: the next epoch starts once it has stored every image, and then only
        # gathers. Choosing between the two (rather than concatenating them) starts both iterators at once,
        # so the switch costs nothing where the epochs meet.
        which = (
            tf.data.Dataset.from_tensors(np.int64(0))
            .repeat(batches)
            .concatenate(tf.data.Dataset.from_tensors(np.int64(1)).repeat())
        )
        segments = [decoding_epoch(first_step), steps_from(first_step + batches, stored=True)]
        dataset = tf.data.Dataset.choose_from_datasets(segments, which)
    if augmentation is not None or mixers:
        dataset = dataset.map(
            plain(lambda images, onehot, step: (tf.cast(images, tf.float32), onehot, step)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    if augmentation is not None:
        dataset = dataset.map(
            plain(lambda images, onehot, step: (seeded(augmentation, step_seed, step)(images, training=True), onehot, step)),
            num_parallel_calls=parallel,
        )
    if mixers:
        dataset = mixed_batches(dataset, mixers, seed, step_seed=step_seed, parallel=parallel)
    if needs_step:
        dataset = dataset.map(plain(lambda images, onehot, step: (images, onehot)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def seeded(layer: Any, seed: int | None, step: Any) -> Any:
    """``layer``, to be called right away, its random streams set from (seed, step) first: see ``step_seed_assignments``.

    ``seed`` None: ``layer`` as it is. A parallel map must not reseed per batch: one batch's reseeding would
    land between another's draws, and CutMix would cut one box and weigh the labels by another.
    """
    import tensorflow as tf

    if seed is None:
        return layer

    def call(*args: Any, **kwargs: Any) -> Any:
        with tf.control_dependencies(step_seed_assignments(layer, seed, step)):
            return layer(*args, **kwargs)

    return call


class ImageReader:
    """Tensor functions reading ``array``'s images: decode one, store a batch, gather a batch, or read a batch (either)."""

    def __init__(self, array: ImageArray) -> None:
        import tensorflow as tf

        count = len(array)
        self.array, self.size = array, array.image_size
        self.filled = array.filled_flags()
        self.paths = tf.constant(array.files.paths if count else [""], dtype=tf.string)
        self.decode_jpeg = jpeg_decoder(self.size)

    def with_pillow(self, path: bytes) -> np.ndarray:
        return decode_with_pillow(path.decode("utf-8"), self.size)

    def plain_jpegs(self, indices: Any) -> Any:
        """Which of images ``indices`` are plain JPEGs, from their header bytes: one Python call a batch, not one an image."""
        import tensorflow as tf

        native = tf.numpy_function(self.array.plain_jpegs, [indices], tf.bool, stateful=False)
        native.set_shape(indices.shape)
        return native

    def decode_one(self, index: Any, native: Any) -> Any:
        """Image ``index``, decoded: by TensorFlow when ``native`` (a plain JPEG), else by Pillow."""
        import tensorflow as tf

        path = tf.gather(self.paths, index)

        def pillow() -> Any:
            image = tf.numpy_function(self.with_pillow, [path], tf.uint8, stateful=False)
            image.set_shape((self.size, self.size, 3))
            return image

        return tf.cond(native, lambda: self.decode_jpeg(tf.io.read_file(path)), pillow)

    def store(self, indices: Any, images: Any) -> Any:
        """``images`` (decoded ``indices``), returned once kept in the array and marked as stored."""
        import tensorflow as tf

        array = self.array
        if not array.keep:
            return images
        if array.variable is None:  # the memmap, written from Python
            written = tf.numpy_function(array.store, [indices, images], tf.int64, stateful=True)
        else:
            written = array.variable.scatter_update(tf.IndexedSlices(images, indices))
        with tf.control_dependencies([written]):
            # Only now may another batch gather these images instead of decoding them.
            marked = self.filled.scatter_update(tf.IndexedSlices(tf.ones_like(indices, tf.bool), indices))
        with tf.control_dependencies([marked]):
            every_image = tf.reduce_all(self.filled.read_value())
        finished = tf.cond(
            every_image,
            lambda: tf.numpy_function(array.finish, [], tf.int64, stateful=True),
            lambda: tf.constant(0, tf.int64),
        )
        with tf.control_dependencies([finished]):
            return tf.identity(images)

    def gather(self, indices: Any) -> Any:
        """The stored images ``indices``: one gather."""
        import tensorflow as tf

        if self.array.variable is not None:
            return tf.gather(self.array.variable, indices)
        images = tf.numpy_function(self.array.gather, [indices], tf.uint8, stateful=False)
        images.set_shape((None, self.size, self.size, 3))
        return images

    def read(self, indices: Any) -> Any:
        """Images ``indices``: gathered when all are stored, else decoded one after another (and stored)."""
        import tensorflow as tf

        def decoded() -> Any:
            spec = tf.TensorSpec((self.size, self.size, 3), tf.uint8)
            pairs = (indices, self.plain_jpegs(indices))
            decoded = tf.map_fn(lambda pair: self.decode_one(*pair), pairs, fn_output_signature=spec, parallel_iterations=8)
            return self.store(indices, decoded)

        return tf.cond(tf.reduce_all(tf.gather(self.filled, indices)), lambda: self.gather(indices), decoded)


def mixed_batches(dataset: Any, mixers: list[Any], seed: int, *, step_seed: int | None, parallel: Any) -> Any:
    """Each batch of (images, one-hot labels, step) through one of ``mixers`` (MixUp, CutMix), drawn per batch as timm does.

    With one mixer every batch goes through it. With two, a coin from (seed, step) picks one, so half
    the batches are MixUp's and half CutMix's, never both at once.
    """
    import tensorflow as tf

    def mix(layer: Any, images: Any, labels: Any, step: Any) -> tuple[Any, Any]:
        mixed = seeded(layer, step_seed, step)({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def mix_one(images: Any, labels: Any, step: Any) -> tuple[Any, Any, Any]:
        if len(mixers) == 1:
            return (*mix(mixers[0], images, labels, step), step)
        coin = mixing_coin(seed, step)
        pair = tf.cond(coin == 0, lambda: mix(mixers[0], images, labels, step), lambda: mix(mixers[1], images, labels, step))
        return (*pair, step)

    return dataset.map(tf.autograph.experimental.do_not_convert(mix_one), num_parallel_calls=parallel)
