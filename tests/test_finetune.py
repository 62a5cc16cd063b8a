"""finetune.py end to end: the demo's artifacts, two-phase resume, the feature cache and errors (compare: test_compare.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from inat_keras.cli.finetune import main as finetune_main
from inat_keras.cli.run import run_main
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.errors import UserError


def transfer_run(data: Path, out: Path, name: str, *, epochs: int, **model) -> RunConfig:
    return RunConfig(
        name=name,
        kind="transfer",
        out=str(out),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=8),
        model={"backbone": "mobilenetv2", "weights": None, **model},
        train=TrainConfig(epochs=epochs, learning_rate=1e-3),
        tracking=TrackingConfig(wandb="off"),
    )


def history_of(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_the_finetune_demo_writes_every_run_artifact(tmp_path: Path) -> None:
    env = {**os.environ, "INAT_KERAS_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        str(REPO / "finetune.py"),
        "--demo",
        "--backbone",
        "mobilenetv2",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "demo",
        "--wandb",
        "off",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    assert str(run) in result.stdout.strip().splitlines()[-1]
    assert "phase head: epochs 1-1" in result.stdout and "phase fine-tune: epochs 2-2" in result.stdout
    for artifact in ("config.json", "split.csv", "best.keras", "history.csv", "curves.png", "metrics.json"):
        assert (run / artifact).is_file(), artifact
    config = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert config.kind == "transfer" and config.model["backbone"] == "mobilenetv2" and config.model["weights"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["trainable_params"] < metrics["num_params"] and metrics["epochs_run"] == 2
    assert [int(row["epoch"]) for row in history_of(run)] == [1, 2]


def test_a_resumed_two_phase_run_unfreezes_the_backbone_again_before_continuing(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from inat_keras.training import checkpoints, setup
    from inat_keras.training.checkpoints import EpochCheckpoint
    from inat_keras.training.loop import train_run

    config = transfer_run(tiny_dataset, tmp_path / "runs", "two", epochs=3, unfreeze=8, head_epochs=1)
    save_epoch = EpochCheckpoint.save_epoch
    starts: list[int] = []  # the first epoch of every training dataset built: each fit's batches start at its own epoch

    def recording_batched(array, data, count, *, training, first_epoch=0):
        if training:
            starts.append(first_epoch)
        return batched(array, data, count, training=training, first_epoch=first_epoch)

    batched = setup.batched
    monkeypatch.setattr(setup, "batched", recording_batched)

    def interrupt_after_epoch_two(self, epoch, logs=None):
        save_epoch(self, epoch, logs)
        if epoch + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", interrupt_after_epoch_two)
    first_log: list[str] = []
    with pytest.raises(UserError, match=r"finetune.py --resume"):
        train_run(config, verbose=0, log=first_log.append)
    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", save_epoch)
    assert starts == [0, 0, 1]  # the run's datasets, the head phase's fit, the fine-tuning phase's fit
    starts.clear()

    resumed_log: list[str] = []
    result = train_run(config, resume=True, verbose=0, log=resumed_log.append)
    assert starts == [2, 2]  # resumed inside the fine-tuning phase, after its first epoch
    fine_tune = [line for line in first_log if line.startswith("phase fine-tune")]
    head = [line for line in first_log if line.startswith("phase head")]
    resumed = [line for line in resumed_log if line.startswith("phase fine-tune")]
    assert resumed == fine_tune  # same layers trained after the resume
    trainable = int(resumed[0].split(", ")[1].split()[0].replace(",", ""))
    assert trainable > int(head[0].split(", ")[1].split()[0].replace(",", ""))
    assert result.metrics["trainable_params"] == trainable
    assert [int(row["epoch"]) for row in history_of(result.run_dir)] == [1, 2, 3]


def test_head_training_on_cached_features_writes_the_same_artifacts_and_a_full_image_model(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    import keras
    import numpy as np

    from inat_keras.training.loop import train_run

    log: list[str] = []
    config = transfer_run(tiny_dataset, tmp_path / "runs", "cached", epochs=2, unfreeze=0)
    result = train_run(config, verbose=0, log=log.append)
    assert any(line.startswith("feature cache: backbone run once on 19 + 5 images") for line in log), log

    run = result.run_dir
    for artifact in ("config.json", "split.csv", "best.keras", "history.csv", "curves.png", "metrics.json"):
        assert (run / artifact).is_file(), artifact
    assert [int(row["epoch"]) for row in history_of(run)] == [1, 2] and "val_accuracy" in history_of(run)[0]
    assert not list((run / "checkpoint").glob("*.keras"))
    best = keras.models.load_model(run / "best.keras")
    assert best.input_shape == (None, 32, 32, 3)
    assert np.asarray(best.predict(np.full((2, 32, 32, 3), 128.0, "float32"), verbose=0)).shape == (2, 3)
    head_params = 1280 * 3 + 3
    assert result.metrics["trainable_params"] == head_params < result.metrics["num_params"]


def test_bad_finetune_settings_are_one_line_errors_before_any_file_is_written(
    tiny_dataset: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import urllib.error

    from keras.src.utils import file_utils

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras"))
    out = tmp_path / "runs"
    common = ["--data", str(tiny_dataset), "--out", str(out), "--wandb", "off", "--weights", "none", "--quiet"]
    cases = {
        ("--backbone", "xception", "--image-size", "40"): "--image-size 71 or more",
        ("--backbone", "mobilenetv2", "--unfreeze", "-2"): "--unfreeze -2",
        ("--backbone", "mobilenetv2", "--epochs", "2", "--head-epochs", "2"): "--head-epochs 2",
        ("--backbone", "mobilenetv2", "--weights", str(tmp_path / "absent.h5")): "no such file",
        ("--backbone", "mobilenetv2", "--image-size", "96", "--weights", "imagenet"): "or pass --weights none",
    }
    for flags, expected in cases.items():
        assert run_main(finetune_main, [*common, *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and expected in error and "\n" not in error
    assert not out.exists() or not list(out.iterdir())
