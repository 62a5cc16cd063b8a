"""The tf.data pipeline: decoded images cached (memory or disk), shuffled, batched and prefetched."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.config import DataConfig
from inat_keras.data.decode import DECODE_CHUNK, DECODER_VERSION, decode_with_pillow, jpeg_decoder, load_images, native_jpegs
from inat_keras.data.files import LabelledFiles
from inat_keras.models.augment import augments_in_model, make_augmentation


def natively_decoded(files: LabelledFiles, image_size: int, num_classes: int) -> Any:
    """(uint8 image, one-hot label) of plain JPEGs, decoded by TensorFlow on every core tf.data gives the map."""
    import tensorflow as tf

    decode = jpeg_decoder(image_size)
    read = lambda path, label: (decode(tf.io.read_file(path)), tf.one_hot(label, num_classes))
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files.paths, dtype=tf.string), tf.constant(files.labels, dtype=tf.int32))
    )
    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pillow_decoded(files: LabelledFiles, image_size: int, num_classes: int) -> Any:
    """(uint8 image, one-hot label) through Pillow, ``DECODE_CHUNK`` files per call on the decoding threads."""
    import tensorflow as tf

    def decode_chunk(paths: np.ndarray) -> np.ndarray:
        return load_images([path.decode("utf-8") for path in paths], image_size, decode_with_pillow)

    def read(paths: Any, labels: Any) -> tuple[Any, Any]:
        images = tf.numpy_function(decode_chunk, [paths], tf.uint8, stateful=False)
        images.set_shape((None, image_size, image_size, 3))
        return images, tf.one_hot(labels, num_classes)

    paths = tf.constant(files.paths, dtype=tf.string)
    labels = tf.constant(files.labels, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).batch(DECODE_CHUNK)
    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def decoded_images(files: LabelledFiles, image_size: int, num_classes: int) -> Any:
    """A tf.data dataset of (uint8 image, one-hot label) in the order of ``files``, decoded on all cores.

    Plain JPEGs go through TensorFlow's decoder, which never takes the GIL, and the rest through
    Pillow in chunks; ``choose_from_datasets`` takes each file from its decoder in turn, so the order
    (and every seeded shuffle after it) is the files' own.
    """
    import tensorflow as tf

    native = native_jpegs(files.paths)
    pick = lambda wanted: LabelledFiles(
        [path for path, n in zip(files.paths, native, strict=True) if n == wanted],
        [label for label, n in zip(files.labels, native, strict=True) if n == wanted],
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
) -> Any:
    """Batches of (float32 0-255 image, one-hot label): decode, cache, [shuffle, augment], prefetch.

    The cache holds resized uint8 images (4x smaller than float32), so epochs after
    the first read memory (or ``config.cache`` files) instead of decoding JPEGs again.
    """
    images = cached_images(files, config, num_classes, cache_name=cache_name)
    return batched(images, config, len(files), training=training)


def cached_images(files: LabelledFiles, config: DataConfig, num_classes: int, *, cache_name: str = "") -> Any:
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
    for path, label in zip(files.paths, files.labels, strict=True):
        digest.update(f"{path}\t{label}\n".encode())
    return f"{image_size}px-{digest.hexdigest()[:12]}"


def batched(dataset: Any, config: DataConfig, count: int, *, training: bool) -> Any:
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
