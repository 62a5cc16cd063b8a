"""Decoding one image file to a square uint8 RGB array, the same way wherever it is read.

Plain JPEGs go through TensorFlow's decoder at a reduced DCT scale, then an area resize; every other
file (PNG, GIF, WebP, CMYK or EXIF-turned JPEGs, ...) through Pillow. Decoding runs on a shared pool
of threads.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from inat_keras.devices import usable_cores

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
# How far a reduced DCT scale may take the short side below the target (which the area resize then enlarges
# back): 0.7 gives up 1.7 dB of quality, still 4.8 dB above Keras's loader, for 11% more images/s
# (docs/performance.md, "The resize trade").
DRAFT_FRACTION = 0.7
# How much of a file ``native_jpeg_header`` reads: a header (EXIF, XMP, tables) running past it goes to Pillow.
HEADER_BYTES = 65536
# Start-of-frame markers: the frame header holds the number of colour components.
FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
START_OF_SCAN = 0xDA
APP1 = 0xE1  # where JPEGs keep EXIF and XMP, the two places Pillow reads an orientation from
XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow's own pattern (Image.getexif)


def exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of a TIFF block's first directory (1 when it has none); None when the block is unreadable."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    (directory,) = struct.unpack_from(order + "I", tiff, 4)
    if directory + 2 > len(tiff):
        return None
    (entries,) = struct.unpack_from(order + "H", tiff, directory)
    for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
        if entry + 12 > len(tiff):
            return None
        tag, _type, _count, value = struct.unpack_from(order + "HHIH", tiff, entry)
        if tag == EXIF_ORIENTATION:
            return value
    return 1


def draft_side(size: int) -> int:
    """The short side a reduced DCT scale must keep for a ``size`` target: ``DRAFT_FRACTION`` of it."""
    return math.ceil(DRAFT_FRACTION * size)


def native_jpeg_header(head: bytes) -> bool:
    """Whether TensorFlow's JPEG decoder shows the same picture as ``to_rgb`` would, from a file's first bytes.

    That is a JPEG in colour or grey (1 or 3 components: CMYK goes to Pillow) whose header, up to its
    start of scan, sits within ``head`` and turns nothing: no EXIF orientation but 1, and no XMP one
    (TensorFlow ignores both; Pillow's ``exif_transpose`` applies them). It reads the markers in a few
    microseconds, so the pipeline asks it for each batch's files as it decodes them; anything it cannot
    read is not native, and Pillow's path, which shows every file correctly, reports what is wrong.
    """
    if head[:3] != b"\xff\xd8\xff":
        return False
    position, components = 2, 0
    while position + 4 <= len(head):
        if head[position] != 0xFF:
            return False
        marker = head[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker == START_OF_SCAN:
            return components in (1, 3)
        (length,) = struct.unpack_from(">H", head, position + 2)
        segment = head[position + 4 : position + 2 + length]
        if marker in FRAME_MARKERS and len(segment) >= 6:
            components = segment[5]
        elif marker == APP1 and segment.startswith(b"Exif\0\0"):
            if exif_orientation(segment[6:]) != 1:
                return False
        elif marker == APP1 and any(match[2] != b"1" for match in XMP_ORIENTATION.finditer(segment)):
            return False
        position += 2 + length
    return False


def quiet_size_warning() -> None:
    """Never show Pillow's ``DecompressionBombWarning`` (more than ``Image.MAX_IMAGE_PIXELS`` pixels) to the user.

    The data check decides about such images once, as ``image too large`` (``data.check.inspect_bytes``), so
    training never decodes them; the warning would only repeat that in Pillow's words, from inside a thread.
    """
    # Checked every time, not once: a caller's warnings.catch_warnings() restores the filters it found.
    if not any(entry[0] == "ignore" and entry[2] is Image.DecompressionBombWarning for entry in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def native_jpeg(path: str | os.PathLike) -> bool:
    """``native_jpeg_header`` of a file; False for a file that cannot be read, so Pillow's path reports the error."""
    try:
        with open(path, "rb") as file:
            return native_jpeg_header(file.read(HEADER_BYTES))
    except OSError:
        return False


@functools.cache
def jpeg_decoder(size: int) -> Any:
    """A TensorFlow function: JPEG bytes to a ``size`` x ``size`` x 3 uint8 image, the GIL never taken.

    Decodes at the largest DCT scale that keeps the short side at least ``draft_side(size)`` (what
    ``draft`` picks for it), then averages the covered pixels (area resize: antialiased, and cheaper
    than a bilinear filter with antialiasing); images smaller than ``size`` at full scale are enlarged
    bilinearly instead, since area enlarges by repeating pixels.
    """
    import tensorflow as tf

    def decode_at(contents: Any, scale: int) -> Callable[[], Any]:
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=scale)

    def resize(image: Any, method: str, antialias: bool = False) -> Callable[[], Any]:
        return lambda: tf.image.resize(image, (size, size), method=method, antialias=antialias)

    @tf.function(input_signature=[tf.TensorSpec((), tf.string)], autograph=False)  # explicit switch_case and cond
    def decode(contents: Any) -> Any:
        fits = tf.reduce_min(tf.image.extract_jpeg_shape(contents)[:2]) // draft_side(size)
        scale_index = tf.reduce_sum(tf.cast(fits >= tf.constant(JPEG_SCALES[1:]), tf.int32))
        image = tf.switch_case(scale_index, [decode_at(contents, scale) for scale in JPEG_SCALES])
        image.set_shape((None, None, 3))
        by_area = (scale_index > 0) | (tf.reduce_min(tf.shape(image)[:2]) >= size)
        resized = tf.cond(by_area, resize(image, "area"), resize(image, "bilinear", antialias=True))
        # Both filters average non-negative weights, so values stay within 0-255: + 0.5 rounds.
        return tf.cast(resized + 0.5, tf.uint8)

    return decode


def decode_with_pillow(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file Pillow reads, at a reduced JPEG scale where the target allows, with an antialiased resize."""
    quiet_size_warning()
    with Image.open(path) as image:
        image.draft("RGB", (draft_side(size), draft_side(size)))
        rgb = to_rgb(image)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(rgb, dtype=np.uint8)


def decoder_reason(error: Any) -> str:
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


# Images per tf.numpy_function call: each call holds the GIL for about 0.2 ms of bookkeeping, time
# the decoding threads wait for; a chunk pays it once.
DECODE_CHUNK = 32
DECODE_TASK = 4  # files per thread-pool task
# Part of a file cache's name: caches written by an older decoder (Pillow for every file before 2, DCT
# scales keeping the whole target side before 3) hold other pixels, so they are not reused.
DECODER_VERSION = 3


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """The shared decoding threads.

    Pillow releases the GIL while it decodes and resizes, so they use every core; its header parsing,
    allocation and conversions hold it (about 1 ms per photo), which caps them near 900 images/s.
    """
    return ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="inat-decode")


def on_decode_pool(count: int, work: Callable[[int], None]) -> None:
    """``work(i)`` for i in range(count) on the decoding threads, ``DECODE_TASK`` indices per task.

    A few files per task: a future per file costs GIL time of its own. list() waits for every task
    and re-raises the first error.
    """

    def task(start: int) -> None:
        for i in range(start, min(start + DECODE_TASK, count)):
            work(i)

    list(decode_pool().map(task, range(0, count, DECODE_TASK)))


def load_images(
    paths: Sequence[str | os.PathLike], size: int, decode: Callable[[str | os.PathLike, int], np.ndarray] = load_image
) -> np.ndarray:
    """``decode`` (``load_image``) of each path, in parallel, stacked in order: (len(paths), size, size, 3) uint8."""
    images = np.empty((len(paths), size, size, 3), np.uint8)

    def decode_into(i: int) -> None:
        images[i] = decode(paths[i], size)

    on_decode_pool(len(paths), decode_into)
    return images
