"""Augmentation: the ``--augment`` policies, random erasing, MixUp/CutMix, and where they run.

The per-image layers (``image_augmentation``) run in the tf.data pipeline or as the model's first
layers (``--augment-placement``); MixUp and CutMix mix labels too, so they always run in the
pipeline, on training batches only (``data.pipeline.batched``).

RandomAffine: random zoom, shift and rotation as one bilinear warp that XLA compiles. Keras's
RandomZoom, RandomTranslation and RandomRotation each resample the image, three interpolations in
all, with ``ImageProjectiveTransformV3``, which has no XLA kernel: a model holding them trains
without XLA (Keras only warns). This layer draws the three at once and resamples once, with
gathers that XLA compiles, so a GPU run augments inside its compiled train step.
"""

from __future__ import annotations

import math
import os
from typing import Any

import keras
from keras import ops

from inat_keras import devices
from inat_keras.config import AUGMENT_PLACEMENTS, AUGMENT_POLICIES, DataConfig
from inat_keras.errors import UserError


def reflect(coordinate: Any, size: Any) -> Any:
    """Pixel coordinates folded into [0, size - 1] by mirroring at the borders (d c b a | a b c d | d c b a)."""
    period = 2.0 * size
    folded = ops.mod(coordinate + 0.5, period) - 0.5
    folded = ops.where(folded > size - 0.5, period - 1.0 - folded, folded)
    return ops.clip(folded, 0.0, size - 1.0)


def bilinear_sample(images: Any, rows: Any, columns: Any) -> Any:
    """``images`` (batch, height, width, channels) read at float pixel coordinates (batch, height, width) inside them."""
    batch, height, width, channels = ops.shape(images)
    top, left = ops.floor(rows), ops.floor(columns)
    down, right = (rows - top)[..., None], (columns - left)[..., None]
    top, left = ops.cast(top, "int32"), ops.cast(left, "int32")
    bottom, far_right = ops.minimum(top + 1, height - 1), ops.minimum(left + 1, width - 1)
    pixels = ops.reshape(images, (-1, channels))
    image_start = (ops.arange(batch, dtype="int32") * (height * width))[:, None, None]

    def at(row: Any, column: Any) -> Any:
        return ops.take(pixels, image_start + row * width + column, axis=0)

    upper = at(top, left) * (1.0 - right) + at(top, far_right) * right
    lower = at(bottom, left) * (1.0 - right) + at(bottom, far_right) * right
    return upper * (1.0 - down) + lower * down


def warp(images: Any, scale: Any, angle: Any, shift_x: Any, shift_y: Any) -> Any:
    """Each image resampled through its own affine map, borders reflected.

    The output pixel at offset (x, y) from the centre shows the input at ``scale`` times that offset
    rotated by ``angle`` (radians, anticlockwise as displayed), moved by (``shift_x``, ``shift_y``)
    pixels. All parameters have shape (batch,).
    """
    _, height, width, _ = ops.shape(images)
    h, w = ops.cast(height, "float32"), ops.cast(width, "float32")
    rows, columns = ops.meshgrid(
        ops.arange(height, dtype="float32") - (h - 1.0) / 2.0,
        ops.arange(width, dtype="float32") - (w - 1.0) / 2.0,
        indexing="ij",
    )
    cos = (ops.cos(angle) * scale)[:, None, None]
    sin = (ops.sin(angle) * scale)[:, None, None]
    # With rows growing downwards, this is an anticlockwise turn on screen (np.rot90's for a quarter).
    source_x = cos * columns - sin * rows + (w - 1.0) / 2.0 + shift_x[:, None, None]
    source_y = sin * columns + cos * rows + (h - 1.0) / 2.0 + shift_y[:, None, None]
    return bilinear_sample(images, reflect(source_y, h), reflect(source_x, w))


@keras.saving.register_keras_serializable(package="inat_keras")
class RandomAffine(keras.layers.Layer):
    """Zooms each training image in by up to ``zoom_in`` (0.4: down to 60 % of it shown), shifts it by
    up to ``shift`` of its size each way and turns it by up to ``rotation`` of a full turn.

    Images pass unchanged at inference (``training=False``), like Keras's random layers.
    """

    def __init__(
        self, zoom_in: float = 0.4, shift: float = 0.1, rotation: float = 0.04, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.zoom_in, self.shift, self.rotation, self.seed = zoom_in, shift, rotation, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        shape = ops.shape(images)
        draws = keras.random.uniform((shape[0], 4), seed=self.seed_generator)
        signed = 2.0 * draws - 1.0
        return warp(
            images,
            scale=1.0 - self.zoom_in * draws[:, 0],
            angle=signed[:, 1] * self.rotation * 2.0 * math.pi,
            shift_x=signed[:, 2] * self.shift * ops.cast(shape[2], "float32"),
            shift_y=signed[:, 3] * self.shift * ops.cast(shape[1], "float32"),
        )

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "zoom_in": self.zoom_in,
            "shift": self.shift,
            "rotation": self.rotation,
            "seed": self.seed,
        }


def load_model(path: str | os.PathLike, **kwargs: Any) -> keras.Model:
    """``keras.models.load_model``, with this module's layers registered first (importing it does that)."""
    return keras.models.load_model(path, **kwargs)


# -- augmentation layers ------------------------------------------------------------------


AUGMENT_PREFIX = "augment_"


def augmentation_layers(
    seed: int | None = None, *, policy: str = "basic", magnitude: float = 0.5, ops: int = 2
) -> list[keras.layers.Layer]:
    """The ``--augment`` stack of ``policy``: a random crop (zoom in and shift) and a horizontal flip, then

    - "basic": a small rotation (in the same warp) and colour jitter;
    - "randaugment": ``keras.layers.RandAugment`` (``ops`` operations of strength ``magnitude``);
    - "augmix": ``keras.layers.AugMix``.

    Keras layers (the warp is ours: ``augment.RandomAffine``, which XLA compiles): they change
    images only when called with ``training=True``, so the same layers serve in the tf.data map and
    inside a model (where inference skips them). RandAugment and AugMix rotate, shear and translate
    with Keras's own warps, which XLA cannot compile (see ``training.runtime.xla_blockers``).
    """
    import keras

    # float32 whatever the mixed-precision policy: float16 arithmetic on a CPU is emulated (slower) and
    # rounds 0-255 pixel values.
    f32: dict[str, Any] = {"seed": seed, "dtype": "float32"}
    if policy == "basic":
        return [
            RandomAffine(zoom_in=0.4, shift=0.1, rotation=0.04, name=f"{AUGMENT_PREFIX}affine", **f32),
            keras.layers.RandomFlip("horizontal", name=f"{AUGMENT_PREFIX}flip", **f32),
            keras.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.2,
                contrast_factor=0.2,
                saturation_factor=0.2,
                name=f"{AUGMENT_PREFIX}colour",
                **f32,
            ),
        ]
    # As timm's recipes: the crop and flip, then the policy, which brings its own rotations and colour changes.
    crop_and_flip = [
        RandomAffine(zoom_in=0.4, shift=0.1, rotation=0.0, name=f"{AUGMENT_PREFIX}affine", **f32),
        keras.layers.RandomFlip("horizontal", name=f"{AUGMENT_PREFIX}flip", **f32),
    ]
    if policy == "randaugment":
        return [
            *crop_and_flip,
            keras.layers.RandAugment(
                value_range=(0, 255), num_ops=ops, factor=magnitude, name=f"{AUGMENT_PREFIX}randaugment", **f32
            ),
        ]
    if policy == "augmix":
        return [*crop_and_flip, keras.layers.AugMix(value_range=(0, 255), name=f"{AUGMENT_PREFIX}augmix", **f32)]
    raise UserError(f"--augment-policy {policy}: choose one of {', '.join(AUGMENT_POLICIES)}")


def image_augmentation(config: DataConfig) -> list[keras.layers.Layer]:
    """Every per-image random layer ``config`` asks for: the ``--augment`` policy's stack, then random erasing."""
    import keras

    layers = []
    if config.augment:
        layers = augmentation_layers(
            config.seed, policy=config.augment_policy, magnitude=config.randaugment_magnitude, ops=config.randaugment_ops
        )
    if config.random_erasing:
        # factor (p, p): Keras draws each image's erasing probability from [low, high]; a single p would mean p / 2.
        layers.append(
            keras.layers.RandomErasing(
                factor=(config.random_erasing, config.random_erasing),
                value_range=(0, 255),
                seed=config.seed,
                dtype="float32",
                name=f"{AUGMENT_PREFIX}erasing",
            )
        )
    return layers


def is_augmentation_layer(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(AUGMENT_PREFIX)


def make_augmentation(seed: int | None = None, **policy: Any) -> keras.Sequential:
    """``augmentation_layers`` as one Sequential (``policy``: its keyword arguments)."""
    import keras

    return keras.Sequential(augmentation_layers(seed, **policy), name="augmentation")


def batch_mixers(config: DataConfig) -> list[keras.layers.Layer]:
    """``keras.layers.MixUp`` and/or ``keras.layers.CutMix`` as ``config`` asks: they mix images and one-hot labels.

    Both draw the mixing weight from Beta(alpha, alpha), as timm's ``--mixup``/``--cutmix`` do:
    CutMix's ``factor=(alpha, alpha)`` fixes the alpha it would otherwise draw from [0, factor].
    """
    import keras

    mixers = []
    if config.mixup:
        mixers.append(keras.layers.MixUp(alpha=config.mixup, seed=config.seed, dtype="float32", name=f"{AUGMENT_PREFIX}mixup"))
    if config.cutmix:
        mixers.append(
            keras.layers.CutMix(
                factor=(config.cutmix, config.cutmix), seed=config.seed, dtype="float32", name=f"{AUGMENT_PREFIX}cutmix"
            )
        )
    return mixers


def augments_images(config: DataConfig) -> bool:
    """Whether training images pass through per-image random layers (``--augment``, ``--random-erasing``)."""
    return config.augment or config.random_erasing > 0


def randomises_training_data(config: DataConfig) -> bool:
    """Whether an epoch's training batches differ from the last one's beyond their order (augmentation or mixing)."""
    return augments_images(config) or config.mixup > 0 or config.cutmix > 0


def resolve_augment_placement(placement: str) -> str:
    """ "pipeline" or "model"; "auto" puts augmentation in the model when a GPU is present.

    On a GPU the warps and colour jitter take microseconds, while the CPU's tf.data map would
    starve it (a few hundred images/s per core); on a CPU both share the same cores, and the
    pipeline's parallel map overlaps them with training.
    """

    if placement not in AUGMENT_PLACEMENTS:
        raise UserError(f"--augment-placement {placement}: choose one of {', '.join(AUGMENT_PLACEMENTS)}")
    if placement != "auto":
        return placement
    return "model" if devices.gpu_available() else "pipeline"


def augments_in_model(config: DataConfig) -> bool:
    return augments_images(config) and resolve_augment_placement(config.augment_placement) == "model"


def augmentation_for_model(config: DataConfig) -> list[keras.layers.Layer] | None:
    """The layers a model builder puts after its input, or None when the pipeline augments.

    MixUp and CutMix are never among them: they mix labels too, which a model never sees; the
    pipeline applies them to each training batch wherever the per-image layers run.
    """
    return image_augmentation(config) if augments_in_model(config) else None
