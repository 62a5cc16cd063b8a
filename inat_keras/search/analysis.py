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
from inat_keras.runs import CONFIG_FILE, SETTINGS_FILE, trial_number
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
from inat_keras.storage import read_json, write_csv, write_json, write_text

# A best validation accuracy less than this far above 1/classes is what guessing scores: the search learned nothing.
NEAR_CHANCE = 0.05


@dataclass
class Analysis:
    trials: list[TrialRecord]
    best: dict[str, Any] | None
    importance: list[dict[str, Any]]
    headline: str
    files: list[Path] = field(default_factory=list)
    num_classes: int | None = None
    near_chance: bool = False  # every completed trial ended within NEAR_CHANCE of 1/num_classes


# -- chance --------------------------------------------------------------------------------------------


def count_classes(search_dir: Path) -> int | None:
    """How many classes the trials chose among: the retrained run's ``config.json`` beside ``search/``, else the
    class folders of the dataset ``search.json`` names (counted, not listed: iNaturalist has 10,000 images)."""
    try:
        config_path = search_dir.parent / CONFIG_FILE
        if config_path.is_file() and read_json(config_path).get("class_names"):
            return len(read_json(config_path)["class_names"])
        settings_path = search_dir / SETTINGS_FILE
        data_dir = read_json(settings_path).get("base", {}).get("data", {}).get("data_dir") if settings_path.is_file() else None
        train = Path(data_dir) / "train" if data_dir else None
        if train is not None and train.is_dir():
            return sum(1 for entry in train.iterdir() if entry.is_dir() and not entry.name.startswith(".")) or None
    except (OSError, ValueError, AttributeError):  # a damaged or hand-edited file: no chance line rather than no analysis
        return None
    return None


def is_near_chance(trials: list[TrialRecord], num_classes: int | None) -> bool:
    """Every completed trial within ``NEAR_CHANCE`` of guessing (validation accuracy about 1/classes)."""
    done = ranked(trials)
    if not done or not num_classes:
        return False
    return done[0].completed_accuracy < 1 / num_classes + NEAR_CHANCE


def chance_sentence(trials: list[TrialRecord], num_classes: int) -> str:
    best = ranked(trials)[0].completed_accuracy
    return (
        f"every completed trial ended near chance: the best validation accuracy {best:.4f} is within "
        f"{NEAR_CHANCE * 100:.0f} points of the {1 / num_classes:.4f} that guessing among {num_classes} classes scores, "
        "so no trial learned anything to compare; try more epochs, other learning rates or check the data"
    )


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


def summary_text(
    title: str,
    trials: list[TrialRecord],
    names: list[str],
    rows: list[dict[str, Any]],
    tuner: str | None,
    num_classes: int | None = None,
) -> str:
    done = ranked(trials)
    failed = sum(t.status in ("FAILED", "INVALID") for t in trials)
    unfinished = len(trials) - len(done) - failed
    counts = f"{len(trials)} trial{'s' * (len(trials) != 1)}: {len(done)} completed, {failed} failed, {unfinished} unfinished"
    lines = [f"# Search {title}", "", f"{counts}{f' ({tuner} tuner)' if tuner else ''}.", ""]
    if not done:
        return "\n".join([*lines, "No trial has completed yet, so there is nothing to compare.", ""])
    best = done[0]
    seconds = best.metrics.get("trial_seconds")
    near_chance = num_classes is not None and is_near_chance(trials, num_classes)
    if num_classes is not None and near_chance:
        lines += [f"**Warning: {chance_sentence(trials, num_classes)}.**", ""]
    lines += [
        f"Best validation accuracy **{best.accuracy:.4f}** (trial {trial_number(best.trial_id)}"
        + (f", {seconds:.0f} s" if seconds is not None else "")
        + f"); the median of the completed trials is {statistics.median(t.completed_accuracy for t in done):.4f}.",
        "",
        "## Best trials",
        "",
        "| " + " | ".join(["trial", "val accuracy", "val loss", *names]) + " |",
        "| " + " | ".join("---" for _ in range(3 + len(names))) + " |",
    ]
    for t in done[:5]:
        loss = t.metrics.get("val_loss")
        cells = [
            str(trial_number(t.trial_id)),
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
    if near_chance and names:
        lines += ["", "Every trial was at chance, so these differences are noise, not findings."]
    elif len(done) < FEW_TRIALS:
        lines += [
            "",
            f"With {len(done)} completed trial{'s' * (len(done) != 1)} these are hints, not conclusions: "
            "run more trials to confirm them.",
        ]
    return "\n".join([*lines, ""])


# -- all files --------------------------------------------------------------------------------------------


def write_analysis(search_dir: str | Path, num_classes: int | None = None) -> Analysis:
    """Write every analysis file into ``search_dir`` and return what they say.

    ``num_classes`` (else read from the run's files, see ``count_classes``) lets the summary say
    when every trial ended at chance."""
    search_dir = Path(search_dir)
    trials, space = read_trials(search_dir)
    if not trials:
        raise UserError(f"{search_dir} holds no trial_*/trial.json: give a search run (runs/<name>) or its search/ folder")
    names = hyperparameter_names(trials, space)
    moving = varying(trials, names)
    title = search_dir.parent.name
    settings_path = search_dir / SETTINGS_FILE
    tuner = json.loads(settings_path.read_text())["tuner"] if settings_path.exists() else None
    num_classes = num_classes or count_classes(search_dir)

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
    write_text(search_dir / "summary.md", summary_text(title, trials, moving, importance, tuner, num_classes))

    done = ranked(trials)
    headline = f"search: {len(trials)} trial{'s' * (len(trials) != 1)} ({len(done)} completed) in {search_dir}"
    if best:
        headline += f"; best val accuracy {best[OBJECTIVE]:.4f} (trial {best['trial']})"
    near_chance = is_near_chance(trials, num_classes)
    if num_classes is not None and near_chance:
        headline += f"; warning: every completed trial ended near chance ({1 / num_classes:.4f} with {num_classes} classes)"
    files = [search_dir / name for name in ANALYSIS_FILES]
    headline += f"; analysis: {search_dir / 'summary.md'}"
    return Analysis(trials, best, importance, headline, files, num_classes, near_chance)


ANALYSIS_FILES = (
    "trials.csv",
    "best_hyperparameters.json",
    "accuracy_vs_created.png",
    "parallel_coordinates.png",
    "importance.csv",
    "importance.png",
    "summary.md",
)
