"""The sweep plots: accuracy against creation time, parallel coordinates and parameter importance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from inat_keras.plots import pyplot, save_figure
from inat_keras.runs import trial_number
from inat_keras.search.space import OBJECTIVE
from inat_keras.search.trials import TrialRecord, is_categorical, is_log, ordered_choices, ranked

# -- plots ------------------------------------------------------------------------------------------------


def plot_accuracy_vs_created(trials: list[TrialRecord], path: Path, title: str) -> None:
    save_figure(draw_accuracy_vs_created(trials, title), path)


def draw_accuracy_vs_created(trials: list[TrialRecord], title: str) -> Any:
    """Each completed trial's validation accuracy at its start time, labelled with its trial number (KerasTuner's #N),
    and the best so far. The legend sits outside the axes, where it hides no trial."""
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
            label = str(trial_number(t.trial_id))
            axis.annotate(label, (start, t.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        figure.autofmt_xdate()
    else:
        axis.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("trial start")
    axis.set_ylabel("validation accuracy")
    axis.set_title(f"{title}: validation accuracy by start time")
    axis.grid(alpha=0.3)
    return figure


def is_integer(values: list[Any]) -> bool:
    """Whole numbers only (KerasTuner's Int and Choice of ints), so the axis gets no 4.5 tick."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def axis_positions(
    name: str, values: list[Any], categorical: bool, log: bool, choices: list[float] | None = None
) -> tuple[list[float], list[tuple[float, str]]]:
    """Values placed on [0, 1], and (position, label) ticks: categories and the values of a numeric Choice
    evenly spaced, each labelled (0, 1e-05, 0.0001, 0.001 read better so than on a linear axis); ranges with
    integers at whole numbers."""
    if choices and all(v in choices for v in values):
        place = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
        return [place[v] for v in values], [(place[c], f"{c:g}") for c in choices]
    if categorical:
        categories = sorted({str(v) for v in values})
        spot = {c: (i / (len(categories) - 1) if len(categories) > 1 else 0.5) for i, c in enumerate(categories)}
        return [spot[str(v)] for v in values], [(spot[c], c) for c in categories]
    numbers = [math.log10(float(v)) if log else float(v) for v in values]
    low, high = min(numbers), max(numbers)
    if high == low:
        return [0.5 for _ in numbers], [(0.5, f"{10**low:.3g}" if log else f"{low:.3g}")]
    scaled = lambda n: (n - low) / (high - low)
    if is_integer(values) and not log:
        # The values the trials took when they are few (16, 32, 64 filters), else about five whole numbers.
        taken = sorted({int(n) for n in numbers})
        step = max(1, math.ceil((high - low) / 5))
        ticks = taken if len(taken) <= 6 else sorted({*range(int(low), int(high) + 1, step), int(high)})
        return [scaled(n) for n in numbers], [(scaled(t), str(t)) for t in ticks]
    ticks = [low, (low + high) / 2, high]
    label = (lambda x: f"{10**x:.3g}") if log else (lambda x: f"{x:.3g}")
    return [scaled(n) for n in numbers], [(scaled(x), label(x)) for x in ticks]


def plot_parallel_coordinates(trials: list[TrialRecord], names: list[str], space: dict[str, Any], path: Path, title: str) -> None:
    save_figure(draw_parallel_coordinates(trials, names, space, title), path)


def draw_parallel_coordinates(trials: list[TrialRecord], names: list[str], space: dict[str, Any], title: str) -> Any:
    """One line per completed trial through an axis per hyperparameter and validation accuracy; the labels of
    each axis in white boxes above the lines. Returns the figure; ``figure.axes[0].texts`` are the tick labels."""
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
            choices = None if name == OBJECTIVE else ordered_choices(name, space)
            positions, ticks = axis_positions(name, values, is_categorical(name, done), is_log(name, space), choices)
            columns.append(positions)
            axis.axvline(x, color="0.3", linewidth=1)
            for position, label in ticks:
                box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.9}
                axis.text(x + 0.04, position, label, fontsize=7, va="center", bbox=box, zorder=5)
        for i, value in enumerate(accuracy):  # one per trial of done, in its order
            axis.plot(range(len(axes_names)), [c[i] for c in columns], color=cmap(norm(value)), linewidth=1.8, alpha=0.85)
        figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axis, label="validation accuracy")
    axis.set_xticks(range(len(axes_names)), axes_names, rotation=30, ha="right")
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(axes_names) - 0.6)
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(f"{title}: one line per completed trial")
    return figure


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
    trials = f" over {shown[0]['trials']} completed trials" if shown else ""
    figure.suptitle(f"{title}: parameter importance{trials}")
    figure.tight_layout()
    save_figure(figure, path)
