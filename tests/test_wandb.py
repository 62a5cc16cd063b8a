"""W&B holds the whole run: what evaluate, explain, export, compare, a search and training log, read back
from the offline W&B run folders (the media files under files/media/ and the records of the .wandb log)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inat_keras.storage import read_json, write_csv, write_text

# The .wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
# chunks, each with a 7-byte header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last).
WANDB_LOG_BLOCK = 32 * 1024


@pytest.fixture(autouse=True)
def wandb_offline_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's staging, cache and settings folders in the test's folder, not the home directory; no network."""
    for variable, folder in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: every start here asks for offline anyway
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def log_records(wandb_file: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = wandb_file.read_bytes()
    assert data[:4] == b":W&B", wandb_file
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = WANDB_LOG_BLOCK - position % WANDB_LOG_BLOCK
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            break
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


class OfflineRun:
    """One offline W&B run folder (``wandb/offline-run-<time>-<id>``), read back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (wandb_file,) = folder.glob("run-*.wandb")
        self.records = list(log_records(wandb_file))

    def of(self, kind: str) -> list[Any]:
        return [getattr(r, kind) for r in self.records if r.WhichOneof("record_type") == kind]

    @property
    def run(self) -> Any:
        return self.of("run")[0]

    def history_keys(self) -> set[str]:
        return {item.key or "/".join(item.nested_key[:1]) for history in self.of("history") for item in history.item}

    def saved_files(self) -> set[str]:
        """The files the run uploads at ``wandb sync`` (its ``files`` records)."""
        return {file.path for files in self.of("files") for file in files.files}

    def steps(self) -> list[int]:
        return [history.step.num for history in self.of("history")]

    def summary(self) -> dict[str, Any]:
        return {item.key: json.loads(item.value_json) for summary in self.of("summary") for item in summary.update if item.key}

    def artifacts(self, kind: str) -> dict[str, Any]:
        return {artifact.name: artifact for artifact in self.of("artifact") if artifact.type == kind}

    def media(self, pattern: str) -> list[Path]:
        return sorted((self.folder / "files" / "media").glob(pattern))


def offline_runs(directory: Path) -> list[OfflineRun]:
    import wandb

    # run.finish() can return before W&B's service has written the last records; teardown waits for it.
    wandb.teardown()
    return [OfflineRun(folder) for folder in sorted((directory / "wandb").glob("offline-run-*"))]


def table_artifact(run: OfflineRun, key: str) -> list[str]:
    """The file names in the manifest of the ``run_table`` artifact W&B made for the table logged as ``key``."""
    prefix = f"run-{run.run.run_id}-{key.replace('/', '')}"
    (artifact,) = [a for name, a in run.artifacts("run_table").items() if name.startswith(prefix)]
    return [entry.path for entry in artifact.manifest.contents]


def table_json(run: OfflineRun, key: str) -> dict[str, Any]:
    (path,) = run.media(f"table/{key}_*.table.json")
    return json.loads(path.read_text())


def png(path: Path) -> None:
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width > 0, path


@pytest.fixture
def scratch_copy(scratch_run: Path, tmp_path: Path) -> Path:
    """The session's scratch run (trained with W&B off), copied so W&B files can be added to it."""
    return Path(shutil.copytree(scratch_run, tmp_path / "runs" / scratch_run.name))


def trained_without_model(run_dir: Path) -> Any:
    """A run as the inspection commands load it, without loading its model (not needed to pick a W&B run)."""
    from inat_keras.inspection.trained import TrainedModel
    from inat_keras.runs import load_run_config

    config = load_run_config(run_dir)
    return TrainedModel(None, ["class_a"], run_dir / "best.keras", run_dir, config)


def test_a_run_trained_without_wandb_gets_a_wandb_run_only_when_asked(scratch_copy):
    from inat_keras.inspection.tracking import start_inspection_wandb

    trained = trained_without_model(scratch_copy)
    assert start_inspection_wandb(trained, None, job_type="evaluate") is None
    assert start_inspection_wandb(trained, "off", job_type="evaluate") is None
    assert not (scratch_copy / "wandb").exists()
    assert read_json(scratch_copy / "checkpoint" / "state.json").get("wandb_id") is None


def test_explain_then_evaluate_log_pictures_tables_and_the_confusion_chart_to_one_wandb_run(scratch_copy, capsys):
    from inat_keras.cli.main import main

    assert main(["explain", str(scratch_copy), "--wandb", "offline"]) == 0
    wandb_id = read_json(scratch_copy / "checkpoint" / "state.json")["wandb_id"]
    assert "wandb sync" in capsys.readouterr().out
    assert main(["evaluate", str(scratch_copy)]) == 0  # no --wandb: resumes the run's W&B run
    explained, evaluated = offline_runs(scratch_copy)
    assert explained.run.run_id == evaluated.run.run_id == wandb_id
    # Offline, the resumed W&B run restarts its steps at 0: evaluate's rows must follow explain's, not replace them.
    assert min(evaluated.steps()) > max(explained.steps())
    assert read_json(scratch_copy / "checkpoint" / "state.json")["wandb_step"] == max(evaluated.steps()) + 1

    # explain: one picture per stable key, so a report panel lines them up across runs.
    for key in ("filters", "guided_backprop", "gradcam", "feature_map_1"):
        (picture,) = explained.media(f"images/explain/{key}_*.png")
        png(picture)
    assert {"explain/filters", "explain/gradcam", "explain/guided_backprop"} <= explained.history_keys()
    assert (
        explained.summary()["explain/predicted_class"] == read_json(scratch_copy / "explain" / "explain.json")["predicted_class"]
    )

    # evaluate: the numbers as summary, equal to metrics.json.
    metrics = read_json(scratch_copy / "eval" / "metrics.json")
    summary = evaluated.summary()
    for key in ("accuracy", "top3_accuracy", "loss"):
        assert summary[f"evaluate/{key}"] == pytest.approx(metrics[key])
    assert summary["evaluate/per_class/class_a/f1"] == pytest.approx(metrics["per_class"]["class_a"]["f1"])
    per_class = table_json(evaluated, "evaluate/per_class")
    assert per_class["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in per_class["data"]] == metrics["class_names"]

    # The confusion matrix as W&B's chart (its table holds one row per cell) and as the PNG.
    cells = table_json(evaluated, "evaluate/confusion_matrix_table")
    counts = {(row[0], row[1]): row[2] for row in cells["data"]}
    names = metrics["class_names"]
    for i, row in enumerate(metrics["confusion_matrix"]):
        for j, count in enumerate(row):
            assert counts.get((names[i], names[j]), 0) == count
    for key in ("confusion_matrix_png", "prediction_grid_png"):
        (picture,) = evaluated.media(f"images/evaluate/{key}_*.png")
        png(picture)

    # The prediction grid and the mistakes as tables with a thumbnail per row, in their artifacts.
    grid = table_json(evaluated, "evaluate/prediction_grid")
    assert grid["columns"][:4] == ["image", "true_class", "predicted_class", "confidence"]
    assert len(grid["data"]) == 30
    grid_files = table_artifact(evaluated, "evaluate/prediction_grid")
    assert "evaluate/prediction_grid.table.json" in grid_files
    assert len({name for name in grid_files if name.startswith("media/images/") and name.endswith(".png")}) >= 10
    mistakes = table_json(evaluated, "evaluate/mistakes")
    wrong = metrics["num_images"] - round(metrics["accuracy"] * metrics["num_images"])
    assert len(mistakes["data"]) == wrong == summary["evaluate/num_mistakes"]
    if wrong:
        assert any(name.startswith("media/images/") for name in table_artifact(evaluated, "evaluate/mistakes"))


def test_wandb_off_logs_nothing_even_for_a_run_with_a_wandb_run(scratch_copy):
    from inat_keras.inspection.tracking import start_inspection_wandb
    from inat_keras.storage import write_json

    state = read_json(scratch_copy / "checkpoint" / "state.json")
    write_json(scratch_copy / "checkpoint" / "state.json", {**state, "wandb_id": "abc123"})
    assert start_inspection_wandb(trained_without_model(scratch_copy), "off", job_type="evaluate") is None
    assert not (scratch_copy / "wandb").exists()


def test_training_logs_curves_the_model_summary_and_best_keras_as_a_model_artifact(tmp_path):
    from conftest import make_dataset_root
    from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
    from inat_keras.training.loop import train_run

    data = make_dataset_root(tmp_path / "data", train_per_class=4, val_per_class=2, size=(32, 32))
    config = RunConfig(
        name="tracked",
        out=str(tmp_path / "runs"),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=8),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(epochs=1, mixed_precision="off", jit_compile="off"),
        tracking=TrackingConfig(wandb="offline", log_model=True),
    )
    result = train_run(config, verbose=0, log=lambda message: None)
    (run,) = offline_runs(result.run_dir)
    assert run.run.run_id == read_json(result.run_dir / "checkpoint" / "state.json")["wandb_id"]
    assert "epoch/accuracy" in run.history_keys()
    assert run.summary()["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert (run.folder / "files" / "model_summary.txt").read_text() == (result.run_dir / "model_summary.txt").read_text()
    assert "model_summary.txt" in run.saved_files()
    (html,) = run.media("html/train/model_summary_*.html")
    assert "Total params" in html.read_text()

    model = run.artifacts("model")["model-tracked"]
    assert [entry.path for entry in model.manifest.contents] == ["best.keras"]
    metadata = json.loads(model.metadata)
    assert metadata["config"]["name"] == "tracked"
    assert metadata["metrics"]["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])


def test_without_wandb_log_model_training_uploads_no_model(tmp_path):
    from inat_keras.config import RunConfig, TrackingConfig
    from inat_keras.training.tracking import log_training_files, start_wandb

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.keras").write_bytes(b"not really a model")
    config = RunConfig(name="r", tracking=TrackingConfig(wandb="offline"))
    wandb_run = start_wandb(config.tracking, run_dir, name="r", config={})
    assert wandb_run is not None
    log_training_files(wandb_run, config, run_dir, {"test_accuracy": 0.5})
    wandb_run.finish()
    (run,) = offline_runs(run_dir)
    assert run.artifacts("model") == {}


def test_a_config_json_written_before_wandb_log_model_existed_still_loads():
    from inat_keras.config import RunConfig

    config = RunConfig.from_dict({"name": "old", "tracking": {"wandb": "offline", "project": "p", "group": None}})
    assert config.tracking.log_model is False


def test_the_log_model_flag_reaches_the_run_config_and_a_resume_may_add_it(tmp_path):
    from inat_keras.cli.flags import load_resume_config, run_config_from_args
    from inat_keras.cli.train_scratch import make_parser
    from inat_keras.storage import write_json

    parser = make_parser()
    config = run_config_from_args(parser.parse_args(["--demo", "--wandb-log-model"]), kind="scratch", model={}, demo_defaults={})
    assert config.tracking.log_model is True
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", {"name": "old", "tracking": {"wandb": "off"}})
    resumed = load_resume_config(parser.parse_args(["--resume", str(run_dir), "--wandb-log-model"]), parser)
    assert resumed.tracking.log_model is True


def write_search_analysis(search_dir: Path) -> None:
    """The files ``write_analysis`` leaves in a search's folder, small."""
    search_dir.mkdir(parents=True)
    write_csv(
        search_dir / "trials.csv", ("trial_id", "status", "val_accuracy", "learning_rate"), [["0", "COMPLETED", "0.5", "0.001"]]
    )
    write_csv(search_dir / "importance.csv", ("hyperparameter", "spearman"), [["learning_rate", "0.3"]])
    write_text(search_dir / "summary.md", "# Search\n\nThe learning rate <mattered>.\n")
    for name in ("accuracy_vs_created", "parallel_coordinates", "importance"):
        Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(search_dir / f"{name}.png")


def test_a_search_analysis_goes_to_a_sweep_analysis_run_in_the_search_group(tmp_path):
    from inat_keras.config import TrackingConfig
    from inat_keras.inspection.tracking import track_sweep_analysis

    search_dir = tmp_path / "runs" / "scratch-search-bayes" / "search"
    write_search_analysis(search_dir)
    assert "wandb sync" in (track_sweep_analysis(search_dir, TrackingConfig(wandb="offline")) or "")
    (run,) = offline_runs(search_dir)
    assert (run.run.job_type, run.run.run_group) == ("sweep-analysis", "scratch-search-bayes")
    trials = table_json(run, "sweep/trials")
    assert trials["columns"] == ["trial_id", "status", "val_accuracy", "learning_rate"]
    assert trials["data"] == [[0, "COMPLETED", 0.5, 0.001]]  # numbers as numbers, so W&B can plot them
    for name in ("accuracy_vs_created", "parallel_coordinates", "importance"):
        (picture,) = run.media(f"images/sweep/{name}_*.png")
        png(picture)
    (summary,) = run.media("html/sweep/summary_*.html")
    assert "&lt;mattered&gt;" in summary.read_text()
    assert (run.folder / "files" / "summary.md").is_file() and "summary.md" in run.saved_files()


def test_sweep_analysis_logs_to_wandb_only_when_the_trials_were_logged_or_asked(tmp_path):
    from inat_keras.inspection.tracking import trials_were_tracked

    search_dir = tmp_path / "runs" / "s" / "search"
    write_search_analysis(search_dir)
    assert not trials_were_tracked(search_dir)
    (search_dir / "trial_0" / "wandb").mkdir(parents=True)
    assert trials_were_tracked(search_dir)


def test_compare_logs_its_table_and_chart_when_asked(scratch_copy, tmp_path):
    from inat_keras.cli.main import main

    out = tmp_path / "comparison"
    assert main(["compare", str(scratch_copy), "--out", str(out)]) == 0
    assert not (out / "wandb").exists()  # the run was trained without W&B and --wandb was not given
    assert main(["compare", str(scratch_copy), "--out", str(out), "--wandb", "offline"]) == 0
    (run,) = offline_runs(out)
    assert run.run.job_type == "compare"
    table = table_json(run, "compare/table")
    assert "name" in table["columns"] or len(table["data"]) == 1
    assert len(table["data"]) == 1
    (chart,) = run.media("images/compare/chart_*.png")
    png(chart)


def test_export_results_are_logged_as_a_table_and_summary(tmp_path):
    from inat_keras.config import TrackingConfig
    from inat_keras.inspection.tracking import log_exports
    from inat_keras.training.tracking import start_wandb

    wandb_run = start_wandb(TrackingConfig(wandb="offline"), tmp_path, name="x", config={})
    assert wandb_run is not None
    result = {"path": "m.tflite", "bytes": 1234, "max_abs_difference": 1e-6, "checked_images": 8, "accepted": True}
    log_exports(wandb_run, {"tflite": result})
    wandb_run.finish()
    (run,) = offline_runs(tmp_path)
    assert run.summary()["export/tflite/bytes"] == 1234
    assert table_json(run, "export/formats")["data"] == [["tflite", "m.tflite", 1234, 1e-6, 8, True]]
