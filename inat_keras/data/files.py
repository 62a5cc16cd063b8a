"""Dataset discovery, the stratified split, image decoding and the tf.data pipeline.

A dataset root has the iNaturalist-12K layout: ``<root>/train/<Class>/*`` and
``<root>/val/<Class>/*``. ``val/`` is the held-out test set: it is never used for
model selection. The validation set is a stratified split of ``train/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inat_keras.config import DataConfig
from inat_keras.errors import UserError
from inat_keras.runs import SPLIT_FILE
from inat_keras.storage import read_csv, write_csv

# HEIC/HEIF are listed so the data check reports them as unsupported instead of silently ignoring photos.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)


@dataclass
class LabelledFiles:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DatasetSplit:
    """The three subsets of a run, with the class names that index the labels."""

    class_names: list[str]
    train: LabelledFiles
    validation: LabelledFiles
    test: LabelledFiles


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_class_images(folder: Path) -> dict[str, list[str]]:
    """Image files under each class folder of ``folder`` (recursively, hidden entries skipped)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {}
    for name in classes:
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(Path(f)))
        found[name] = files
    return found


def discover_dataset(
    root: str | os.PathLike, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], LabelledFiles, LabelledFiles]:
    """Class names, the ``train/`` files and the ``val/`` (test) files of a dataset root, less ``exclude``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist: pass --data DIR with train/ and val/ inside, or --demo")
    for subset in ("train", "val"):
        if not (root / subset).is_dir():
            parent = root.parent
            hint = (
                f"; {root} looks like one of them, so pass its parent: --data {parent}"
                if root.name in ("train", "val") and (parent / "train").is_dir() and (parent / "val").is_dir()
                else ""
            )
            raise UserError(f"{root / subset} is missing: the data directory needs train/<class>/ and val/<class>/ folders{hint}")
    subsets = {}
    for subset in ("train", "val"):
        folder = root / subset
        per_class = {name: [f for f in files if f not in exclude] for name, files in list_class_images(folder).items()}
        if not per_class:
            raise UserError(f"{folder} has no class folders: put each class's images in {folder}/<class>/")
        empty = [name for name, files in per_class.items() if not files]
        if empty:
            usable = "usable " if exclude else ""
            raise UserError(f"{folder}/{empty[0]} holds no {usable}images: add images or remove the folder")
        subsets[subset] = per_class
    train_classes, test_classes = list(subsets["train"]), list(subsets["val"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_val = sorted(set(test_classes) - set(train_classes))
        raise UserError(
            f"train/ and val/ in {root} have different classes (only in train: {only_train or 'none'}; "
            f"only in val: {only_val or 'none'}): give both the same class folders"
        )
    return train_classes, _flatten(subsets["train"]), _flatten(subsets["val"])


def _flatten(per_class: dict[str, list[str]]) -> LabelledFiles:
    paths, labels = [], []
    for label, files in enumerate(per_class.values()):
        paths.extend(files)
        labels.extend([label] * len(files))
    return LabelledFiles(paths, labels)


def stratified_split(
    files: LabelledFiles, val_fraction: float, seed: int, class_names: Sequence[str] = ()
) -> tuple[LabelledFiles, LabelledFiles]:
    """Split into (train, validation) keeping class proportions; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-split {val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    counts = np.bincount(files.labels)
    if counts.min() < 2:
        smallest = int(counts.argmin())
        name = f"class {class_names[smallest]!r}" if class_names else f"class {smallest}"
        raise UserError(
            f"{name} has only {int(counts.min())} training image(s): "
            "each class needs at least 2 to split off a validation set; add images or remove the class"
        )
    num_val = max(round(len(files) * val_fraction), len(counts))
    if len(files) - num_val < len(counts):
        raise UserError(f"--val-split {val_fraction} leaves too few training images: lower it or add images")
    train_idx, val_idx = train_test_split(np.arange(len(files)), test_size=num_val, stratify=files.labels, random_state=seed)
    pick = lambda idx: LabelledFiles([files.paths[i] for i in sorted(idx)], [files.labels[i] for i in sorted(idx)])
    return pick(train_idx), pick(val_idx)


def make_split(config: DataConfig, exclude: frozenset[str] = frozenset()) -> DatasetSplit:
    assert config.data_dir is not None, "training.loop.resolve_data_dir sets data_dir before the split is made"
    class_names, train_files, test_files = discover_dataset(config.data_dir, exclude)
    train, validation = stratified_split(train_files, config.val_split, config.seed, class_names)
    return DatasetSplit(class_names, train, validation, test_files)


def save_split(split: DatasetSplit, run_dir: str | os.PathLike) -> None:
    """``split.csv``: one row per image (path, label, subset), to reproduce or audit a run."""
    rows: list[tuple[str, str, str]] = []
    for subset, files in (("train", split.train), ("validation", split.validation), ("test", split.test)):
        rows.extend((path, split.class_names[label], subset) for path, label in zip(files.paths, files.labels, strict=True))
    write_csv(Path(run_dir) / SPLIT_FILE, ("path", "label", "subset"), rows)


def load_split(run_dir: str | os.PathLike, class_names: list[str]) -> DatasetSplit:
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing, so the run cannot be resumed: start a new run with another --name")
    index = {name: i for i, name in enumerate(class_names)}
    subsets = {"train": LabelledFiles([], []), "validation": LabelledFiles([], []), "test": LabelledFiles([], [])}
    for row in read_csv(path):
        subsets[row["subset"]].paths.append(row["path"])
        subsets[row["subset"]].labels.append(index[row["label"]])
    return DatasetSplit(class_names, subsets["train"], subsets["validation"], subsets["test"])
