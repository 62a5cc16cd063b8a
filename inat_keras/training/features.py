"""The frozen-backbone feature cache: run the backbone once, train the head on its pooled features.

With the backbone frozen and no augmentation, every epoch would push the same images through
the same backbone to get the same pooled features; almost all of the compute of an epoch. The
head model here shares its layers (and so its weights) with the full model, and the checkpoints
save the full model, so the run's ``best.keras`` still maps images to labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from inat_keras.config import RunConfig
from inat_keras.models.backbones import FEATURES_NAME
from inat_keras.models.transfer import head_layers
from inat_keras.training.checkpoints import EpochCheckpoint
from inat_keras.training.runtime import training_metrics


def feature_extractor(model: Any) -> Any:
    """The full model cut at the pooled features (same layers, same weights)."""
    import keras

    return keras.Model(model.input, model.get_layer(FEATURES_NAME).output, name="features")


def extract_features(extractor: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of every batch of ``dataset``, in inference mode."""
    features, labels = [], []
    for images, batch_labels in dataset:
        # predict_on_batch runs a compiled graph; an eager call of a deep backbone is several times slower.
        features.append(np.asarray(extractor.predict_on_batch(images), dtype=np.float32))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(features), np.concatenate(labels)


def head_model(model: Any) -> Any:
    """A model from pooled features to labels made of the full model's own head layers."""
    import keras

    features = keras.Input(shape=(model.get_layer(FEATURES_NAME).output.shape[-1],), name="features")
    x = features
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(features, x, name="head")


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle_seed: int | None) -> Any:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(features), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit_head_on_features(
    model: Any, config: RunConfig, datasets: dict[str, Any], fit_kwargs: dict[str, Any], *, log: Callable[[str], None]
) -> None:
    """Train ``model``'s head on cached features; ``model`` must be compiled (its optimizer is shared)."""

    extractor = feature_extractor(model)
    train_x, train_y = extract_features(extractor, datasets["train"])
    val_x, val_y = extract_features(extractor, datasets["validation"])
    log(f"feature cache: backbone run once on {len(train_x)} + {len(val_x)} images ({train_x.shape[1]} features each)")

    with model.distribute_strategy.scope():
        head = head_model(model)
        # The same optimizer object: its state is saved with the full model and restored on --resume.
        head.compile(
            optimizer=model.optimizer,
            loss=model.loss,
            metrics=training_metrics(),
            jit_compile=model.jit_compile,
        )
    for callback in fit_kwargs["callbacks"]:
        if isinstance(callback, EpochCheckpoint):
            callback.saved_model = model
    head.fit(
        feature_dataset(train_x, train_y, config.data.batch_size, shuffle_seed=config.data.seed),
        validation_data=feature_dataset(val_x, val_y, config.data.batch_size, shuffle_seed=None),
        shuffle=False,
        **fit_kwargs,
    )
