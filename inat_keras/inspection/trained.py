"""A trained model and its class names, from a run directory or a ``.keras`` file.

Class names travel with the run (``config.json`` ``class_names``), never with the folder order
of whatever data is at hand: a model's output ``i`` means ``class_names[i]`` of its own run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.config import RunConfig
from inat_keras.data.decode import decode_pool, load_image
from inat_keras.errors import UserError
from inat_keras.models.augment import load_model
from inat_keras.runs import BEST_MODEL, CONFIG_FILE, damaged_model_file, load_run_config, read_config_json


@dataclass
class TrainedModel:
    """A loaded model, what its outputs mean, and where its run lives (``run_dir`` is None for a bare file)."""

    model: Any
    class_names: list[str]
    model_path: Path
    run_dir: Path | None
    config: RunConfig | None

    @property
    def image_size(self) -> int:
        return int(self.model.input_shape[1])

    @property
    def home(self) -> Path:
        """Where outputs go by default: the run directory, or the folder of a bare ``.keras`` file."""
        return self.run_dir or self.model_path.parent


def locate_model(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model file, run directory or None) for a run directory or a ``.keras`` file."""
    path = Path(source)
    if path.is_dir():
        model_path = path / BEST_MODEL
        if not model_path.is_file():
            raise UserError(f"{path} holds no {BEST_MODEL}: pass a finished run directory or a .keras file")
        return model_path, path
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a run directory (runs/<name>) or a .keras model file")
    if path.suffix != ".keras":
        raise UserError(f"{path}: expected a run directory or a .keras model file")
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass a run directory (runs/<name>) or a .keras model file")
    run_dir = path.parent if (path.parent / CONFIG_FILE).is_file() else None
    return path, run_dir


def load_trained(source: str | os.PathLike, classes: Sequence[str] | None = None) -> TrainedModel:
    """Load ``best.keras`` of a run (or a ``.keras`` file) with the class names its outputs stand for."""

    model_path, run_dir = locate_model(source)
    config, class_names = None, list(classes) if classes else None
    if run_dir is not None:
        raw = read_config_json(run_dir)
        config = load_run_config(run_dir)
        if class_names is None:
            class_names = list(raw.get("class_names") or [])
    if not class_names:
        raise UserError(
            f"no class names for {model_path}: it has no config.json beside it; pass --classes a,b,c "
            "(in the model's output order) or a file with one class per line"
        )
    damage = damaged_model_file(model_path)
    if damage:
        raise UserError(f"{model_path} is {damage}: train the run again, or restore the file from a backup")
    try:
        model = load_model(model_path, compile=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load {model_path} ({str(error).splitlines()[0]}): is it a Keras 3 .keras file?") from None
    outputs = int(model.output_shape[-1])
    if outputs != len(class_names):
        raise UserError(
            f"{model_path} has {outputs} outputs but {len(class_names)} class names were given: pass one class name per output"
        )
    return TrainedModel(model, class_names, model_path, run_dir, config)


def default_output_dir(trained: TrainedModel, out: str | None, folder: str) -> Path:
    return Path(out) if out else trained.home / folder


# -- reading images in batches ---------------------------------------------------------------


@dataclass
class ImageBatch:
    """Decoded images of some ``paths`` (``indices`` into them) and the files that failed, with why."""

    indices: list[int]
    images: np.ndarray
    failures: list[tuple[int, str]]


def read_error(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def decode_or_error(path: str, size: int) -> np.ndarray | str:

    try:
        return load_image(path, size)
    except Exception as error:  # Pillow raises many types (OSError, ValueError, DecompressionBombError...)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "zero bytes"  # as the data check says it; Pillow only says it cannot identify the file
        return read_error(error)


def image_batches(paths: Sequence[str], size: int, batch_size: int = 32) -> Iterator[ImageBatch]:
    """Decode ``paths`` on the shared decoding threads, ``batch_size`` at a time; an unreadable file is reported, not fatal."""

    for start in range(0, len(paths), batch_size):
        chunk = range(start, min(start + batch_size, len(paths)))
        decoded = list(decode_pool().map(lambda i: decode_or_error(paths[i], size), chunk))
        good = [(i, image) for i, image in zip(chunk, decoded, strict=True) if not isinstance(image, str)]
        failures = [(i, image) for i, image in zip(chunk, decoded, strict=True) if isinstance(image, str)]
        images = np.stack([image for _, image in good]) if good else np.zeros((0, size, size, 3), np.uint8)
        yield ImageBatch([i for i, _ in good], images, failures)


def predict_probabilities(model: Any, images: np.ndarray, *, flip: bool = False) -> np.ndarray:
    """Class probabilities for uint8 images; ``flip`` mirrors them left-right first (test-time augmentation)."""
    batch = images[:, :, ::-1] if flip else images
    return np.asarray(model.predict_on_batch(batch.astype(np.float32)), dtype=np.float64)
