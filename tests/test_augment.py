"""augment.RandomAffine: one warp for zoom, shift and rotation, that XLA compiles."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from inat_keras.models.augment import RandomAffine, load_model, warp


def images(count: int = 2, size: int = 6) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")


def warped(pictures: np.ndarray, scale: float = 1.0, angle: float = 0.0, shift_x: float = 0.0, shift_y: float = 0.0):
    full = lambda value: np.full((len(pictures),), value, "float32")
    return np.asarray(warp(pictures, full(scale), full(angle), full(shift_x), full(shift_y)))


def test_the_warp_turns_shifts_and_zooms_like_numpy_with_mirrored_borders() -> None:
    pictures = images()
    np.testing.assert_array_equal(warped(pictures), pictures)
    np.testing.assert_allclose(warped(pictures, angle=np.pi / 2), np.rot90(pictures, axes=(1, 2)), atol=1e-3)
    np.testing.assert_allclose(warped(pictures, angle=np.pi), pictures[:, ::-1, ::-1], atol=1e-3)
    # Shown 2 pixels further right; the last 2 columns are the right border mirrored (d c b a | a b c d).
    mirrored = np.concatenate([pictures[:, :, 2:], pictures[:, :, ::-1][:, :, :2]], axis=2)
    np.testing.assert_array_equal(warped(pictures, shift_x=2), mirrored)
    np.testing.assert_array_equal(warped(pictures, shift_y=-1), np.concatenate([pictures[:, :1], pictures[:, :-1]], axis=1))
    # Zooming in by 2 on a horizontal ramp halves its slope about the centre.
    ramp = np.tile(np.arange(8, dtype="float32")[None, None, :, None] * 10, (1, 8, 1, 3))
    np.testing.assert_allclose(warped(ramp, scale=0.5)[0, 0, :, 0], 35 + (np.arange(8) - 3.5) * 5, atol=1e-4)


def test_the_layer_changes_training_images_only_and_a_seed_repeats_it() -> None:
    pictures = images(4, 16)
    layer = RandomAffine(seed=1)
    np.testing.assert_array_equal(np.asarray(layer(pictures, training=False)), pictures)
    first = np.asarray(layer(pictures, training=True))
    assert first.shape == pictures.shape and not np.allclose(first, pictures)
    assert not np.allclose(np.asarray(layer(pictures, training=True)), first)  # new draws every call
    np.testing.assert_array_equal(np.asarray(RandomAffine(seed=1)(pictures, training=True)), first)
    # Each image gets its own draw: identical inputs come out different.
    same = np.repeat(pictures[:1], 4, axis=0)
    out = np.asarray(RandomAffine(seed=2)(same, training=True))
    assert not np.allclose(out[0], out[1])


def test_xla_compiles_the_warp_to_the_same_pixels() -> None:
    pictures = tf.constant(images(3, 24))
    params = [
        tf.constant([0.6, 0.8, 1.0]),
        tf.constant([0.2, -0.1, 0.0]),
        tf.constant([3.0, -2.5, 0.0]),
        tf.constant([0.0, 1.5, -4.0]),
    ]
    plain = tf.function(warp)(pictures, *params)
    compiled = tf.function(warp, jit_compile=True)(pictures, *params)
    np.testing.assert_allclose(compiled.numpy(), plain.numpy(), atol=1e-3)


def test_a_model_holding_the_layer_saves_and_loads_with_its_settings(tmp_path: Path) -> None:
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2)(
        keras.layers.Flatten()(RandomAffine(zoom_in=0.2, shift=0.05, rotation=0.01, seed=7, name="warp")(inputs))
    )
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    layer = loaded.get_layer("warp")
    assert isinstance(layer, RandomAffine)
    assert (layer.zoom_in, layer.shift, layer.rotation, layer.seed) == (0.2, 0.05, 0.01, 7)
    pictures = images(2, 16)
    np.testing.assert_allclose(loaded.predict(pictures, verbose=0), model.predict(pictures, verbose=0), rtol=1e-6)
