"""The sweep plots: accuracy against creation time, parallel coordinates and parameter importance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from inat_keras.plots import pyplot, save_figure
from inat_keras.search.space import OBJECTIVE
from inat_keras.search.trials import TrialRecord, is_categorical, is_log, ranked

# -- plots ------------------------------------------------------------------------------------------------


def plot_accuracy_vs_created(trials: list[TrialRecord], path: Path, title: str) -> None:

    plt = pyplot()
    # (start, trial) pairs, so the start is known not to be None where it is used.
    timed = sorted(((start, t) for t in trials if t.completed and (start := t.start)), key=lambda pair: pair[0])
    figure, axis = plt.subplots(figsize=(8, 4.5))
    if timed:
        starts = [start for start, _ in timed]
        accuracy = [t.completed_accuracy for _, t in timed]
        best = [max(accuracy[: i + 1]) for i in range(len(accuracy))]
        axis.scatter(starts, accuracy, c=accuracy, cmap="viridis", zorder=3, label="trial")
        axis.step(starts, best, where="post", color="tab:red", label="best so far")
        for start, t in timed:
            axis.annotate(t.trial_id, (start, t.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.legend(loc="lower right")
        figure.autofmt_xdate()
    else:
        axis.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("trial start")
    axis.set_ylabel("validation accuracy")
    axis.set_title(f"{title}: validation accuracy by start time")
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def axis_positions(name: str, values: list[Any], categorical: bool, log: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Values placed on [0, 1], and (position, label) ticks; categories evenly spaced."""
    if categorical:
        categories = sorted({str(v) for v in values})
        spot = {c: (i / (len(categories) - 1) if len(categories) > 1 else 0.5) for i, c in enumerate(categories)}
        return [spot[str(v)] for v in values], [(spot[c], c) for c in categories]
    numbers = [math.log10(float(v)) if log else float(v) for v in values]
    low, high = min(numbers), max(numbers)
    span = (high - low) or 1.0
    ticks = [(0.0, low), (0.5, (low + high) / 2), (1.0, high)] if high > low else [(0.0, low)]
    label = (lambda x: f"{10**x:.3g}") if log else (lambda x: f"{x:.3g}")
    return [(n - low) / span if high > low else 0.5 for n in numbers], [(p, label(x)) for p, x in ticks]


def plot_parallel_coordinates(trials: list[TrialRecord], names: list[str], space: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    plt = pyplot()
    done = ranked(trials)[::-1]  # the best drawn last, on top
    axes_names = [*names, OBJECTIVE]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(axes_names)), 5))
    if done:
        accuracy = [t.completed_accuracy for t in done]
        norm = matplotlib.colors.Normalize(
            min(accuracy), max(accuracy) if max(accuracy) > min(accuracy) else min(accuracy) + 1e-9
        )
        cmap = matplotlib.colormaps["viridis"]
        columns = []
        for x, name in enumerate(axes_names):
            values = accuracy if name == OBJECTIVE else [t.values.get(name) for t in done]
            positions, ticks = axis_positions(name, values, is_categorical(name, done), is_log(name, space))
            columns.append(positions)
            axis.axvline(x, color="0.3", linewidth=1)
            for position, label in ticks:
                axis.text(x + 0.03, position, label, fontsize=7, va="center")
        for i, value in enumerate(accuracy):  # one per trial of done, in its order
            axis.plot(range(len(axes_names)), [c[i] for c in columns], color=cmap(norm(value)), linewidth=1.8, alpha=0.85)
        figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axis, label="validation accuracy")
    axis.set_xticks(range(len(axes_names)), axes_names, rotation=30, ha="right")
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(axes_names) - 0.6)
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(f"{title}: one line per completed trial")
    save_figure(figure, path)


def plot_importance(rows: list[dict[str, Any]], path: Path, title: str) -> None:

    plt = pyplot()
    shown = rows[:20][::-1]
    labels = [r["parameter"] for r in shown]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 0.35 * max(len(shown), 4) + 1.5), sharey=True)
    left.barh(labels, [r["importance"] if math.isfinite(r["importance"]) else 0 for r in shown], color="tab:blue")
    left.set_xlabel("importance (random forest)")
    correlations = [r["correlation"] if math.isfinite(r["correlation"]) else 0 for r in shown]
    right.barh(labels, correlations, color=["tab:green" if c >= 0 else "tab:red" for c in correlations])
    right.axvline(0, color="0.3", linewidth=1)
    right.set_xlim(-1, 1)
    right.set_xlabel("Spearman correlation with validation accuracy")
    if not shown:
        left.text(0.5, 0.5, "fewer than 2 completed trials", ha="center", va="center", transform=left.transAxes)
    figure.suptitle(f"{title}: parameter importance")
    figure.tight_layout()
    save_figure(figure, path)
