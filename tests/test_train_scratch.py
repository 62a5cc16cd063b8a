"""train_scratch.py end to end: every run artifact, the demo, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, make_dataset_root
from inat_keras import CNNConfig, count_params
from inat_keras.cli.train_scratch import main as train_scratch_main
from inat_keras.config import RunConfig

TINY_MODEL = ["--image-size", "32", "--num-blocks", "3", "--first-filters", "8", "--dense-units", "16"]


def run_cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "INAT_KERAS_HOME": str(env_home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, str(REPO / "train_scratch.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )


@dataclass
class FinishedRun:
    run: Path
    stdout: str


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One two-epoch run of train_scratch.py on tiny data, as a user starts it, shared by the artifact tests."""
    base = tmp_path_factory.mktemp("artifacts")
    data = make_dataset_root(base / "data")
    result = run_cli(
        "--data", str(data), *TINY_MODEL, "--epochs", "2", "--out", str(base / "runs"), "--name", "tiny",
        "--wandb", "offline", "--quiet", "--lr-schedule", "cosine", "--warmup-epochs", "1",
        env_home=base,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return FinishedRun(base / "runs" / "tiny", result.stdout)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_the_last_line_names_the_run_directory_and_its_test_accuracy(finished_run: FinishedRun) -> None:
    last_line = finished_run.stdout.strip().splitlines()[-1]
    assert str(finished_run.run) in last_line and "test accuracy" in last_line


def test_config_json_records_every_model_setting_defaults_included(finished_run: FinishedRun) -> None:
    # So a later change of a default cannot change the rebuilt run.
    config = RunConfig.from_dict(json.loads((finished_run.run / "config.json").read_text()))
    assert config.data.image_size == 32 and config.model["num_blocks"] == 3 and config.train.lr_schedule == "cosine"
    assert set(config.model) == {f.name for f in fields(CNNConfig)} - {"num_classes", "input_size"}
    assert config.model["first_filters"] == 8 and config.model["activation"] == CNNConfig.activation


def test_split_csv_lists_every_image_once_with_its_subset(finished_run: FinishedRun) -> None:
    rows = read_rows(finished_run.run / "split.csv")
    assert {r["subset"] for r in rows} == {"train", "validation", "test"}
    assert len(rows) == len({r["path"] for r in rows}) == 36


def test_history_and_curves_show_every_epoch(finished_run: FinishedRun) -> None:
    history = read_rows(finished_run.run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2] and "val_accuracy" in history[0]
    assert Image.open(finished_run.run / "curves.png").size[0] > 400


def test_metrics_json_holds_the_scores_the_counts_and_what_auto_became(finished_run: FinishedRun) -> None:
    from inat_keras.devices import gpu_available

    metrics = json.loads((finished_run.run / "metrics.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "num_params", "macs", "epochs_run", "train_seconds", "train_images_per_second"):
        assert key in metrics, key
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["precision_policy"] == ("mixed_float16" if gpu_available() else "float32")
    assert metrics["jit_compile"] is gpu_available()
    config = json.loads((finished_run.run / "config.json").read_text())
    assert metrics["num_params"] == count_params(CNNConfig(**{**config["model"], "num_classes": 3, "input_size": 32}))


def test_best_keras_takes_raw_rgb_images(finished_run: FinishedRun) -> None:
    import keras
    import numpy as np

    model = keras.models.load_model(finished_run.run / "best.keras")
    first = read_rows(finished_run.run / "split.csv")[0]["path"]
    raw = np.asarray(Image.open(first).convert("RGB").resize((32, 32)), dtype="float32")[None]
    assert model.predict(raw, verbose=0).shape == (1, 3)


def test_the_offline_wandb_run_holds_the_config_and_every_epoch(finished_run: FinishedRun) -> None:
    offline_logs = list((finished_run.run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_logs) == 1, "one offline W&B run stored under the run directory"
    # The log is protobuf records: field names are stored as they are, so the config and metrics show.
    log = offline_logs[0].read_bytes()
    assert b"image_size" in log and b"num_blocks" in log, "the run's config went to W&B"
    assert b"epoch/val_accuracy" in log and b"epoch/loss" in log, "WandbMetricsLogger logged every epoch"
    assert "wandb sync" in finished_run.stdout


def test_the_resume_checkpoint_is_removed_once_the_run_finished(finished_run: FinishedRun) -> None:
    assert (finished_run.run / "best.keras").is_file()
    assert not list(finished_run.run.glob("checkpoint/*.keras"))


@pytest.mark.slow
def test_demo_reaches_95_percent_on_the_real_digits(tmp_path: Path) -> None:
    result = run_cli("--demo", "--out", str(tmp_path / "runs"), "--name", "demo", "--wandb", "off", "--quiet", env_home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo" in result.stdout.lower() and "python -m inat_keras download" in result.stdout
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert metrics["num_test_images"] == 360


def one_line_error(capsys, argv: list[str]) -> str:
    from inat_keras.cli.run import run_main

    try:
        status = run_main(train_scratch_main, argv)
    except SystemExit as stopped:  # refused while the flags are read
        status = stopped.code
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error
    return error


def test_no_dataset_says_how_to_get_one_and_about_the_demo(capsys) -> None:
    error = one_line_error(capsys, [])
    assert "--data" in error and "--demo" in error and "download" in error


def test_image_too_small_for_the_pooling_blocks_is_refused_before_any_file(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    error = one_line_error(capsys, ["--data", str(tiny_dataset), "--image-size", "16", "--out", str(tmp_path / "r")])
    assert "--image-size 16" in error and "32" in error
    assert not (tmp_path / "r").exists()


def test_unwritable_output_directory_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    error = one_line_error(capsys, ["--data", str(tiny_dataset), *TINY_MODEL, "--out", str(blocker), "--wandb", "off"])
    assert "--out" in error and str(blocker) in error


def test_an_existing_run_is_never_overwritten(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "config.json").write_text("{}")
    error = one_line_error(
        capsys, ["--data", str(tiny_dataset), *TINY_MODEL, "--out", str(tmp_path / "runs"), "--name", "taken", "--wandb", "off"]
    )
    assert "--resume" in error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dense-units", "0"], "argument --dense-units: '0': every value must be at least 1"),
        (["--batch-size", "0"], "argument --batch-size: 0 is out of range: give an integer >= 1"),
        (["--filters", "8,0,8"], "argument --filters: '8,0,8': every value must be at least 1"),
    ],
)
def test_zero_sizes_are_one_line_errors_before_any_file_is_written(
    tiny_dataset: Path, tmp_path: Path, capsys, flags, message
) -> None:
    error = one_line_error(
        capsys, ["--data", str(tiny_dataset), *TINY_MODEL, *flags, "--out", str(tmp_path / "runs"), "--wandb", "off"]
    )
    assert message in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_demo_and_data_together_are_refused(tiny_dataset: Path, capsys) -> None:
    error = one_line_error(capsys, ["--demo", "--data", str(tiny_dataset)])
    assert f"--demo and --data {tiny_dataset}: pass one" in error


def test_resume_refuses_flags_it_would_ignore(tmp_path: Path, capsys) -> None:
    error = one_line_error(capsys, ["--resume", str(tmp_path / "runs" / "r"), "--epochs", "8", "--learning-rate", "0.1"])
    assert "--epochs, --learning-rate cannot change them" in error and "another --name" in error
    from inat_keras.cli.finetune import main as finetune_main
    from inat_keras.cli.run import run_main

    assert run_main(finetune_main, ["--resume", str(tmp_path / "runs" / "r"), "--backbone", "vgg16"]) == 2
    assert "--backbone cannot change them" in capsys.readouterr().err


def test_resume_applies_skip_bad_and_the_wandb_mode(tmp_path: Path) -> None:
    import argparse

    from inat_keras.cli.flags import add_data_args, add_run_args, load_resume_config
    from inat_keras.storage import write_json

    run = tmp_path / "runs" / "r"
    write_json(run / "config.json", {**RunConfig(name="r", out=str(tmp_path / "elsewhere")).to_dict(), "class_names": ["a", "b"]})
    parser = argparse.ArgumentParser()
    add_run_args(parser)
    add_data_args(parser)
    config = load_resume_config(parser.parse_args(["--resume", str(run), "--skip-bad", "--wandb", "off", "--quiet"]), parser)
    assert config.data.skip_bad and config.tracking.wandb == "off"
    assert (config.out, config.name) == (str(tmp_path / "runs"), "r")  # where the run is now
    unchanged = load_resume_config(parser.parse_args(["--resume", str(run)]), parser)
    assert not unchanged.data.skip_bad and unchanged.tracking.wandb == "auto"


def test_run_config_round_trips_and_refuses_unknown_settings() -> None:
    from inat_keras import UserError

    config = RunConfig(name="x", model={"num_blocks": 4})
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match=r"unknown TrainConfig setting.*epoch_count"):
        RunConfig.from_dict({"name": "x", "train": {"epoch_count": 3}})
