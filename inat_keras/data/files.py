"""Dataset discovery and the stratified split.

A dataset root has one of two layouts:

- ``train/`` + ``val/`` (iNaturalist-12K): ``<root>/train/<Class>/*`` and ``<root>/val/<Class>/*``.
  ``val/`` is the held-out test set: it is never used for model selection. The validation set
  is a stratified split of ``train/`` (``--val-split``).
- class folders: ``<root>/<Class>/*``, the layout keras-io's ``image_dataset_from_directory``
  reads. The test set is a stratified ``--test-split`` of all images, and the validation set a
  stratified ``--val-split`` of the rest, both fixed by ``--seed``.
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


TRAIN_VAL_LAYOUT = "train/ + val/"
CLASS_FOLDERS_LAYOUT = "class folders"


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


def dataset_layout(root: str | os.PathLike) -> str:
    """``TRAIN_VAL_LAYOUT`` when ``root`` has a ``train/`` or a ``val/`` folder, else ``CLASS_FOLDERS_LAYOUT``."""
    root = Path(root)
    return TRAIN_VAL_LAYOUT if (root / "train").is_dir() or (root / "val").is_dir() else CLASS_FOLDERS_LAYOUT


def discover_dataset(
    root: str | os.PathLike, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], LabelledFiles, LabelledFiles]:
    """Class names, the training files and the test files of a dataset root, less ``exclude``.

    With train/ + val/ these are ``train/`` and ``val/``; with class folders every image is a
    training file and the test files are empty (``make_split`` splits the test set off).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data directory {root} does not exist: pass --data DIR with train/ and val/ inside "
            "or a folder of class folders, or --demo"
        )
    if dataset_layout(root) == CLASS_FOLDERS_LAYOUT:
        per_class = class_folder_images(root, exclude)
        return list(per_class), _flatten(per_class), LabelledFiles([], [])
    for subset in ("train", "val"):
        if not (root / subset).is_dir():
            raise UserError(f"{root / subset} is missing: the data directory needs train/<class>/ and val/<class>/ folders")
    subsets = {}
    for subset in ("train", "val"):
        folder = root / subset
        per_class = {name: [f for f in files if f not in exclude] for name, files in list_class_images(folder).items()}
        if not per_class:
            raise UserError(f"{folder} has no class folders: put each class's images in {folder}/<class>/")
        refuse_empty_classes(folder, per_class, exclude)
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


def class_folder_images(root: Path, exclude: frozenset[str]) -> dict[str, list[str]]:
    """The images of each class folder of ``root``, with the mistakes that make a folder look like one named."""
    parent = root.parent
    if root.name in ("train", "val") and (parent / "train").is_dir() and (parent / "val").is_dir():
        # Without this, train/ alone would be read as a folder of class folders with no test set.
        raise UserError(
            f"{parent} holds train/ and val/, the dataset root's folders; {root} looks like one of them, "
            f"so pass its parent: --data {parent}"
        )
    per_class = {name: [f for f in files if f not in exclude] for name, files in list_class_images(root).items()}
    if not per_class:
        raise UserError(
            f"{root} has no class folders: put each class's images in {root}/<class>/ (or in train/<class>/ and val/<class>/)"
        )
    for name in per_class:
        if (root / name / "train").is_dir() and (root / name / "val").is_dir():
            raise UserError(f"{root / name} holds train/ and val/, so it is the dataset root: pass --data {root / name}")
    if len(per_class) == 1:
        (name,) = per_class
        raise UserError(
            f"{root} holds one class folder ({name}), and a classifier needs at least 2: "
            f"if {root / name} holds the class folders, pass --data {root / name}"
        )
    refuse_empty_classes(root, per_class, exclude)
    return per_class


def refuse_empty_classes(folder: Path, per_class: dict[str, list[str]], exclude: frozenset[str]) -> None:
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        usable = "usable " if exclude else ""
        raise UserError(f"{folder}/{empty[0]} holds no {usable}images: add images or remove the folder")


def _flatten(per_class: dict[str, list[str]]) -> LabelledFiles:
    paths, labels = [], []
    for label, files in enumerate(per_class.values()):
        paths.extend(files)
        labels.extend([label] * len(files))
    return LabelledFiles(paths, labels)


def stratified_split(
    files: LabelledFiles,
    val_fraction: float,
    seed: int,
    class_names: Sequence[str] = (),
    *,
    flag: str = "--val-split",
    held_out: str = "validation",
) -> tuple[LabelledFiles, LabelledFiles]:
    """Split into (kept, held out) keeping class proportions; the same seed gives the same split.

    ``flag`` and ``held_out`` name the fraction's flag and the held-out set in error messages.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"{flag} {val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    counts = np.bincount(files.labels)
    if counts.min() < 2:
        smallest = int(counts.argmin())
        name = f"class {class_names[smallest]!r}" if class_names else f"class {smallest}"
        raise UserError(
            f"{name} has only {int(counts.min())} training image(s): "
            f"each class needs at least 2 to split off a {held_out} set; add images or remove the class"
        )
    num_val = max(round(len(files) * val_fraction), len(counts))
    if len(files) - num_val < len(counts):
        raise UserError(f"{flag} {val_fraction} leaves too few training images: lower it or add images")
    train_idx, val_idx = train_test_split(np.arange(len(files)), test_size=num_val, stratify=files.labels, random_state=seed)
    pick = lambda idx: LabelledFiles([files.paths[i] for i in sorted(idx)], [files.labels[i] for i in sorted(idx)])
    return pick(train_idx), pick(val_idx)


def make_split(config: DataConfig, exclude: frozenset[str] = frozenset()) -> DatasetSplit:
    """Train, validation and test files of ``config.data_dir`` in either layout (see the module docstring)."""
    assert config.data_dir is not None, "training.loop.resolve_data_dir sets data_dir before the split is made"
    class_names, train_files, test_files = discover_dataset(config.data_dir, exclude)
    if dataset_layout(config.data_dir) == CLASS_FOLDERS_LAYOUT:
        counts = np.bincount(train_files.labels)
        if counts.min() < 3:
            smallest = int(counts.argmin())
            raise UserError(
                f"class {class_names[smallest]!r} in {config.data_dir} has only {int(counts.min())} image(s): "
                "each class needs at least 3 to split into train, validation and test; add images or remove the class"
            )
        train_files, test_files = stratified_split(
            train_files, config.test_split, config.seed, class_names, flag="--test-split", held_out="test"
        )
    train, validation = stratified_split(train_files, config.val_split, config.seed, class_names)
    return DatasetSplit(class_names, train, validation, test_files)


def describe_split(config: DataConfig, split: DatasetSplit) -> str:
    """The line a new run starts with: the layout found and how it was split."""
    sizes = f"{len(split.train)} train / {len(split.validation)} validation / {len(split.test)} test images"
    if dataset_layout(config.data_dir or "") == TRAIN_VAL_LAYOUT:
        return (
            f"data: {config.data_dir} has train/ + val/ folders, {len(split.class_names)} classes: val/ is the test set, "
            f"validation is a stratified {config.val_split:.0%} of train/ (seed {config.seed}): {sizes}"
        )
    return (
        f"data: {config.data_dir} is one folder of {len(split.class_names)} class folders (no train/ + val/): "
        f"split stratified (seed {config.seed}) into a {config.test_split:.0%} test set (--test-split) "
        f"and a {config.val_split:.0%} validation set of the rest (--val-split): {sizes}"
    )


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
    fix = "restore it from a backup, or start a new run with another --name"
    for line, row in enumerate(read_csv(path), start=2):  # line 1 is the header
        # A hand edit or a disk fault can leave a file that parses but does not fit the run.
        subset, label = row.get("subset"), row.get("label")
        if subset not in subsets or label not in index or not row.get("path"):
            what = f"subset {subset!r}" if subset not in subsets else f"label {label!r}" if label not in index else "no path"
            known = f" (the run's classes: {', '.join(class_names)})" if subset in subsets and label not in index else ""
            raise UserError(f"{path} line {line} has {what}{known}: {fix}")
        subsets[subset].paths.append(row["path"])
        subsets[subset].labels.append(index[label])
    return DatasetSplit(class_names, subsets["train"], subsets["validation"], subsets["test"])


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> dict[int, float]:
    """``n / (num_classes * n_c)`` per class: every class then adds the same total weight to the loss.

    The formula of scikit-learn's ``compute_class_weight("balanced")``; a class with no image gets 1.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    total = int(counts.sum())
    return {c: (total / (num_classes * int(n)) if n else 1.0) for c, n in enumerate(counts)}
