"""``python -m inat_keras compare RUN_DIR...``: scratch and fine-tuned runs side by side.

Reads each finished run's ``config.json`` and ``metrics.json`` and writes ``comparison.csv``,
``comparison.md`` and ``comparison.png`` (test and validation accuracy, trainable and total
parameters, epochs, training time), grouped by dataset: runs are ranked against the runs of
their own dataset only.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError
from inat_keras.plots import pyplot, save_figure
from inat_keras.runs import CONFIG_FILE, METRICS_FILE
from inat_keras.storage import read_json, write_csv, write_text

METRIC_COLUMNS = ("test_accuracy", "val_accuracy", "trainable_params", "num_params", "epochs_run", "train_seconds")
COLUMNS = ("run", "dataset", "classes", "kind", "model", "training", "image_size", *METRIC_COLUMNS)
# One colour per kind of run in comparison.png, the same in every panel.
KIND_COLOURS = {"scratch": "tab:blue", "transfer": "tab:orange"}
KIND_LABELS = {"scratch": "trained from scratch", "transfer": "fine-tuned"}


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
    class_names = config.get("class_names") or metrics.get("class_names")
    return {
        "run": run_dir.name,
        "dataset": config.get("data", {}).get("data_dir") or "unknown",
        "classes": len(class_names) if class_names else None,
        "kind": config.get("kind", "scratch"),
        "model": model,
        "training": training,
        "image_size": config.get("data", {}).get("image_size"),
        **{key: metrics.get(key) for key in METRIC_COLUMNS},
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


# -- one ranking per dataset ---------------------------------------------------------------------


def dataset_label(row: dict[str, Any]) -> str:
    classes = row["classes"]
    return f"{row['dataset']} ({'?' if classes is None else classes} classes)"


def group_by_dataset(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(dataset label, its rows, best test accuracy first), datasets in the order they were first named.

    Runs of different datasets are grouped rather than refused: ``compare 'runs/*'`` over a folder
    that also holds a run on other data should still compare the rest. They are never ranked in one
    list, since a 3-class accuracy and a 10-class one do not measure the same thing (chance alone
    is 33% against 10%), and the dataset (root, class count) is in every row.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(dataset_label(row), []).append(row)
    return [(label, sorted(members, key=lambda row: -(row["test_accuracy"] or 0))) for label, members in groups.items()]


def ranked_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row, dataset by dataset, each dataset's best test accuracy first."""
    return [row for _, members in group_by_dataset(rows) for row in members]


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One table per dataset, each ranked by test accuracy; a single dataset gets a single table."""
    groups = group_by_dataset(rows)
    if len(groups) == 1:
        return "\n".join(markdown_rows(groups[0][1])) + "\n"
    lines = [
        f"These runs used {len(groups)} datasets: each is ranked on its own (accuracies on different datasets do not compare).",
    ]
    for label, members in groups:
        lines += ["", f"## {label}", "", *markdown_rows(members)]
    return "\n".join(lines) + "\n"


# -- the chart ------------------------------------------------------------------------------------


def parameter_range(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """A log axis from a whole decade at least a third of a decade below the smallest parameter count (so its
    bar shows) to the decade above the largest, not from 10^0."""
    counts = [float(row[key]) for row in rows for key in ("trainable_params", "num_params") if row[key]]
    if not counts:
        return 1.0, 10.0
    low, high = math.floor(math.log10(min(counts)) - 0.3), math.ceil(math.log10(max(counts)))
    return 10.0**low, 10.0 ** max(high, low + 1)


def draw_comparison(rows: list[dict[str, Any]]) -> Any:
    """Four bar panels (accuracies, parameters on a log axis, epochs, training time), one colour per
    kind of run; runs of one dataset side by side, datasets apart. Returns the figure."""
    import matplotlib
    import numpy as np

    plt = pyplot()
    groups = group_by_dataset(rows)
    ordered = [row for _, members in groups for row in members]
    positions: list[float] = []
    for _, members in groups:  # a gap of one bar between datasets
        start = positions[-1] + 2 if positions else 0
        positions += [start + index for index in range(len(members))]
    x = np.array(positions)
    several = len(groups) > 1
    names = [
        f"{row['run']}\n{Path(str(row['dataset'])).name}, {row['classes']} cl." if several else row["run"] for row in ordered
    ]
    colours = [KIND_COLOURS.get(row["kind"], "tab:gray") for row in ordered]
    figure, axes = plt.subplots(2, 2, figsize=(max(8.0, 1.8 * len(x) + 4), 8.5))
    panels = (
        (axes[0, 0], ("test_accuracy", "val_accuracy"), "accuracy"),
        (axes[0, 1], ("trainable_params", "num_params"), "parameters"),
        (axes[1, 0], ("epochs_run",), "epochs"),
        (axes[1, 1], ("train_seconds",), "training time (s)"),
    )
    for axis, keys, label in panels:
        width = 0.8 / len(keys)
        for index, key in enumerate(keys):
            values = [float(row[key] or 0) for row in ordered]
            # The second measure of a panel (validation accuracy, all parameters) is the hatched, paler bar.
            axis.bar(
                x + (index - (len(keys) - 1) / 2) * width,
                values,
                width,
                color=colours,
                alpha=1.0 if index == 0 else 0.45,
                hatch=None if index == 0 else "//",
                edgecolor="white" if index == 0 else "0.25",
                linewidth=0.5,
            )
        axis.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8 if several else 9)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
        if label == "parameters":
            axis.set_yscale("log")
            axis.set_ylim(*parameter_range(ordered))
        if label == "accuracy":
            axis.set_ylim(0, 1.05)
        for boundary in np.flatnonzero(np.diff(x) > 1):  # a dotted line between datasets
            axis.axvline((x[boundary] + x[boundary + 1]) / 2, color="0.5", linestyle=":", linewidth=1)
    kinds = [kind for kind in KIND_COLOURS if any(row["kind"] == kind for row in ordered)]
    handles = [matplotlib.patches.Patch(color=KIND_COLOURS[kind], label=KIND_LABELS[kind]) for kind in kinds]
    measures = {"accuracy": ("test", "validation"), "parameters": ("trainable", "all")}
    for axis, _, label in panels[:2]:
        solid, hatched = measures[label]
        styles = [
            matplotlib.patches.Patch(facecolor="0.35", label=solid),
            matplotlib.patches.Patch(facecolor="0.35", alpha=0.45, hatch="//", edgecolor="0.25", label=hatched),
        ]
        axis.legend(handles=styles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.legend(handles=handles, loc="lower center", ncols=len(handles), frameon=False)
    datasets = "; ".join(label for label, _ in groups)
    heading = "Scratch and fine-tuned runs" + (", grouped by dataset" if several else "")
    figure.suptitle(f"{heading}\n{datasets}", fontsize=11)
    figure.tight_layout(rect=(0, 0.04, 1, 1))  # the legend of kinds below the panels
    return figure


def write_comparison(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """comparison.csv (every row, with its dataset), comparison.md (a table per dataset) and comparison.png."""
    rows = ranked_rows(rows)
    paths = [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]
    write_csv(paths[0], COLUMNS, ([row[c] for c in COLUMNS] for row in rows))
    write_text(paths[1], markdown_table(rows))
    save_figure(draw_comparison(rows), paths[2])
    return paths
