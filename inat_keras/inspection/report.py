"""``report.html``: one self-contained page per run, per search and per comparison of runs.

The page gathers what a run directory already holds (``config.json``, ``data-check.json``,
``metrics.json``, ``curves.png``, and ``eval/``, ``explain/``, ``export/`` when those commands ran)
so a reader opens one file instead of a dozen; the files stay where they are. Every picture is
embedded as a ``data:`` URI, so the page can be mailed or copied alone, opens without a network, and
reads without JavaScript (the only script sorts the sweep table when a column heading is clicked).
A section whose files are absent says which command writes them. The pages are Jinja2 templates
in ``inat_keras/inspection/templates/``.

Reading files only: the report never loads a model or TensorFlow, so it costs a second or two.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from inat_keras.errors import UserError
from inat_keras.inspection.compare import (
    COLUMNS,
    METRIC_COLUMNS,
    cell,
    collect_rows,
    expand_runs,
    group_by_dataset,
    write_comparison,
)
from inat_keras.inspection.report_html import (
    Notes,
    Table,
    command,
    figure,
    fixed,
    flatten,
    float_or_none,
    key_values,
    markdown_html,
    relative_link,
    render,
    short_number,
)
from inat_keras.inspection.report_sections import (
    commands,
    dataset_section,
    evaluation_section,
    explain_section,
    export_section,
    mistakes_section,
    model_section,
    overview,
    provenance_table,
    settings_tables,
    training_section,
)
from inat_keras.runs import CONFIG_FILE, METRICS_FILE, RETRAINED_FILE, SEARCH_DIR, SETTINGS_FILE, trial_number
from inat_keras.storage import write_text

REPORT_FILE = "report.html"
# The search's analysis files, named here because inspection may not import the search layer
# The search's analysis files, named here because inspection may not import the search layer
# (the two are independent layers).
TRIALS_FILE, SUMMARY_FILE, BEST_HYPERPARAMETERS_FILE = "trials.csv", "summary.md", "best_hyperparameters.json"
SEARCH_PLOTS = (
    ("accuracy_vs_created.png", "Validation accuracy of each trial, in the order the trials ran"),
    ("parallel_coordinates.png", "Each trial's hyperparameters, coloured by validation accuracy"),
    ("importance.png", "Parameter importance (random forest) and Spearman correlation with validation accuracy"),
)


# -- small pieces ---------------------------------------------------------------------------------


# -- rendering ------------------------------------------------------------------------------------


# -- a run ----------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def is_search_dir(path: Path) -> bool:
    return path.is_dir() and ((path / SETTINGS_FILE).is_file() or any(path.glob("trial_*/trial.json")))


def run_page(run_dir: Path) -> dict[str, Any]:
    """Everything the run page shows, read from the run directory."""
    notes = Notes()
    config = notes.json(run_dir / CONFIG_FILE, fix="the run cannot be rebuilt from it; start a new run") or {}
    metrics = notes.json(run_dir / METRICS_FILE, fix=f"delete it and resume with --resume {run_dir} to test the best model again")
    search_dir = run_dir / SEARCH_DIR
    retrained = notes.json(search_dir / RETRAINED_FILE, fix="re-run the search command") if search_dir.is_dir() else None
    return {
        "title": f"Run {config.get('name') or run_dir.name}",
        "run_dir": str(run_dir),
        "rewrite": command("report", run_dir),
        "overview": overview(config, metrics),
        "unfinished": None
        if metrics
        else f"{run_dir / METRICS_FILE} is absent: the run has not finished; continue it with --resume {run_dir}",
        "commands": commands(metrics),
        "provenance": provenance_table(metrics),
        "settings": settings_tables(config),
        "dataset": dataset_section(run_dir, config, notes),
        "model": model_section(run_dir, config, metrics),
        "training": training_section(run_dir, metrics, notes),
        "evaluation": evaluation_section(run_dir, notes),
        "mistakes": mistakes_section(run_dir, notes),
        "explanations": explain_section(run_dir, notes),
        "exports": export_section(run_dir, notes),
        "search_link": f"{SEARCH_DIR}/{REPORT_FILE}" if is_search_dir(search_dir) else None,
        "retrained_trial": retrained_trial_number(retrained),
        "notes": notes.items,
    }


def write_run_report(run_dir: str | os.PathLike) -> Path:
    """Write ``<run>/report.html`` and return its path."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} holds no {CONFIG_FILE}: give a run directory written by a training command")
    path = run_dir / REPORT_FILE
    write_text(path, render("run.html.j2", **run_page(run_dir)))
    return path


# -- a search -------------------------------------------------------------------------------------


def sweep_table(rows: list[dict[str, str]]) -> Table:
    header = list(rows[0]) if rows else []
    formatted = [[short_number(row.get(key) or "") for key in header] for row in rows]
    numeric = [all(float_or_none(row.get(key)) is not None for row in rows if row.get(key)) for key in header]
    return Table(header, formatted, sort_keys=[[row.get(key) or "" for key in header] for row in rows], numeric=numeric)


def search_page(search_dir: Path) -> dict[str, Any]:
    notes = Notes()
    analysis = command("sweep-analysis", search_dir)
    settings = notes.json(search_dir / SETTINGS_FILE, fix="re-run the search command with the same flags") or {}
    trials = notes.csv(search_dir / TRIALS_FILE, fix=f"re-run {analysis}")
    best = notes.json(search_dir / BEST_HYPERPARAMETERS_FILE, fix=f"re-run {analysis}")
    retrained = notes.json(search_dir / RETRAINED_FILE, fix="re-run the search command")
    summary_path = search_dir / SUMMARY_FILE
    run_dir = search_dir.parent
    base = settings.get("base", {})
    facts: list[tuple[str, Any]] = [
        (key.replace("_", " "), settings[key])
        for key in ("tuner", "max_trials", "executions_per_trial", "retrain")
        if key in settings
    ]
    facts += [("kind", base.get("kind")), ("dataset", base.get("data", {}).get("data_dir"))] if base else []
    if isinstance(best, dict) and best:
        facts.append(
            (
                "best trial",
                f"{best.get('trial', best.get('trial_id', '?'))} (validation accuracy {fixed(best.get('val_accuracy'))})",
            )
        )
    run_metrics = (
        notes.json(run_dir / METRICS_FILE, fix=f"resume the retrained run with --resume {run_dir}")
        if is_run_dir(run_dir)
        else None
    )
    return {
        "title": f"Search {base.get('name') or run_dir.name}",
        "search_dir": str(search_dir),
        "rewrite": command("report", search_dir),
        "facts": key_values(facts, header=False),
        "space": key_values(flatten(settings.get("space", {}))) if settings.get("space") else None,
        "trials": sweep_table(trials) if trials else None,
        "trials_missing": f"{search_dir / TRIALS_FILE} is absent: {analysis} writes the sweep table, plots and summary",
        "plots": [f for f in (figure(search_dir, name, title) for name, title in SEARCH_PLOTS) if f],
        "summary": markdown_html(summary_path.read_text(encoding="utf-8", errors="replace")) if summary_path.is_file() else None,
        "retrained": {
            "link": f"../{REPORT_FILE}",
            "run_dir": str(run_dir),
            "trial": retrained_trial_number(retrained),
            "test_accuracy": fixed((run_metrics or {}).get("test_accuracy")) if run_metrics else None,
        }
        if is_run_dir(run_dir)
        else None,
        "notes": notes.items,
    }


def write_search_report(search_dir: str | os.PathLike, *, with_run: bool = True) -> Path:
    """Write ``<search>/report.html`` (and, ``with_run``, the retrained run's page it links to); return its path."""
    search_dir = Path(search_dir)
    if not is_search_dir(search_dir):
        raise UserError(f"{search_dir} holds no search ({SETTINGS_FILE} or trial_*/): give runs/<name>/search")
    if with_run and is_run_dir(search_dir.parent):
        write_run_report(search_dir.parent)
    path = search_dir / REPORT_FILE
    write_text(path, render("search.html.j2", **search_page(search_dir)))
    return path


# -- runs compared --------------------------------------------------------------------------------


def write_comparison_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """``<out>/report.html`` beside comparison.csv/.md/.png; each run's name links to its own page."""
    rows, skipped = collect_rows(list(run_dirs))
    finished = [run_dir for run_dir in run_dirs if (run_dir / METRICS_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()]
    pages = {id(row): run_dir / REPORT_FILE for row, run_dir in zip(rows, finished, strict=False) if row["run"] == run_dir.name}
    written = write_comparison(rows, out)
    numeric = [column in ("classes", "image_size", *METRIC_COLUMNS) for column in COLUMNS]
    groups = []
    for label, members in group_by_dataset(rows):
        cells = [[cell(row[column]) for column in COLUMNS] for row in members]
        for row, line in zip(members, cells, strict=True):
            if id(row) in pages:
                line[0] = Markup('<a href="{}">{}</a>').format(relative_link(pages[id(row)], out), row["run"])
        keys = [["" if row[column] is None else str(row[column]) for column in COLUMNS] for row in members]
        groups.append({"label": label, "table": Table(list(COLUMNS), cells, sort_keys=keys, numeric=numeric)})
    chart = figure(out, Path(written[-1]).name, "Runs compared", "Accuracy, parameters, epochs and training time of each run.")
    page = {"title": f"{len(rows)} runs compared", "out": str(out), "groups": groups, "chart": chart, "skipped": skipped}
    path = out / REPORT_FILE
    write_text(path, render("comparison.html.j2", rewrite=command("report", *run_dirs, "--out", out), notes=[], **page))
    return path


# -- the command ----------------------------------------------------------------------------------


def write_reports(targets: Sequence[str], out: Path) -> list[Path]:
    """The pages of every run and search named (globs allowed), and a comparison when several runs are.

    A run directory that holds a search (``runs/<name>/search/``) gets both pages; the last page
    returned is the one to open first: the comparison, else the last search or run. A folder a glob
    matched that is neither a run nor a search (``runs/*`` also matches ``runs/comparison``) is passed over.
    """
    runs: list[Path] = []
    searches: list[Path] = []
    for target in targets:
        for path in expand_runs([target]):
            if is_run_dir(path):
                runs.append(path)
            if is_search_dir(path):
                searches.append(path)
            elif is_search_dir(path / SEARCH_DIR):
                searches.append(path / SEARCH_DIR)
            elif not is_run_dir(path) and not glob.has_magic(target):
                raise UserError(
                    f"{path} is neither a run (no {CONFIG_FILE}) nor a search (no {SETTINGS_FILE}): "
                    "give run directories such as runs/NAME, or a search's runs/NAME/search"
                )
    if not runs and not searches:
        raise UserError(f"{', '.join(targets)} matches no run or search: give run directories such as runs/NAME")
    runs, searches = list(dict.fromkeys(runs)), list(dict.fromkeys(searches))
    written = [write_run_report(run) for run in runs]
    written += [write_search_report(search, with_run=search.parent not in runs) for search in searches]
    if len(runs) > 1:
        written.append(write_comparison_report(runs, out))
    return written


def retrained_trial_number(retrained: dict[str, Any] | None) -> int | None:
    """The retrained trial as every message names it: KerasTuner's ``#N`` (``search.trials.trial_number``)."""
    trial_id = (retrained or {}).get("trial_id")
    return None if trial_id is None else trial_number(str(trial_id))
