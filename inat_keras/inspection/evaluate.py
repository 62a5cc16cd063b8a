"""Evaluate a trained model on its test set: metrics, confusion matrix, prediction grid, mistakes.

``python -m inat_keras evaluate runs/<name> [--data DIR] [--tta]`` writes ``runs/<name>/eval/``:
``metrics.json``, ``confusion_matrix.png``, ``prediction_grid.png`` (3 test images per class, two
classes a row; ``prediction_grid.csv`` lists them with their row and column, from 1)
and ``mistakes.csv``. Without ``--data`` the test set is the run's own (``split.csv``, subset test).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.data.decode import load_image
from inat_keras.data.files import LabelledFiles, is_image_name
from inat_keras.errors import UserError
from inat_keras.inspection.trained import TrainedModel, image_batches, predict_probabilities
from inat_keras.plots import pyplot, save_figure
from inat_keras.runs import METRICS_FILE, split_test_rows
from inat_keras.storage import make_dir, write_csv, write_json

GRID_PER_CLASS = 3
GRID_CLASSES_PER_ROW = 2
# Shown larger than a 32-px model input so the grid reads at normal zoom.
GRID_DISPLAY_SIZE = 160


@dataclass
class Predictions:
    """Probabilities of the images that could be read; the rest in ``skipped`` with why."""

    files: LabelledFiles
    probabilities: np.ndarray
    tta_probabilities: np.ndarray | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.files.labels, dtype=np.int64)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


# -- the test images ----------------------------------------------------------------------------


def run_test_files(trained: TrainedModel) -> LabelledFiles:
    rows = split_test_rows(trained.run_dir)
    if rows is None:
        raise UserError(f"{trained.model_path} has no run split.csv beside it: pass --data DIR with the test images")
    index = {name: i for i, name in enumerate(trained.class_names)}
    return LabelledFiles([row["path"] for row in rows], [index[row["label"]] for row in rows])


def folder_test_files(root: str | os.PathLike, class_names: Sequence[str], trained: TrainedModel | None = None) -> LabelledFiles:
    """Test images of ``root/val/<class>/`` (a dataset root), or of ``root/<class>/``, labelled by folder name.

    A folder of class folders that ``trained``'s run was split from gives that run's test subset:
    all of its images would include the ones the model trained on.
    """
    root = Path(root)
    folder = root / "val" if (root / "val").is_dir() else root
    if not folder.is_dir():
        raise UserError(f"--data {root} is not a directory: give a dataset root with val/<class>/, or a folder of class folders")
    trained_on = trained.config.data.data_dir if trained and trained.config else None
    if folder == root and trained_on and Path(trained_on).resolve() == root.resolve() and trained and trained.run_dir:
        return run_test_files(trained)
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in index:
            raise UserError(
                f"{class_dir}: {class_dir.name!r} is not one of the model's classes ({', '.join(class_names)}): "
                "rename or remove the folder"
            )
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_name(p)):
            paths.append(str(path))
            labels.append(index[class_dir.name])
    if not paths:
        raise UserError(f"{folder} holds no images in class folders: expected {folder}/<class>/*.jpg")
    return LabelledFiles(paths, labels)


def predict_files(trained: TrainedModel, files: LabelledFiles, *, tta: bool, batch_size: int = 32) -> Predictions:
    """Probabilities for every readable file; with ``tta`` also for its mirror image."""
    kept = LabelledFiles([], [])
    plain: list[np.ndarray] = []
    flipped: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    for batch in image_batches(files.paths, trained.image_size, batch_size):
        skipped.extend({"path": files.paths[i], "error": error} for i, error in batch.failures)
        if not batch.indices:
            continue
        kept.paths.extend(files.paths[i] for i in batch.indices)
        kept.labels.extend(files.labels[i] for i in batch.indices)
        plain.append(predict_probabilities(trained.model, batch.images))
        if tta:
            flipped.append(predict_probabilities(trained.model, batch.images, flip=True))
    if not kept.paths:
        first = skipped[0]["path"]
        if not any(Path(entry["path"]).exists() for entry in skipped):
            raise UserError(
                f"none of the {len(files)} test images exists (the first: {first}): if the dataset moved, "
                f"pass --data DIR with its new location"
            )
        raise UserError(f"none of the {len(files)} test images could be read (first: {first}: {skipped[0]['error']})")
    probabilities = np.concatenate(plain)
    tta_probabilities = (probabilities + np.concatenate(flipped)) / 2 if tta else None
    return Predictions(kept, probabilities, tta_probabilities, skipped)


# -- metrics --------------------------------------------------------------------------------------


def normalised(probabilities: np.ndarray) -> np.ndarray:
    """Rows summing to 1 in float64 (a float32 softmax is off by ~1e-7; scikit-learn warns), no exact zeros."""
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def summary_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, top-3 accuracy and mean categorical cross-entropy, by scikit-learn."""
    from sklearn.metrics import accuracy_score, log_loss, top_k_accuracy_score

    classes = np.arange(probabilities.shape[1])
    with warnings.catch_warnings():
        # With 3 classes or fewer top-3 is trivially 1; scikit-learn says so in a warning, and refuses 2 classes.
        warnings.simplefilter("ignore")
        top3 = top_k_accuracy_score(labels, probabilities, k=3, labels=classes) if len(classes) > 3 else 1.0
    return {
        "accuracy": float(accuracy_score(labels, probabilities.argmax(axis=1))),
        "top3_accuracy": float(top3),
        "loss": float(log_loss(labels, normalised(probabilities), labels=classes)),
    }


def compute_metrics(predictions: Predictions, class_names: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import classification_report, confusion_matrix

    labels, predicted = predictions.labels, predictions.predicted
    classes = list(range(len(class_names)))
    report = classification_report(
        labels, predicted, labels=classes, target_names=list(class_names), output_dict=True, zero_division=0
    )
    rename = {"f1-score": "f1"}
    per_class = {name: {rename.get(k, k): v for k, v in report[name].items()} for name in class_names}
    metrics: dict[str, Any] = {
        "num_images": len(labels),
        **summary_scores(labels, predictions.probabilities),
        "per_class": per_class,
        "macro_avg": {rename.get(k, k): v for k, v in report["macro avg"].items()},
        "weighted_avg": {rename.get(k, k): v for k, v in report["weighted avg"].items()},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "class_names": list(class_names),
        "num_skipped": len(predictions.skipped),
        "skipped": predictions.skipped,
    }
    if predictions.tta_probabilities is not None:
        tta = summary_scores(labels, predictions.tta_probabilities)
        tta["changed_predictions"] = int((predictions.tta_probabilities.argmax(axis=1) != predicted).sum())
        metrics["tta"] = {"method": "mean of the image and its horizontal mirror", **tta}
    return metrics


def mistake_rows(predictions: Predictions, class_names: Sequence[str]) -> list[list[Any]]:
    """Every misclassified image, most confident mistakes first."""
    probabilities, labels, predicted = predictions.probabilities, predictions.labels, predictions.predicted
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    return [
        [
            predictions.files.paths[i],
            class_names[labels[i]],
            class_names[predicted[i]],
            round(float(probabilities[i, predicted[i]]), 6),
            round(float(probabilities[i, labels[i]]), 6),
        ]
        for i in wrong
    ]


# -- pictures -----------------------------------------------------------------------------------


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    """Counts and row-normalised (recall per true class) side by side."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    side = max(5.0, 0.6 * len(class_names) + 2.5)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), layout="constrained")
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    panels = ((axes[0], matrix, "d", "counts"), (axes[1], normalised, ".2f", "row-normalised (recall)"))
    for axis, values, fmt, name in panels:
        display = ConfusionMatrixDisplay(values, display_labels=list(class_names))
        display.plot(ax=axis, values_format=fmt, cmap="Blues", colorbar=False, xticks_rotation=45)
        axis.set_title(f"Confusion matrix, {name}")
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
    figure.suptitle(title)
    save_figure(figure, path)


def grid_choice(predictions: Predictions, num_classes: int, per_class: int, seed: int) -> list[list[int]]:
    """``per_class`` seeded random test images (indices into ``predictions``) for each class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        members = np.flatnonzero(predictions.labels == label)
        picked: np.ndarray | list[int] = (
            rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        )
        chosen.append(sorted(int(i) for i in picked))
    return chosen


def grid_position(label: int, column: int) -> tuple[int, int]:
    """(row, column) of a class's ``column``-th image in the prediction grid, both from 0."""
    return label // GRID_CLASSES_PER_ROW, (label % GRID_CLASSES_PER_ROW) * GRID_PER_CLASS + column


def plot_prediction_grid(
    predictions: Predictions, class_names: Sequence[str], chosen: list[list[int]], path: Path, title: str
) -> list[list[Any]]:
    """``GRID_PER_CLASS`` images per class, ``GRID_CLASSES_PER_ROW`` classes side by side in each row (a gap
    between them), so 10 classes make a 5 x 6 picture that fits a screen, not a 10 x 3 strip; red frame = wrong,
    green = right. Returns one record per image: its row and column in the picture (from 1), path, classes, confidence."""
    plt = pyplot()
    rows = math.ceil(len(class_names) / GRID_CLASSES_PER_ROW)
    blocks = min(GRID_CLASSES_PER_ROW, len(class_names))
    figure = plt.figure(figsize=(2.1 * GRID_PER_CLASS * blocks + 0.4 * (blocks - 1), 2.45 * rows + 0.5), layout="constrained")
    # A narrow empty column between two classes' images.
    ratios = [ratio for block in range(blocks) for ratio in ([0.2] if block else []) + [1.0] * GRID_PER_CLASS]
    grid = figure.add_gridspec(rows, len(ratios), width_ratios=ratios)
    records = []
    for label, indices in enumerate(chosen):
        for column in range(GRID_PER_CLASS):
            row, place = grid_position(label, column)
            axis = figure.add_subplot(grid[row, place + place // GRID_PER_CLASS])  # skip the gap columns
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(indices):
                axis.set_title(f"true: {class_names[label]}\n(no more test images)", fontsize=9)
                continue
            i = indices[column]
            true, guess = int(predictions.labels[i]), int(predictions.predicted[i])
            confidence = float(predictions.probabilities[i, guess])
            axis.imshow(load_image(predictions.files.paths[i], GRID_DISPLAY_SIZE))
            colour = "green" if true == guess else "red"
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            axis.set_title(
                f"true: {class_names[true]}\npredicted: {class_names[guess]} ({confidence:.0%})", fontsize=9, color=colour
            )
            image_path = predictions.files.paths[i]
            records.append([row + 1, place + 1, image_path, class_names[true], class_names[guess], round(confidence, 6)])
    figure.suptitle(title, fontsize=12)
    save_figure(figure, path)
    return records


# -- the command --------------------------------------------------------------------------------


def evaluate(
    trained: TrainedModel,
    out_dir: Path,
    *,
    data: str | None = None,
    tta: bool = False,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Write metrics.json, confusion_matrix.png, prediction_grid.png/.csv and mistakes.csv to ``out_dir``."""
    files = folder_test_files(data, trained.class_names, trained) if data else run_test_files(trained)
    predictions = predict_files(trained, files, tta=tta, batch_size=batch_size)
    names = trained.class_names
    metrics = compute_metrics(predictions, names)
    metrics["model"] = str(trained.model_path)
    metrics["data"] = str(data) if data else f"{trained.run_dir}/split.csv (test)"
    name = trained.run_dir.name if trained.run_dir else trained.model_path.stem
    make_dir(out_dir)
    write_json(out_dir / METRICS_FILE, metrics)
    write_csv(
        out_dir / "mistakes.csv",
        ("path", "true_class", "predicted_class", "confidence", "true_class_probability"),
        mistake_rows(predictions, names),
    )
    headline = f"{name}: test accuracy {metrics['accuracy']:.1%} on {metrics['num_images']} images"
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), names, out_dir / "confusion_matrix.png", headline)
    chosen = grid_choice(predictions, len(names), GRID_PER_CLASS, seed)
    grid_title = f"{name}: {GRID_PER_CLASS} test images per class (green frame = right, red = wrong)"
    records = plot_prediction_grid(predictions, names, chosen, out_dir / "prediction_grid.png", grid_title)
    write_csv(out_dir / "prediction_grid.csv", ("row", "column", "path", "true_class", "predicted_class", "confidence"), records)
    return metrics


def format_summary(metrics: dict[str, Any], out_dir: Path) -> str:
    lines = [
        f"test images: {metrics['num_images']}"
        + (f" ({metrics['num_skipped']} unreadable, skipped)" if metrics["num_skipped"] else ""),
        f"accuracy {metrics['accuracy']:.4f}  top-3 {metrics['top3_accuracy']:.4f}  loss {metrics['loss']:.4f}",
    ]
    if "tta" in metrics:
        tta = metrics["tta"]
        lines.append(
            f"with TTA (flip): accuracy {tta['accuracy']:.4f}  top-3 {tta['top3_accuracy']:.4f}  loss {tta['loss']:.4f}"
            f"  ({tta['changed_predictions']} predictions changed)"
        )
    lines.append(f"macro F1 {metrics['macro_avg']['f1']:.4f}  weighted F1 {metrics['weighted_avg']['f1']:.4f}")
    lines.append(f"written: {out_dir}/metrics.json, confusion_matrix.png, prediction_grid.png, prediction_grid.csv, mistakes.csv")
    return "\n".join(lines)
