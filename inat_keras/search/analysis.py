"""The sweep analysis of a search, made locally from KerasTuner's ``trial_*/trial.json`` files.

W&B's sweep panels need an account; these files do not. In ``runs/<name>/search/``:
``trials.csv``, ``best_hyperparameters.json``, ``accuracy_vs_created.png``,
``parallel_coordinates.png``, ``importance.png`` + ``importance.csv`` (Spearman correlation with
validation accuracy and a random forest's importance, like W&B's parameter-importance panel), and
``summary.md``, whose sentences are chosen from the numbers.

``python -m inat_keras sweep-analysis runs/<name>/search`` redoes it at any time, also mid-search.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError
from inat_keras.search.analysis_plots import plot_accuracy_vs_created, plot_importance, plot_parallel_coordinates
from inat_keras.search.space import OBJECTIVE
from inat_keras.search.trials import (
    CLEAR_TREND,
    FEW_TRIALS,
    WEAK_IMPORTANCE,
    TrialRecord,
    best_record,
    hyperparameter_names,
    is_categorical,
    parameter_importance,
    ranked,
    read_trials,
    trial_rows,
    varying,
)
from inat_keras.storage import write_csv, write_json, write_text


@dataclass
class Analysis:
    trials: list[TrialRecord]
    best: dict[str, Any] | None
    importance: list[dict[str, Any]]
    headline: str
    files: list[Path] = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------


# -- tables ------------------------------------------------------------------------------------------


# -- importance ----------------------------------------------------------------------------------------


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
            groups.setdefault(str(t.values.get(name)), []).append(t.completed_accuracy)
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
    where = f"the best third of the trials used {number(top_values[0])}" + (
        f" to {number(top_values[-1])}" if top_values[-1] != top_values[0] else ""
    )
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
        + f"); the median of the completed trials is {statistics.median(t.completed_accuracy for t in done):.4f}.",
        "",
        "## Best trials",
        "",
        "| trial | val accuracy | val loss | " + " | ".join(names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for t in done[:5]:
        loss = t.metrics.get("val_loss")
        cells = [
            t.trial_id,
            f"{t.accuracy:.4f}",
            "" if loss is None else f"{loss:.4f}",
            *(number(t.values.get(n, "")) for n in names),
        ]
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
        lines += [
            "",
            f"With {len(done)} completed trial{'s' * (len(done) != 1)} these are hints, not conclusions: "
            "run more trials to confirm them.",
        ]
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
