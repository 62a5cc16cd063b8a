"""The sections of a run's report.html: overview, settings, dataset, model, training, evaluation, mistakes,
explanations and exports, each read from the files the commands wrote."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from inat_keras.inspection.compare import describe_model
from inat_keras.inspection.report_html import (
    MISSING,
    Notes,
    Table,
    command,
    figure,
    fixed,
    flatten,
    float_or_none,
    format_value,
    imbalance_text,
    key_values,
    macs_text,
    percent,
    seconds_text,
    short_number,
    size_text,
    thumbnail_data_uri,
)
from inat_keras.runs import (
    BEST_MODEL,
    CURVES_FILE,
    DATA_CHECK_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_SUMMARY_FILE,
    SKIPPED_FILE,
    SPLIT_FILE,
)

# The mistakes shown with thumbnails, most confident first; mistakes.csv lists them all.
MAX_MISTAKES = 30

# The folders evaluate, explain and export write into a run directory by default.
EVAL_DIR, EXPLAIN_DIR, EXPORT_DIR = "eval", "explain", "export"


MAX_SKIPPED_SHOWN = 50


LAYER_SETTINGS = ("filters", "kernel_size", "strides", "pool_size", "units", "activation", "rate", "momentum")


def commands(metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(how, command) of each process that trained the run: metrics.json's provenance lists them, the first
    started the run, later ones resumed it."""
    recorded = ((metrics or {}).get("provenance") or {}).get("commands") or []
    if isinstance(recorded, str):
        recorded = [recorded]
    return [("started with" if index == 0 else "resumed with", str(line)) for index, line in enumerate(recorded)]


def provenance_table(metrics: dict[str, Any] | None) -> Table | None:
    """Device, package versions, Python, the OS and the code's git commit, from metrics.json."""
    if not metrics:
        return None
    recorded = metrics.get("provenance")
    pairs = [(key, value) for key, value in flatten(recorded) if key != "commands"] if isinstance(recorded, dict) else []
    if metrics.get("device"):
        pairs.insert(0, ("device", metrics["device"]))
    return key_values(pairs, header=False) if pairs else None


def overview(config: dict[str, Any], metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The headline numbers at the top of a run's page."""
    data = config.get("data", {})
    classes = config.get("class_names") or (metrics or {}).get("class_names") or []
    rows = [("kind", "trained from scratch" if config.get("kind") == "scratch" else f"fine-tuned ({config.get('kind')})")]
    rows.append(("classes", f"{len(classes)}" if classes else MISSING))
    rows.append(("image size", f"{data.get('image_size')} px" if data.get("image_size") else MISSING))
    if not metrics:
        return [*rows, ("status", "unfinished: no metrics.json yet")]
    rows += [
        ("test accuracy", f"{fixed(metrics.get('test_accuracy'))} ({percent(metrics.get('test_accuracy'))})"),
        ("test top-3 accuracy", fixed(metrics.get("test_top3_accuracy"))),
        ("best validation accuracy", f"{fixed(metrics.get('val_accuracy'))} (epoch {metrics.get('best_epoch', MISSING)})"),
        ("parameters", f"{format_value(metrics.get('num_params'))} ({format_value(metrics.get('trainable_params'))} trainable)"),
        ("computations", macs_text(metrics.get("macs"))),
        ("epochs", f"{metrics.get('epochs_run', MISSING)}" + (" (stopped early)" if metrics.get("stopped_early") else "")),
        ("training time", seconds_text(metrics.get("train_seconds"), metrics.get("train_images_per_second"))),
    ]
    return rows


def settings_tables(config: dict[str, Any]) -> list[tuple[str, Table]]:
    """Every setting of config.json, one table per concern."""
    tables = [(name, key_values(flatten(config[name]))) for name in ("data", "model", "train", "tracking") if config.get(name)]
    top = [(key, config[key]) for key in ("name", "kind", "out", "demo") if key in config]
    return [("run", key_values(top)), *tables]


def split_counts(run_dir: Path, notes: Notes) -> dict[str, Counter[str]] | None:
    rows = notes.csv(run_dir / SPLIT_FILE, fix="it is written when a run starts; start a new run")
    if rows is None:
        return None
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(row.get("subset", "?"), Counter())[row.get("label", "?")] += 1
    return counts


def dataset_section(run_dir: Path, config: dict[str, Any], notes: Notes) -> dict[str, Any]:
    check_command = command("check-data", config.get("data", {}).get("data_dir") or "DIR")
    check = notes.json(run_dir / DATA_CHECK_FILE, fix=f"re-run {check_command}")
    split = split_counts(run_dir, notes) or {}
    classes = list(config.get("class_names") or [])
    per_class = (check or {}).get("images_per_class", {})
    for folder in per_class.values():
        classes += [name for name in folder if name not in classes]
    folders = list(per_class)
    subsets = [name for name in ("train", "validation", "test") if name in split]
    header = ["class", *(f"{folder}/ (found)" for folder in folders), *(f"{subset} (used)" for subset in subsets)]
    rows = [
        [name, *(format_value(per_class[f].get(name, 0)) for f in folders), *(format_value(split[s][name]) for s in subsets)]
        for name in classes
    ]
    if rows:
        totals = [sum(per_class[f].values()) for f in folders] + [sum(split[s].values()) for s in subsets]
        rows.append(["all classes", *map(format_value, totals)])
    summary: list[tuple[str, Any]] = [
        ("dataset", config.get("data", {}).get("data_dir") or ("the demo digits" if config.get("demo") else MISSING))
    ]
    bad: list[dict[str, str]] = []
    if check:
        found = check.get("summary", {})
        summary += [
            (key.replace("_", " "), found[key])
            for key in ("images", "usable", "unusable", "duplicate_groups", "ignored")
            if key in found
        ]
        summary += [
            ("formats", check.get("formats")),
            ("imbalance (largest / smallest class)", imbalance_text(check.get("imbalance"))),
        ]
        bad = list(check.get("bad", []))
    return {
        "check": check is not None,
        "summary": key_values(summary, header=False),
        "per_class": Table(header, rows) if rows else None,
        "bad": Table(
            ["path", "reason", "detail"],
            [[b.get("path", ""), b.get("reason", ""), b.get("detail", "")] for b in bad[:MAX_SKIPPED_SHOWN]],
        ),
        "bad_count": len(bad),
        "skipped_file": str(run_dir / SKIPPED_FILE) if (run_dir / SKIPPED_FILE).is_file() else None,
        "missing": None if check else f"{run_dir / DATA_CHECK_FILE} is absent: {check_command} checks a dataset",
    }


def layer_table_from_keras_file(path: Path) -> Table | None:
    """The layers of a saved model from the architecture inside the .keras zip, without loading Keras."""
    try:
        with zipfile.ZipFile(path) as archive:
            architecture = json.loads(archive.read("config.json"))
        layers = architecture["config"]["layers"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    rows = []
    for layer in layers:
        settings = layer.get("config", {})
        shape = (layer.get("build_config") or {}).get("input_shape")
        details = {key: settings[key] for key in LAYER_SETTINGS if key in settings and settings[key] not in (None, "linear")}
        rows.append([settings.get("name", "?"), layer.get("class_name", "?"), format_value(shape), format_value(details)])
    return Table(["layer", "type", "input shape", "settings"], rows)


def model_section(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any] | None) -> dict[str, Any]:
    model, training = describe_model(config)
    rows: list[tuple[str, Any]] = [("model", model), ("trained layers", training)]
    if metrics:
        rows += [
            ("parameters", metrics.get("num_params")),
            ("trainable parameters", metrics.get("trainable_params")),
            ("computations", macs_text(metrics.get("macs"))),
            ("precision", metrics.get("precision_policy")),
            ("XLA (jit_compile)", metrics.get("jit_compile")),
        ]
    summary_path = run_dir / MODEL_SUMMARY_FILE
    summary = summary_path.read_text(encoding="utf-8", errors="replace") if summary_path.is_file() else None
    layers = None if summary else layer_table_from_keras_file(run_dir / BEST_MODEL)
    return {"facts": key_values(rows, header=False), "summary": summary, "layers": layers, "summary_file": MODEL_SUMMARY_FILE}


def training_section(run_dir: Path, metrics: dict[str, Any] | None, notes: Notes) -> dict[str, Any]:
    history = notes.csv(run_dir / HISTORY_FILE, fix="it is rewritten at the end of every epoch; resume the run")
    table = None
    if history:
        header = list(history[0])
        table = Table(header, [[short_number(row.get(key, "")) for key in header] for row in history])
    facts: list[tuple[str, Any]] = []
    if metrics:
        facts += [
            ("epochs run", metrics.get("epochs_run")),
            ("best epoch", metrics.get("best_epoch")),
            ("stopped early", metrics.get("stopped_early")),
            ("training time", seconds_text(metrics.get("train_seconds"), metrics.get("train_images_per_second"))),
            ("images (train / validation / test)", [metrics.get(f"num_{s}_images") for s in ("train", "validation", "test")]),
        ]
        facts += [(f"distribution.{key}", value) for key, value in flatten(metrics.get("distribution") or {})]
    return {
        "curves": figure(run_dir, CURVES_FILE, "Loss and accuracy per epoch, training and validation"),
        "history": table,
        "facts": key_values(facts, header=False) if facts else None,
    }


def evaluation_section(run_dir: Path, notes: Notes) -> dict[str, Any]:
    eval_dir = run_dir / EVAL_DIR
    evaluation = notes.json(eval_dir / METRICS_FILE, fix=f"re-run {command('evaluate', run_dir)}")
    missing = (
        f"{eval_dir}/ is absent: {command('evaluate', run_dir)} writes the per-class metrics, "
        "confusion matrix, prediction grid and mistakes"
    )
    if not evaluation:
        return {"missing": missing}
    facts: list[tuple[str, Any]] = [
        ("test images", evaluation.get("data")),
        (
            "images",
            f"{evaluation.get('num_images', MISSING)}"
            + (f" ({evaluation['num_skipped']} unreadable, skipped)" if evaluation.get("num_skipped") else ""),
        ),
        ("accuracy", f"{fixed(evaluation.get('accuracy'))} ({percent(evaluation.get('accuracy'))})"),
        ("top-3 accuracy", fixed(evaluation.get("top3_accuracy"))),
        ("loss (cross-entropy)", fixed(evaluation.get("loss"))),
        ("macro F1", fixed((evaluation.get("macro_avg") or {}).get("f1"))),
        ("weighted F1", fixed((evaluation.get("weighted_avg") or {}).get("f1"))),
    ]
    tta = evaluation.get("tta")
    if isinstance(tta, dict):
        facts.append(
            (
                "with test-time augmentation",
                f"accuracy {fixed(tta.get('accuracy'))}, top-3 {fixed(tta.get('top3_accuracy'))}, loss {fixed(tta.get('loss'))} "
                f"({tta.get('changed_predictions', MISSING)} predictions changed; {tta.get('method', '')})",
            )
        )
    per_class = evaluation.get("per_class") or {}
    rows = [
        [
            name,
            fixed(scores.get("precision"), 3),
            fixed(scores.get("recall"), 3),
            fixed(scores.get("f1"), 3),
            format_value(int(scores.get("support", 0))),
        ]
        for name, scores in per_class.items()
    ]
    return {
        "missing": None,
        "facts": key_values(facts, header=False),
        "per_class": Table(["class", "precision", "recall", "F1", "test images"], rows, numeric=[False, True, True, True, True]),
        "confusion": figure(
            eval_dir, "confusion_matrix.png", "Confusion matrix", "Counts (left) and recall per true class (right)."
        ),
        "grid": figure(
            eval_dir, "prediction_grid.png", "Prediction grid", "Random test images per class: green frame right, red wrong."
        ),
    }


def mistakes_section(run_dir: Path, notes: Notes) -> dict[str, Any]:
    path = run_dir / EVAL_DIR / "mistakes.csv"
    rows = notes.csv(path, fix=f"re-run {command('evaluate', run_dir)}")
    if rows is None:
        return {"missing": f"{path} is absent: {command('evaluate', run_dir)} lists every misclassified test image"}
    shown = []
    for row in rows[:MAX_MISTAKES]:
        shown.append(
            {
                "uri": thumbnail_data_uri(row.get("path", "")),
                "path": row.get("path", ""),
                "short_path": "/".join(Path(row.get("path", "")).parts[-2:]),
                "true": row.get("true_class", ""),
                "predicted": row.get("predicted_class", ""),
                "confidence": percent(float_or_none(row.get("confidence"))),
                "true_probability": percent(float_or_none(row.get("true_class_probability"))),
            }
        )
    pairs = Counter((row.get("true_class", ""), row.get("predicted_class", "")) for row in rows).most_common(10)
    confusions = Table(["true class", "predicted as", "images"], [[t, p, format_value(n)] for (t, p), n in pairs])
    return {"missing": None, "count": len(rows), "shown": shown, "file": str(path), "confusions": confusions}


def explain_section(run_dir: Path, notes: Notes) -> dict[str, Any]:
    explain_dir = run_dir / EXPLAIN_DIR
    summary = notes.json(explain_dir / "explain.json", fix=f"re-run {command('explain', run_dir)}")
    if summary is None:
        return {
            "missing": f"{explain_dir}/ is absent: {command('explain', run_dir)} draws the filters, feature maps, "
            "guided backpropagation and Grad-CAM of a test image"
        }
    figures = [
        figure(
            explain_dir,
            "gradcam.png",
            "Grad-CAM",
            f"Where the model looked (last convolution layer {summary.get('last_conv_layer', '?')}).",
        ),
        figure(explain_dir, "guided_backprop.png", "Guided backpropagation", "The input pixels that excite single neurons most."),
    ]
    # Filters and one picture per conv block: folded away (a <details>, no script), they are most of the page.
    layers = [figure(explain_dir, "filters.png", "Filters of the first convolution layer")]
    for item in summary.get("feature_maps", []):
        name = item.get("file", "") if isinstance(item, dict) else ""
        if name:
            shape = f"shape {format_value(item.get('shape'))}"
            layers.append(figure(explain_dir, name, f"Feature maps of {item.get('layer', name)}", shape))
    facts = [
        ("image", summary.get("image")),
        ("predicted", f"{summary.get('predicted_class', MISSING)} ({percent(summary.get('probability'))})"),
    ]
    return {
        "missing": None,
        "facts": key_values(facts, header=False),
        "figures": [f for f in figures if f],
        "layers": [f for f in layers if f],
        "warnings": summary.get("warnings", []),
    }


def export_section(run_dir: Path, notes: Notes) -> dict[str, Any]:
    path = run_dir / EXPORT_DIR / "export.json"
    exports = notes.json(path, fix=f"re-run {command('export', run_dir, '--format', 'FORMAT')}")
    if not exports:
        example = command("export", run_dir, "--format", "tflite")
        return {"missing": f"{path} is absent: {example} (or savedmodel, onnx) exports and checks the model"}
    rows = [
        [
            fmt,
            "accepted" if entry.get("accepted") else "refused",
            entry.get("path", ""),
            size_text(entry.get("bytes")),
            f"{entry['max_abs_difference']:.2e}" if isinstance(entry.get("max_abs_difference"), (int, float)) else MISSING,
            format_value(entry.get("tolerance")),
            format_value(entry.get("checked_images")),
            format_value(entry.get("same_top1")),
        ]
        for fmt, entry in exports.items()
        if isinstance(entry, dict)
    ]
    header = ["format", "check", "file", "size", "max difference from Keras", "tolerance", "images checked", "same top-1"]
    inputs = {entry.get("input") for entry in exports.values() if isinstance(entry, dict) and entry.get("input")}
    return {"missing": None, "table": Table(header, rows), "inputs": sorted(inputs)}
