"""Random streams as functions of (seed, epoch): a resumed run draws what an uninterrupted one did."""

from __future__ import annotations

from typing import Any

import numpy as np


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 31-bit seed for ``stream`` in ``epoch`` of a run seeded ``seed`` (NumPy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_generators(layer: Any) -> list[tuple[int, Any]]:
    """Every ``SeedGenerator`` of ``layer`` and the layers inside it, each with its stream number (stable per model)."""
    return [
        (1 + 64 * index + number, generator)
        for index, inner in enumerate(layer._flatten_layers(include_self=True, recursive=True))
        for number, generator in enumerate(getattr(inner, "_seed_generators", []))
    ]


def reseed_random_layers(layer: Any, seed: int, epoch: int) -> None:
    """Set the ``SeedGenerator`` state of ``layer`` and every layer inside it from (seed, epoch).

    Dropout, the augmentation layers, MixUp and CutMix each draw from their own generator, whose
    state otherwise carries on from wherever the process left it: after a resume it would restart
    at the layer's initial seed.
    """
    for stream, generator in seed_generators(layer):
        generator.state.assign(np.array([epoch_seed(seed, epoch, stream), 0], generator.state.dtype))


def step_seed_assignments(layer: Any, seed: int, step: Any) -> list[Any]:
    """Ops setting every ``SeedGenerator`` inside ``layer`` from (seed, step), for a tf.data map to run before the layer.

    The pipeline's random layers (augmentation, MixUp, CutMix) are reseeded for every batch from the
    batch's step, so what a batch draws does not depend on what ran before it.
    """
    import tensorflow as tf

    generators = [generator for _, generator in seed_generators(layer)]
    if not generators:
        return []
    pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    draws = tf.random.stateless_uniform([len(generators)], seed=pair, minval=0, maxval=2**31 - 1, dtype=tf.int64)
    return [
        generator.state.assign(tf.stack([tf.cast(draws[i], generator.state.dtype), tf.zeros((), generator.state.dtype)]))
        for i, generator in enumerate(generators)
    ]
