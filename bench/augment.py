"""Images per second of the ``--augment`` stack: one warp (``augment.RandomAffine``) against Keras's three.

Both stacks zoom in by up to 40 %, shift by up to 10 %, turn by up to 0.04 of a turn with mirrored
borders, then flip and jitter colours with the same Keras layers:

- ours: ``inat_keras.data.augmentation_layers`` (``RandomAffine``: one bilinear resampling, by gathers);
- Keras: ``RandomZoom`` + ``RandomTranslation`` + ``RandomRotation`` (three resamplings by
  ``ImageProjectiveTransformV3``, which has no XLA kernel).

Each runs on batches of random 0-255 images in a tf.data map (``--augment-placement pipeline``) and as
a compiled function, the way a model's first layers run (``--augment-placement model``); ours also
with XLA, which Keras's stack cannot use. Each is measured ``--rounds`` times, alternating, and
the medians are reported. The last line is ``augment_speedup_pipeline=X augment_speedup_compiled_xla=Y``
(ours in the map over Keras's in the map; ours with XLA over Keras's compiled without it).

    python bench/augment.py --image-size 224 --batch-size 32 --batches 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def keras_warps(seed: int) -> list:
    """The geometric augmentation as Keras's own layers, with the settings ``RandomAffine`` draws from."""
    import keras

    f32 = {"seed": seed, "dtype": "float32", "fill_mode": "reflect"}
    return [
        keras.layers.RandomZoom(height_factor=(-0.4, 0.0), **f32),
        keras.layers.RandomTranslation(0.1, 0.1, **f32),
        keras.layers.RandomRotation(0.04, **f32),
    ]


def stacks(seed: int = 0) -> dict[str, list]:
    from inat_keras.models.augment import augmentation_layers

    ours = augmentation_layers(seed)
    flip_and_colour = augmentation_layers(seed)[1:]
    return {"ours": ours, "Keras": keras_warps(seed) + flip_and_colour}


def apply_all(layers: list) -> Callable:
    def augment(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    return augment


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of ``run``, which returns how many images it augmented."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = run()
    return count / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / count


def ways_to_run(layers: list, batch, batches: int, *, xla: bool) -> dict[str, Callable[[], int]]:
    import tensorflow as tf

    augment = apply_all(layers)
    mapped = tf.data.Dataset.from_tensors(batch).repeat(batches).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    functions = {"compiled": tf.function(augment)}
    if xla:
        functions["compiled + XLA"] = tf.function(augment, jit_compile=True)

    def through_map() -> int:
        return sum(int(images.shape[0]) for images in mapped)

    def through(function) -> Callable[[], int]:
        def run() -> int:
            for _ in range(batches):
                function(batch).numpy()
            return batches * int(batch.shape[0])

        return run

    return {"tf.data map": through_map, **{name: through(function) for name, function in functions.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, alternating; medians are reported")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from inat_keras.devices import usable_cores

    rng = np.random.default_rng(0)
    batch = tf.constant(rng.uniform(0, 255, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32"))
    runs = {}
    layers_of = stacks()
    for stack, layers in layers_of.items():
        for way, run in ways_to_run(layers, batch, args.batches, xla=stack == "ours").items():
            run()  # tracing and compilation are not timed
            runs[(stack, way)] = run
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in runs}
    for number in range(1, args.rounds + 1):
        for key, run in runs.items():
            samples[key].append(timed(run))
        print(f"round {number}/{args.rounds}: " + ", ".join(f"{s} {w} {samples[(s, w)][-1][0]:.0f}" for s, w in runs), flush=True)

    rates = {key: (median(r for r, _ in values), median(c for _, c in values)) for key, values in samples.items()}
    print(
        f"\n--augment at {args.image_size}x{args.image_size}, batch {args.batch_size}, {usable_cores()} CPU cores, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'stack':<8}{'run as':<16}{'images/s':>10}{'CPU ms/image':>14}")
    for (stack, way), (rate, cpu) in rates.items():
        print(f"{stack:<8}{way:<16}{rate:>10.1f}{cpu:>14.2f}")
    ours, theirs = layers_of
    pipeline = rates[(ours, "tf.data map")][0] / rates[(theirs, "tf.data map")][0]
    compiled = rates[(ours, "compiled + XLA")][0] / rates[(theirs, "compiled")][0]
    print(f"augment_speedup_pipeline={pipeline:.2f} augment_speedup_compiled_xla={compiled:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
