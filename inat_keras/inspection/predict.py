"""Top-k predictions for image files and folders.

``python -m inat_keras predict runs/<name> photo.jpg some/folder/ [--top-k 3] [--json | --csv]``.
A file that cannot be read gets one line on stderr naming it; the others are still predicted.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from inat_keras.data.files import is_image_name
from inat_keras.errors import UserError
from inat_keras.inspection.trained import TrainedModel, image_batches, predict_probabilities


@dataclass
class PredictionReport:
    """Top-k (class, probability) per readable file, and a reason for each file that failed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Files as given, folders searched recursively for image files; missing paths are failures.

    A file reached twice (named and inside a named folder, or two overlapping folders) counts once.
    """
    paths: list[str] = []
    failures: list[dict[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                os.path.join(dirpath, name)
                for dirpath, dirnames, names in os.walk(path)
                for name in names
                if is_image_name(Path(name)) and not any(part.startswith(".") for part in Path(dirpath).relative_to(path).parts)
            )
            if not found:
                failures.append({"path": item, "error": "folder holds no image files"})
            paths.extend(found)
        elif path.is_file():
            paths.append(item)
        else:
            failures.append({"path": item, "error": "no such file or folder"})
    first_named: dict[str, str] = {}  # real path -> the path as first named
    for item in paths:
        first_named.setdefault(os.path.realpath(item), item)
    return list(first_named.values()), failures


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": class_names[i], "probability": float(probabilities[i])} for i in order]


def predict_paths(trained: TrainedModel, inputs: Sequence[str], *, k: int = 3, batch_size: int = 32) -> PredictionReport:
    if k < 1:
        raise UserError(f"--top-k {k}: must be at least 1")
    k = min(k, len(trained.class_names))
    paths, failures = expand_inputs(inputs)
    report = PredictionReport(failures=failures)
    for batch in image_batches(paths, trained.image_size, batch_size):
        report.failures.extend({"path": paths[i], "error": f"not a readable image ({error})"} for i, error in batch.failures)
        if not batch.indices:
            continue
        for i, probabilities in zip(batch.indices, predict_probabilities(trained.model, batch.images), strict=True):
            report.results.append({"path": paths[i], "predictions": top_k(probabilities, trained.class_names, k)})
    return report


def format_table(report: PredictionReport) -> str:
    if not report.results:
        return ""
    k = len(report.results[0]["predictions"])
    width = max(len("image"), *(len(r["path"]) for r in report.results))
    header = f"{'image':<{width}}  " + "  ".join(f"{f'top {i + 1}':<24}" for i in range(k))
    lines = [header.rstrip()]
    for result in report.results:
        cells = [f"{p['class']} ({p['probability']:.1%})" for p in result["predictions"]]
        lines.append((f"{result['path']:<{width}}  " + "  ".join(f"{c:<24}" for c in cells)).rstrip())
    return "\n".join(lines)


def write_csv_rows(report: PredictionReport, stream: TextIO) -> None:
    writer = csv.writer(stream)
    writer.writerow(("path", "rank", "class", "probability"))
    for result in report.results:
        for rank, prediction in enumerate(result["predictions"], start=1):
            writer.writerow((result["path"], rank, prediction["class"], f"{prediction['probability']:.6f}"))
