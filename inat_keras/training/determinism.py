"""Exact resume: every random stream of training restarts each epoch from (seed, epoch).

The data half lives in ``data.pipeline`` (each epoch's order, augmentation and mixing coins);
this module does the model half: Keras's global seed and the ``SeedGenerator`` of every random
layer (Dropout, in-model augmentation) are set at the start of each epoch, so an epoch resumed
after a kill draws what it drew the first time. With ``--deterministic`` TensorFlow's kernels also
add up in a fixed order, which makes the result bit-identical on a CPU.
"""

from __future__ import annotations

from typing import Any

from inat_keras.models.seeding import epoch_seed, reseed_random_layers


def enable_determinism(deterministic: bool) -> None:
    """Turn TensorFlow's op determinism on for ``--deterministic`` (before any dataset or model is built)."""
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def reseed_epoch(model: Any, seed: int, epoch: int) -> None:
    """Keras's global seed and each random layer's state in ``model`` from (seed, epoch)."""
    import keras

    keras.utils.set_random_seed(epoch_seed(seed, epoch))
    reseed_random_layers(model, seed, epoch)


def epoch_reseeding(seed: int) -> Any:
    """A callback calling ``reseed_epoch`` at the start of every epoch."""
    import keras

    class EpochReseeding(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            reseed_epoch(self.model, seed, epoch)

    return EpochReseeding()
