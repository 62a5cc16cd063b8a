"""The sweep analysis of a search, made locally from KerasTuner's ``trial_*/trial.json`` files.

W&B's sweep panels need an account; these files do not. In ``runs/<name>/search/``:
``trials.csv``, ``best_hyperparameters.json``, ``accuracy_vs_created.png``,
``parallel_coordinates.png``, ``importance.png`` + ``importance.csv`` (Spearman correlation with
validation accuracy and a random forest's importance, like W&B's parameter-importance panel), and
``summary.md``, whose sentences are chosen from the numbers.

``python -m inat_keras sweep-analysis runs/<name>/search`` redoes it at any time, also mid-search.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import write_csv, write_json, write_text
from .search import SEARCH_DIR

OBJECTIVE = "val_accuracy"
# A Spearman correlation weaker than this is reported as "no clear trend".
CLEAR_TREND = 0.3
# A random-forest importance below this is treated as noise when naming a best value.
WEAK_IMPORTANCE = 0.05
# Below this many completed trials the summary says its findings are hints.
FEW_TRIALS = 10


@dataclass
class TrialRecord:
    """One trial as KerasTuner stored it: values, status and the metrics the search reported."""

    trial_id: str
    status: str
    values: dict[str, Any]
    metrics: dict[str, float]

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get(OBJECTIVE)

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED" and self.accuracy is not None

    @property
    def start(self) -> datetime | None:
        started = self.metrics.get("trial_start")
        return datetime.fromtimestamp(started) if started else None


@dataclass
class Analysis:
    trials: list[TrialRecord]
    best: dict[str, Any] | None
    importance: list[dict[str, Any]]
    headline: str
    files: list[Path] = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------


def read_trials(search_dir: Path) -> tuple[list[TrialRecord], dict[str, dict[str, Any]]]:
    """The trials in id order, and the space: name -> KerasTuner's hyperparameter config (class_name, config)."""
    trials, space = [], {}
    for path in sorted(search_dir.glob("trial_*/trial.json")):
        # The format is KerasTuner's Trial.get_state(); parsed here so the analysis needs no TensorFlow.
        state = json.loads(path.read_text(encoding="utf-8"))
        for entry in state["hyperparameters"]["space"]:
            space.setdefault(entry["config"]["name"], entry)
        metrics = {}
        for name, history in state["metrics"]["metrics"].items():
            if history["observations"]:
                last = history["observations"][-1]["value"]
                metrics[name] = float(sum(last) / len(last))
        trials.append(TrialRecord(state["trial_id"], state["status"], dict(state["hyperparameters"]["values"]), metrics))
    return trials, space


def hyperparameter_names(trials: list[TrialRecord], space: dict[str, Any]) -> list[str]:
    """Searched hyperparameters in declaration order; KerasTuner's "tuner/..." bookkeeping last."""
    names = list(dict.fromkeys([*space, *(name for t in trials for name in t.values)]))
    return [n for n in names if not n.startswith("tuner/")] + [n for n in names if n.startswith("tuner/")]


def varying(trials: list[TrialRecord], names: list[str]) -> list[str]:
    """Hyperparameters that took more than one value among completed trials (the others explain nothing)."""
    done = [t for t in trials if t.completed]
    return [n for n in names if not n.startswith("tuner/") and len({repr(t.values.get(n)) for t in done}) > 1]


def is_categorical(name: str, trials: list[TrialRecord]) -> bool:
    return any(isinstance(t.values.get(name), (str, bool)) for t in trials)


def is_log(name: str, space: dict[str, Any]) -> bool:
    return space.get(name, {}).get("config", {}).get("sampling") == "log"


# -- tables ------------------------------------------------------------------------------------------


def trial_rows(trials: list[TrialRecord], names: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["trial_id", "start_time", "duration_s", "status", *names, OBJECTIVE, "val_loss", "epochs_run"]
    rows = []
    for t in trials:
        start = t.start.isoformat(timespec="seconds") if t.start else ""
        seconds = t.metrics.get("trial_seconds")
        rows.append(
            [t.trial_id, start, "" if seconds is None else round(seconds, 2), t.status]
            + [t.values.get(n, "") for n in names]
            + [t.metrics.get(m, "") for m in (OBJECTIVE, "val_loss")]
            + [int(t.metrics["epochs_run"]) if "epochs_run" in t.metrics else ""]
        )
    return header, rows


def ranked(trials: list[TrialRecord]) -> list[TrialRecord]:
    return sorted((t for t in trials if t.completed), key=lambda t: -t.accuracy)


def best_record(trials: list[TrialRecord]) -> dict[str, Any] | None:
    best = ranked(trials)[:1]
    if not best:
        return None
    t = best[0]
    return {
        "trial_id": t.trial_id,
        OBJECTIVE: t.accuracy,
        "val_loss": t.metrics.get("val_loss"),
        "hyperparameters": {k: v for k, v in t.values.items() if not k.startswith("tuner/")},
    }


# -- importance ----------------------------------------------------------------------------------------


def encode(trials: list[TrialRecord], names: list[str], space: dict[str, Any]) -> tuple[list[str], list[list[float]]]:
    """Feature columns: numbers as they are (log10 for log-sampled ones), booleans 0/1, text one-hot."""
    columns, features = [], []
    for name in names:
        values = [t.values.get(name) for t in trials]
        if isinstance(values[0], str):
            for category in sorted({str(v) for v in values}):
                columns.append(f"{name}={category}")
                features.append([float(str(v) == category) for v in values])
        else:
            columns.append(name)
            log = is_log(name, space)
            features.append([math.log10(float(v)) if log else float(v) for v in values])
    return columns, features


def parameter_importance(trials: list[TrialRecord], names: list[str], space: dict[str, Any]) -> list[dict[str, Any]]:
    """Per feature: Spearman correlation with validation accuracy and a random forest's importance."""
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.ensemble import RandomForestRegressor

    done = ranked(trials)
    if len(done) < 2 or not names:
        return []
    columns, features = encode(done, names, space)
    accuracy = np.array([t.accuracy for t in done])
    matrix = np.array(features).T
    importances = [math.nan] * len(columns)
    if np.ptp(accuracy) > 0:
        forest = RandomForestRegressor(n_estimators=300, random_state=0, min_samples_leaf=1)
        importances = forest.fit(matrix, accuracy).feature_importances_.tolist()
    rows = []
    for column, values, importance in zip(columns, features, importances):
        constant = np.ptp(values) == 0 or np.ptp(accuracy) == 0
        correlation = math.nan if constant else float(spearmanr(values, accuracy).statistic)
        rows.append({"parameter": column, "importance": importance, "correlation": correlation, "trials": len(done)})
    return sorted(rows, key=lambda r: -(r["importance"] if math.isfinite(r["importance"]) else -1))


# -- plots ------------------------------------------------------------------------------------------------


def plot_accuracy_vs_created(trials: list[TrialRecord], path: Path, title: str) -> None:
    from .plots import pyplot, save_figure

    plt = pyplot()
    timed = sorted((t for t in trials if t.completed and t.start), key=lambda t: t.start)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    if timed:
        starts = [t.start for t in timed]
        accuracy = [t.accuracy for t in timed]
        best = [max(accuracy[: i + 1]) for i in range(len(accuracy))]
        axis.scatter(starts, accuracy, c=accuracy, cmap="viridis", zorder=3, label="trial")
        axis.step(starts, best, where="post", color="tab:red", label="best so far")
        for t in timed:
            axis.annotate(t.trial_id, (t.start, t.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
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

    from .plots import pyplot, save_figure

    plt = pyplot()
    done = ranked(trials)[::-1]  # the best drawn last, on top
    axes_names = [*names, OBJECTIVE]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(axes_names)), 5))
    if done:
        accuracy = [t.accuracy for t in done]
        norm = matplotlib.colors.Normalize(min(accuracy), max(accuracy) if max(accuracy) > min(accuracy) else min(accuracy) + 1e-9)
        cmap = matplotlib.colormaps["viridis"]
        columns = []
        for x, name in enumerate(axes_names):
            values = accuracy if name == OBJECTIVE else [t.values.get(name) for t in done]
            positions, ticks = axis_positions(name, values, is_categorical(name, done), is_log(name, space))
            columns.append(positions)
            axis.axvline(x, color="0.3", linewidth=1)
            for position, label in ticks:
                axis.text(x + 0.03, position, label, fontsize=7, va="center")
        for i, t in enumerate(done):
            axis.plot(range(len(axes_names)), [c[i] for c in columns], color=cmap(norm(t.accuracy)), linewidth=1.8, alpha=0.85)
        figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axis, label="validation accuracy")
    axis.set_xticks(range(len(axes_names)), axes_names, rotation=30, ha="right")
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(axes_names) - 0.6)
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(f"{title}: one line per completed trial")
    save_figure(figure, path)


def plot_importance(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from .plots import pyplot, save_figure

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


# -- summary ------------------------------------------------------------------------------------------------


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def finding(name: str, trials: list[TrialRecord], row: dict[str, Any] | None) -> str:
    """One sentence about one hyperparameter, from the completed trials' numbers."""
    done = ranked(trials)
    strength = "" if row is None or not math.isfinite(row["importance"]) else f" (importance {row['importance']:.2f})"
    if is_categorical(name, done):
        groups: dict[str, list[float]] = {}
        for t in done:
            groups.setdefault(str(t.values.get(name)), []).append(t.accuracy)
        means = sorted(((sum(v) / len(v), k, len(v)) for k, v in groups.items()), reverse=True)
        parts = [f"{k} {m:.3f} over {n} trial{'s' * (n > 1)}" for m, k, n in means]
        weak = row is not None and math.isfinite(row["importance"]) and row["importance"] < WEAK_IMPORTANCE
        if len(means) > 1 and (means[0][0] - means[1][0] < 1e-9 or weak):
            verdict = "no value stands out"
        else:
            verdict = f"{means[0][1]} went with the highest"
        return f"**{name}**{strength}: mean validation accuracy {'; '.join(parts)} - {verdict}."
    rho = float("nan") if row is None else row["correlation"]
    top = done[: max(1, math.ceil(len(done) / 3))]
    top_values = sorted(float(t.values[name]) for t in top if name in t.values)
    where = f"the best third of the trials used {number(top_values[0])}" + (f" to {number(top_values[-1])}" if top_values[-1] != top_values[0] else "")
    if not math.isfinite(rho):
        trend = "no trend could be measured"
    elif abs(rho) < CLEAR_TREND:
        trend = f"no clear trend (Spearman {rho:+.2f})"
    else:
        trend = f"{'higher' if rho > 0 else 'lower'} values went with higher accuracy (Spearman {rho:+.2f})"
    return f"**{name}**{strength}: {trend}; {where}."


def summary_text(title: str, trials: list[TrialRecord], names: list[str], rows: list[dict[str, Any]], tuner: str | None) -> str:
    done = ranked(trials)
    failed = sum(t.status in ("FAILED", "INVALID") for t in trials)
    unfinished = len(trials) - len(done) - failed
    counts = f"{len(trials)} trial{'s' * (len(trials) != 1)}: {len(done)} completed, {failed} failed, {unfinished} unfinished"
    lines = [f"# Search {title}", "", f"{counts}{f' ({tuner} tuner)' if tuner else ''}.", ""]
    if not done:
        return "\n".join([*lines, "No trial has completed yet, so there is nothing to compare.", ""])
    best = done[0]
    seconds = best.metrics.get("trial_seconds")
    lines += [
        f"Best validation accuracy **{best.accuracy:.4f}** (trial {best.trial_id}"
        + (f", {seconds:.0f} s" if seconds is not None else "")
        + f"); the median of the completed trials is {statistics.median(t.accuracy for t in done):.4f}.",
        "",
        "## Best trials",
        "",
        "| trial | val accuracy | val loss | " + " | ".join(names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for t in done[:5]:
        loss = t.metrics.get("val_loss")
        cells = [t.trial_id, f"{t.accuracy:.4f}", "" if loss is None else f"{loss:.4f}", *(number(t.values.get(n, "")) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## What goes with high accuracy", ""]
    if not names:
        lines.append("Every completed trial used the same values: nothing to attribute the differences to.")
    by_parameter: dict[str, dict[str, Any]] = {}
    for row in rows:  # one-hot columns "name=value" count for their hyperparameter
        base = row["parameter"].split("=")[0]
        if base not in by_parameter or row["importance"] > by_parameter[base]["importance"]:
            by_parameter[base] = row
    order = sorted(names, key=lambda n: -(by_parameter.get(n, {}).get("importance") or 0))
    lines += [f"- {finding(name, trials, by_parameter.get(name))}" for name in order]
    if len(done) < FEW_TRIALS:
        lines += ["", f"With {len(done)} completed trial{'s' * (len(done) != 1)} these are hints, not conclusions: run more trials to confirm them."]
    return "\n".join([*lines, ""])


# -- all files --------------------------------------------------------------------------------------------


def write_analysis(search_dir: str | Path) -> Analysis:
    """Write every analysis file into ``search_dir`` and return what they say."""
    search_dir = Path(search_dir)
    trials, space = read_trials(search_dir)
    if not trials:
        raise UserError(f"{search_dir} holds no trial_*/trial.json: give a search run (runs/<name>) or its search/ folder")
    names = hyperparameter_names(trials, space)
    moving = varying(trials, names)
    title = search_dir.parent.name
    settings_path = search_dir / "search.json"
    tuner = json.loads(settings_path.read_text())["tuner"] if settings_path.exists() else None

    header, rows = trial_rows(trials, names)
    write_csv(search_dir / "trials.csv", header, rows)
    best = best_record(trials)
    write_json(search_dir / "best_hyperparameters.json", best or {})
    importance = parameter_importance(trials, moving, space)
    write_csv(
        search_dir / "importance.csv",
        ["parameter", "importance", "correlation", "trials"],
        ([r["parameter"], r["importance"], r["correlation"], r["trials"]] for r in importance),
    )
    plot_accuracy_vs_created(trials, search_dir / "accuracy_vs_created.png", title)
    plot_parallel_coordinates(trials, moving, space, search_dir / "parallel_coordinates.png", title)
    plot_importance(importance, search_dir / "importance.png", title)
    write_text(search_dir / "summary.md", summary_text(title, trials, moving, importance, tuner))

    done = ranked(trials)
    headline = f"search: {len(trials)} trial{'s' * (len(trials) != 1)} ({len(done)} completed) in {search_dir}"
    if best:
        headline += f"; best val accuracy {best[OBJECTIVE]:.4f} (trial {best['trial_id']})"
    files = [search_dir / name for name in ANALYSIS_FILES]
    return Analysis(trials, best, importance, headline + f"; analysis: {search_dir / 'summary.md'}", files)


ANALYSIS_FILES = (
    "trials.csv",
    "best_hyperparameters.json",
    "accuracy_vs_created.png",
    "parallel_coordinates.png",
    "importance.csv",
    "importance.png",
    "summary.md",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras sweep-analysis",
        description="Write the local sweep analysis (trials.csv, plots, importance, summary.md) of a search.",
    )
    parser.add_argument("search_dir", help="a search run (e.g. runs/scratch-search-bayes) or its search/ folder")
    args = parser.parse_args(argv)
    search_dir = Path(args.search_dir)
    if not search_dir.is_dir():
        raise UserError(f"{search_dir} does not exist: give a search run (runs/<name>) or its search/ folder")
    if (search_dir / SEARCH_DIR).is_dir():
        search_dir = search_dir / SEARCH_DIR
    analysis = write_analysis(search_dir)
    print(analysis.headline)
    return 0
