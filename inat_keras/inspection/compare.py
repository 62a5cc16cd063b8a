"""``python -m inat_keras compare RUN_DIR...``: scratch and fine-tuned runs side by side.

Reads each finished run's ``config.json`` and ``metrics.json`` and writes ``comparison.csv``,
``comparison.md`` and ``comparison.png`` (test and validation accuracy, trainable and total
parameters, epochs, training time).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError
from inat_keras.plots import pyplot, save_figure
from inat_keras.runs import CONFIG_FILE, METRICS_FILE
from inat_keras.storage import read_json, write_csv, write_text

COLUMNS = (
    "run",
    "kind",
    "model",
    "training",
    "image_size",
    "test_accuracy",
    "val_accuracy",
    "trainable_params",
    "num_params",
    "epochs_run",
    "train_seconds",
)


def expand_runs(patterns: Sequence[str]) -> list[Path]:
    """Run directories named directly or by a glob (quoted, so the shell leaves it alone)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"{pattern} matches no run directory: pass run directories such as runs/NAME or 'runs/*'")
        found.extend(Path(match) for match in matches)
    return list(dict.fromkeys(found))


def describe_model(config: dict[str, Any]) -> tuple[str, str]:
    """(model, training) in a few words, for the table."""
    model = config.get("model", {})
    if config.get("kind") == "transfer":
        weights = model.get("weights", "imagenet") or "random init"
        weights = "local weights" if weights not in ("imagenet", "random init") else weights
        phases = "two-phase" if model.get("two_phase", True) and model.get("unfreeze", "all") not in (0, "0") else "one phase"
        return f"{model.get('backbone', '?')} ({weights})", f"unfreeze {model.get('unfreeze', 'all')}, {phases}"
    blocks = model.get("num_blocks", 5)
    return f"scratch CNN, {blocks} blocks", "all layers"


def run_row(run_dir: Path) -> dict[str, Any]:
    config, metrics = read_json(run_dir / CONFIG_FILE), read_json(run_dir / METRICS_FILE)
    model, training = describe_model(config)
    return {
        "run": run_dir.name,
        "kind": config.get("kind", "scratch"),
        "model": model,
        "training": training,
        "image_size": config.get("data", {}).get("image_size"),
        **{key: metrics.get(key) for key in COLUMNS[5:]},
    }


def collect_rows(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the finished runs, and a note for each directory skipped."""
    rows, skipped = [], []
    for run_dir in run_dirs:
        if not (run_dir / METRICS_FILE).is_file() or not (run_dir / CONFIG_FILE).is_file():
            skipped.append(f"skipped {run_dir}: no metrics.json (not a finished run)")
            continue
        rows.append(run_row(run_dir))
    if not rows:
        raise UserError(f"none of {', '.join(map(str, run_dirs))} is a finished run: pass directories with metrics.json")
    return rows, skipped


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    """Four bar panels: accuracies, parameters (log scale), epochs, training time."""
    import numpy as np

    plt = pyplot()
    names = [row["run"] for row in rows]
    x = np.arange(len(rows))
    figure, axes = plt.subplots(2, 2, figsize=(max(8, 1.6 * len(rows) + 4), 8))
    panels = (
        (axes[0, 0], ("test_accuracy", "val_accuracy"), "accuracy", False),
        (axes[0, 1], ("trainable_params", "num_params"), "parameters", True),
        (axes[1, 0], ("epochs_run",), "epochs", False),
        (axes[1, 1], ("train_seconds",), "training time (s)", False),
    )
    for axis, keys, label, log_scale in panels:
        width = 0.8 / len(keys)
        for index, key in enumerate(keys):
            values = [float(row[key] or 0) for row in rows]
            axis.bar(x + (index - (len(keys) - 1) / 2) * width, values, width, label=key)
        axis.set_xticks(x, names, rotation=20, ha="right")
        axis.set_ylabel(label)
        if log_scale:
            axis.set_yscale("log")
            axis.set_ylim(bottom=1)  # bars start from one parameter, so their heights compare
        if len(keys) > 1:
            axis.legend()
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Scratch and fine-tuned runs")
    figure.tight_layout()
    save_figure(figure, path)


def write_comparison(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    paths = [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]
    write_csv(paths[0], COLUMNS, ([row[c] for c in COLUMNS] for row in rows))
    write_text(paths[1], markdown_table(rows))
    plot_comparison(rows, paths[2])
    return paths
