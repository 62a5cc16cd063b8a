"""What evaluate, explain, export, compare and a search's analysis produce, logged to W&B.

Every function here reads the files the command has just written (``metrics.json``, ``mistakes.csv``,
``explain.json``, the PNGs...), so W&B shows exactly what is on disk. The keys are stable and the same for
every run (``evaluate/accuracy``, ``explain/gradcam``...): a report panel on one key shows it side by side
across the runs of a project.

Inspecting a run that was trained with W&B resumes that run's W&B run (its id is in
``checkpoint/state.json``), so everything about one model lives under one W&B run. A run trained with
W&B off gets one only when ``--wandb`` asks for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inat_keras.config import TrackingConfig
from inat_keras.inspection.trained import TrainedModel
from inat_keras.runs import CONFIG_FILE, METRICS_FILE
from inat_keras.storage import read_csv, read_json
from inat_keras.training.tracking import WandbRun, read_wandb_id, record_wandb_id, start_wandb

# Thumbnails in the tables: large enough to recognise the organism, small enough for hundreds of rows.
THUMBNAIL_SIDE = 128
# mistakes.csv of a weak model on the full test set has ~1,000 rows; the most confident ones say the most.
MAX_MISTAKE_ROWS = 300

# -- which W&B run ------------------------------------------------------------------------------


def start_inspection_wandb(trained: TrainedModel, requested: str | None, *, job_type: str) -> WandbRun | None:
    """The W&B run ``evaluate``/``explain``/``export`` log to, or None.

    ``requested`` is the command's ``--wandb`` (None when not given): a run trained with W&B is resumed
    (in the mode it was trained with, unless ``--wandb`` says otherwise; ``--wandb off`` logs nothing);
    a run trained without W&B, or a bare ``.keras`` file, gets a new W&B run only when ``--wandb`` asks.
    """
    if requested == "off":
        return None
    wandb_id = read_wandb_id(trained.run_dir) if trained.run_dir else None
    if wandb_id is None and requested is None:
        return None
    tracking = trained.config.tracking if trained.config else TrackingConfig()
    if requested is not None:
        tracking = dataclasses.replace(tracking, wandb=requested)
    elif tracking.wandb == "off":  # trained without W&B, but a later command started a W&B run for it
        tracking = dataclasses.replace(tracking, wandb="auto")
    name = trained.config.name if trained.config else trained.model_path.stem
    # A resumed W&B run keeps the config training gave it; a new one gets the run's (or the model file's name).
    config = trained.config.to_dict() if trained.config else {"model": str(trained.model_path)}
    wandb_run = start_wandb(
        tracking,
        trained.home,
        name=name,
        config={} if wandb_id else config,
        job_type="train" if wandb_id else job_type,
        resume_id=wandb_id,
    )
    if wandb_run is not None and wandb_id is None and trained.run_dir is not None:
        record_wandb_id(trained.run_dir, wandb_run.run.id)
    return wandb_run


def track_inspection(trained: TrainedModel, requested: str | None, job_type: str, log: Callable[[WandbRun], None]) -> str | None:
    """Log a command's results with ``log`` to the run's W&B run (``start_inspection_wandb``) and close it.

    Returns the line saying where the W&B run went, or None when nothing was logged.
    """
    wandb_run = start_inspection_wandb(trained, requested, job_type=job_type)
    return finished(wandb_run, log)


def finished(wandb_run: WandbRun | None, log: Callable[[WandbRun], None]) -> str | None:
    """Run ``log`` on ``wandb_run`` and close it; the line saying where it went, or None without a run."""
    if wandb_run is None:
        return None
    try:
        log(wandb_run)
    finally:
        message = wandb_run.finish()
    return message


def track_sweep_analysis(search_dir: Path, tracking: TrackingConfig) -> str | None:
    """Log a search's analysis to a new W&B run of job type ``sweep-analysis`` in the search's group.

    The group defaults to the search's name (the run folder above ``search/``), the group its trials
    were logged to, so the analysis sits next to them.
    """
    name = search_dir.parent.name
    tracking = dataclasses.replace(tracking, group=tracking.group or name)
    wandb_run = start_wandb(tracking, search_dir, name=f"{name}-analysis", job_type="sweep-analysis", config={"search": name})
    return finished(wandb_run, lambda run: log_sweep_analysis(run, search_dir))


def trials_were_tracked(search_dir: Path) -> bool:
    """Whether a search logged its trials to W&B (each trial keeps its W&B files in ``trial_<id>/wandb``)."""
    return any(search_dir.glob("trial_*/wandb"))


def track_comparison(run_dirs: Sequence[Path], requested: str | None, paths: Sequence[Path], out_dir: Path) -> str | None:
    """Log a comparison to a new W&B run of job type ``compare``.

    Without ``--wandb`` it is logged when one of the compared runs was trained with W&B, in that run's
    project; ``--wandb off`` logs nothing.
    """
    if requested == "off":
        return None
    logged = tracking_of_runs(run_dirs)
    if logged is None and requested is None:
        return None
    tracking = logged or TrackingConfig()
    tracking = dataclasses.replace(tracking, wandb=requested or tracking.wandb)
    runs = [run_dir.name for run_dir in run_dirs]
    wandb_run = start_wandb(tracking, out_dir, name=f"compare-{out_dir.name}", job_type="compare", config={"runs": runs})
    return finished(wandb_run, lambda run: log_comparison(run, paths))


def tracking_of_runs(run_dirs: Sequence[Path]) -> TrackingConfig | None:
    """The tracking settings of the first of ``run_dirs`` that was logged to W&B, or None when none was."""
    for run_dir in run_dirs:
        if read_wandb_id(run_dir) and (run_dir / CONFIG_FILE).is_file():
            raw = read_json(run_dir / CONFIG_FILE)
            fields = {f.name for f in dataclasses.fields(TrackingConfig)}
            return TrackingConfig(**{k: v for k, v in raw.get("tracking", {}).items() if k in fields})
    return None


# -- media --------------------------------------------------------------------------------------


def image(path: Path, caption: str | None = None) -> Any:
    import wandb

    return wandb.Image(str(path), caption=caption)


def thumbnail(path: str | Path, caption: str | None = None) -> Any:
    """A ``wandb.Image`` of an image file, at most ``THUMBNAIL_SIDE`` pixels a side."""
    import wandb

    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return wandb.Image(np.asarray(picture), caption=caption)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    import wandb

    return wandb.Table(columns=list(columns), data=[list(row) for row in rows])


def cell(text: str) -> Any:
    """A CSV cell as the number it holds, so W&B can sort and plot the column; text stays text, empty is None."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def csv_table(path: Path, *, limit: int | None = None) -> Any:
    """A CSV file (``storage.write_csv``'s) as a ``wandb.Table``, numbers as numbers."""
    rows = read_csv(path)[:limit]
    columns = list(rows[0]) if rows else ["(empty)"]
    return table(columns, [[cell(row[column]) for column in columns] for row in rows])


# -- evaluate -----------------------------------------------------------------------------------


def confusion_pairs(matrix: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(true labels, predicted labels) with one entry per image, from a confusion matrix of counts."""
    truth: list[int] = []
    predicted: list[int] = []
    for true, row in enumerate(matrix):
        for guess, count in enumerate(row):
            truth += [true] * int(count)
            predicted += [guess] * int(count)
    return truth, predicted


def log_evaluation(wandb_run: WandbRun, out_dir: Path) -> None:
    """metrics.json, confusion_matrix.png, prediction_grid.png/.csv and mistakes.csv of ``evaluate``."""
    import wandb

    metrics = read_json(out_dir / METRICS_FILE)
    names = list(metrics["class_names"])
    summary: dict[str, Any] = {
        f"evaluate/{key}": metrics[key] for key in ("accuracy", "top3_accuracy", "loss", "num_images") if key in metrics
    }
    per_class = metrics.get("per_class", {})
    for name, scores in per_class.items():
        for score in ("precision", "recall", "f1"):
            summary[f"evaluate/per_class/{name}/{score}"] = scores[score]
    for average in ("macro_avg", "weighted_avg"):
        for score in ("precision", "recall", "f1"):
            if average in metrics:
                summary[f"evaluate/{average}/{score}"] = metrics[average][score]
    if "tta" in metrics:
        summary["evaluate/tta_accuracy"] = metrics["tta"]["accuracy"]
    wandb_run.log_summary(summary)

    truth, predicted = confusion_pairs(metrics["confusion_matrix"])
    logged: dict[str, Any] = {
        "evaluate/per_class": table(
            ("class", "precision", "recall", "f1", "support"),
            [(name, s["precision"], s["recall"], s["f1"], int(s["support"])) for name, s in per_class.items()],
        ),
        "evaluate/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=truth, preds=predicted, class_names=names, title="Confusion matrix (test)"
        ),
        "evaluate/confusion_matrix_png": image(out_dir / "confusion_matrix.png"),
        "evaluate/prediction_grid_png": image(out_dir / "prediction_grid.png"),
    }
    grid = read_csv(out_dir / "prediction_grid.csv")
    logged["evaluate/prediction_grid"] = table(
        ("image", "true_class", "predicted_class", "confidence", "correct", "row", "column", "path"),
        [
            (
                thumbnail(row["path"], f"{row['true_class']} -> {row['predicted_class']}"),
                row["true_class"],
                row["predicted_class"],
                float(row["confidence"]),
                row["true_class"] == row["predicted_class"],
                int(row["row"]),
                int(row["column"]),
                row["path"],
            )
            for row in grid
        ],
    )
    mistakes = read_csv(out_dir / "mistakes.csv")
    wandb_run.log_summary(
        {"evaluate/num_mistakes": len(mistakes), "evaluate/mistakes_logged": min(len(mistakes), MAX_MISTAKE_ROWS)}
    )
    logged["evaluate/mistakes"] = table(
        ("image", "true_class", "predicted_class", "confidence", "true_class_probability", "path"),
        [
            (
                thumbnail(row["path"], f"{row['true_class']} -> {row['predicted_class']}"),
                row["true_class"],
                row["predicted_class"],
                float(row["confidence"]),
                float(row["true_class_probability"]),
                row["path"],
            )
            for row in mistakes[:MAX_MISTAKE_ROWS]
        ],
    )
    wandb_run.log(logged)


# -- explain ------------------------------------------------------------------------------------


def log_explanation(wandb_run: WandbRun, out_dir: Path) -> None:
    """filters.png, feature_maps_<layer>.png, guided_backprop.png and gradcam.png of ``explain``.

    Feature maps are keyed by depth (``explain/feature_map_1`` is the first convolution shown), not by
    layer name, so the panels line up across runs whose layers are named differently.
    """
    summary = read_json(out_dir / "explain.json")
    caption = f"{Path(summary['image']).name}: predicted {summary['predicted_class']} ({summary['probability']:.0%})"
    logged: dict[str, Any] = {
        "explain/filters": image(out_dir / "filters.png", "first convolution layer's filters"),
        "explain/guided_backprop": image(out_dir / "guided_backprop.png", caption),
        "explain/gradcam": image(out_dir / "gradcam.png", caption),
    }
    maps = [item for item in summary.get("feature_maps", []) if (out_dir / item["file"]).is_file()]
    for depth, item in enumerate(maps, start=1):
        logged[f"explain/feature_map_{depth}"] = image(out_dir / item["file"], str(item.get("layer", item["file"])))
    wandb_run.log(logged)
    wandb_run.log_summary(
        {
            "explain/image": summary["image"],
            "explain/predicted_class": summary["predicted_class"],
            "explain/probability": summary["probability"],
        }
    )


# -- export -------------------------------------------------------------------------------------


def log_exports(wandb_run: WandbRun, results: dict[str, dict[str, Any]]) -> None:
    """Each exported format's size and largest difference from Keras, as summary and a table."""
    columns = ("format", "path", "bytes", "max_abs_difference", "checked_images", "accepted")
    wandb_run.log(
        {"export/formats": table(columns, [(fmt, *(result[c] for c in columns[1:])) for fmt, result in results.items()])}
    )
    wandb_run.log_summary(
        {
            f"export/{fmt}/{key}": result[key]
            for fmt, result in results.items()
            for key in ("bytes", "max_abs_difference", "checked_images")
        }
    )


# -- a search's analysis and a comparison ------------------------------------------------------

SWEEP_PLOTS = ("accuracy_vs_created", "parallel_coordinates", "importance")


def log_sweep_analysis(wandb_run: WandbRun, search_dir: Path) -> None:
    """trials.csv as a table, summary.md as text and the analysis plots as images."""
    logged: dict[str, Any] = {"sweep/trials": csv_table(search_dir / "trials.csv")}
    for name in SWEEP_PLOTS:
        if (search_dir / f"{name}.png").is_file():
            logged[f"sweep/{name}"] = image(search_dir / f"{name}.png")
    if (search_dir / "importance.csv").is_file():
        logged["sweep/importance_table"] = csv_table(search_dir / "importance.csv")
    wandb_run.log(logged)
    wandb_run.log_text_file("sweep/summary", search_dir / "summary.md")


def log_comparison(wandb_run: WandbRun, paths: Sequence[Path]) -> None:
    """comparison.csv as a table, comparison.md as text and comparison.png as an image."""
    logged: dict[str, Any] = {}
    for path in paths:
        if path.suffix == ".csv":
            logged["compare/table"] = csv_table(path)
        elif path.suffix == ".png":
            logged["compare/chart"] = image(path)
    wandb_run.log(logged)
    for path in paths:
        if path.suffix == ".md":
            wandb_run.log_text_file("compare/summary", path)
