"""Hyperparameter search: tiny searches with each tuner, the search-space file, resume after a kill."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_dataset_root
from inat_keras.cli.run import run_main
from inat_keras.cli.search import search_command
from inat_keras.cli.train_scratch import main as train_scratch_main
from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.search.record import record_or_check
from inat_keras.search.run import set_aside_other_retrain
from inat_keras.search.space import SCRATCH_SPACE, pinned_by_flags, resolve_space, trial_config
from inat_keras.storage import read_json

TINY_SPACE = {
    "num_blocks": 3,
    "first_filters": [4, 8],
    "kernel_size": [3, 5],
    "dense_units": [8, 16],
    "batch_size": [8, 16],
    "learning_rate": {"min": 1e-3, "max": 1e-2, "log": True},
    "augment": False,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def search_data(tmp_path: Path) -> Path:
    return make_dataset_root(tmp_path / "data", train_per_class=6, val_per_class=3)


def search_args(tmp_path: Path, data: Path, tuner: str, *extra: str, space: dict | None = None) -> list[str]:
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(space or TINY_SPACE))
    return [
        "--data",
        str(data),
        "--tuner",
        tuner,
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--search-space",
        str(space_file),
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "s",
        "--wandb",
        "off",
        "--quiet",
        *extra,
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_random_search_writes_the_sweep_analysis_and_retrains_the_best_trial(tmp_path, search_data, capsys) -> None:
    assert train_scratch_main(search_args(tmp_path, search_data, "random", "--max-trials", "3")) == 0
    run_dir = tmp_path / "runs" / "s"
    search_dir = run_dir / "search"

    rows = read_rows(search_dir / "trials.csv")
    assert [row["trial_id"] for row in rows] == ["0", "1", "2"]
    assert {row["status"] for row in rows} == {"COMPLETED"}
    assert all(row["start_time"] and float(row["duration_s"]) > 0 and row["val_loss"] for row in rows)
    assert {row["first_filters"] for row in rows} <= {"4", "8"}
    assert all(1e-3 <= float(row["learning_rate"]) <= 1e-2 for row in rows)

    best = json.loads((search_dir / "best_hyperparameters.json").read_text())
    best_row = max(rows, key=lambda row: float(row["val_accuracy"]))
    assert best["val_accuracy"] == pytest.approx(float(best_row["val_accuracy"]))
    assert best["hyperparameters"]["first_filters"] == int(best_row["first_filters"])
    for picture in ("accuracy_vs_created.png", "parallel_coordinates.png", "importance.png"):
        assert (search_dir / picture).read_bytes().startswith(PNG_SIGNATURE)
    assert read_rows(search_dir / "importance.csv")
    summary = (search_dir / "summary.md").read_text()
    assert f"{best['val_accuracy']:.4f}" in summary and f"trial {best['trial']}" in summary

    # The retrained run is an ordinary run with the best values, evaluated once on the test set.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["first_filters"] == best["hyperparameters"]["first_filters"]
    assert config["data"]["batch_size"] == best["hyperparameters"]["batch_size"]
    assert "test_accuracy" in json.loads((run_dir / "metrics.json").read_text())
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((search_dir / "retrained.json").read_text()) == {"trial_id": best["trial_id"]}


@pytest.mark.slow
def test_bayes_search_logs_each_trial_as_its_own_offline_wandb_run(tmp_path, search_data) -> None:
    per_block = {**TINY_SPACE, "kernel_size_per_block": [3, 5]}
    args = search_args(tmp_path, search_data, "bayes", "--max-trials", "2", "--no-retrain", space=per_block)
    args[args.index("--wandb") + 1] = "offline"
    assert train_scratch_main(args) == 0
    search_dir = tmp_path / "runs" / "s" / "search"
    for trial in ("0", "1"):
        runs = list((search_dir / f"trial_{trial}" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"trial {trial}: {runs}"
        # The log is protobuf records, whose strings are stored as they are.
        log = next(runs[0].glob("run-*.wandb")).read_bytes()
        assert f"s-trial-{int(trial) + 1}".encode() in log, "each W&B run named after its trial, as KerasTuner numbers it"
        assert b"kernel_size_1" in log and b"learning_rate" in log, "the trial's hyperparameters as its config"
        assert b"epoch/val_accuracy" in log, "per-epoch metrics"
    rows = read_rows(search_dir / "trials.csv")
    assert len(rows) == 2
    assert {"kernel_size_1", "kernel_size_2", "kernel_size_3"} <= set(rows[0])
    assert "kernel_size_4" not in rows[0] and "kernel_size" not in rows[0]  # three blocks, one size each
    assert not (tmp_path / "runs" / "s" / "metrics.json").exists()  # --no-retrain


@pytest.mark.slow
def class_weights_of_every_fit(monkeypatch) -> list:
    """Records the ``class_weight`` each ``keras.Model.fit`` call is given."""
    import keras

    given: list = []
    fit = keras.Model.fit

    def recording_fit(model, *args, **kwargs):
        given.append(kwargs.get("class_weight"))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    return given


def test_hyperband_continues_a_promising_trial_from_its_checkpoint(tmp_path, search_data, monkeypatch) -> None:
    args = search_args(tmp_path, search_data, "hyperband", "--max-trials", "4", "--no-retrain", "--class-weight", "balanced")
    args[args.index("--epochs") + 1] = "3"
    class_weights = class_weights_of_every_fit(monkeypatch)
    assert train_scratch_main(args) == 0
    assert len(class_weights) == 4 and all(isinstance(weights, dict) for weights in class_weights)  # every trial weighs
    rows = read_rows(tmp_path / "runs" / "s" / "search" / "trials.csv")
    # Factor 3 over 3 epochs: three 1-epoch trials, then the best of them continues to epoch 3.
    assert [row["tuner/epochs"] for row in rows] == ["1", "1", "1", "3"]
    first_round = max(rows[:3], key=lambda row: float(row["val_accuracy"]))
    assert rows[3]["tuner/trial_id"] == first_round["trial_id"]
    assert rows[3]["epochs_run"] == "2"
    assert rows[3]["first_filters"] == first_round["first_filters"]


def test_a_search_killed_mid_trial_continues_without_redoing_finished_trials(tmp_path, search_data) -> None:
    command = [
        sys.executable,
        "train_scratch.py",
        *search_args(tmp_path, search_data, "random", "--max-trials", "3", "--no-retrain"),
    ]
    command[command.index("--epochs") + 1] = "2"
    search_dir = tmp_path / "runs" / "s" / "search"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the search ended before it could be killed:\n{process.stderr.read()[-2000:]}"
            try:
                oracle = json.loads((search_dir / "oracle.json").read_text())
            except (OSError, ValueError):
                oracle = {}
            if len(oracle.get("start_order", [])) == 2 and len(oracle.get("end_order", [])) == 1:
                break  # trial 0 finished, trial 1 is running
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    finished = (search_dir / "trial_0" / "trial.json").read_text()
    interrupted = json.loads((search_dir / "trial_1" / "trial.json").read_text())
    assert interrupted["status"] == "RUNNING"

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (search_dir / "trial_0" / "trial.json").read_text() == finished  # not recomputed
    rows = read_rows(search_dir / "trials.csv")
    assert [(row["trial_id"], row["status"]) for row in rows] == [("0", "COMPLETED"), ("1", "COMPLETED"), ("2", "COMPLETED")]
    resumed = json.loads((search_dir / "trial_1" / "trial.json").read_text())
    assert resumed["hyperparameters"]["values"] == interrupted["hyperparameters"]["values"]


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"filterz": [32]}, "unknown hyperparameter(s) filterz"),
        ({"learning_rate": "fast"}, "learning_rate: 'fast' is not a number"),
        ({"activation": ["relu", "tanh"]}, "activation: 'tanh' choose among"),
        ({"batch_norm": [1, 0]}, "batch_norm: 1 is not true or false"),
        ({"num_blocks": [3, 4.5]}, "num_blocks: 4.5 is not an integer"),
        ({"dense_dropout": [0.2, 1.5]}, "dense_dropout: 1.5 must be in [0, 1)"),
        ({"learning_rate": {"min": 1e-2, "max": 1e-4}}, "min 0.01 must be below max 0.0001"),
        ({"learning_rate": {"low": 1e-4, "high": 1e-2}}, "a range is"),
        ({"activation": {"min": 1, "max": 2}}, "needs a numeric hyperparameter"),
        ({"first_filters": []}, "the list of values is empty"),
    ],
)
def test_the_search_space_file_refuses_unknown_and_badly_typed_entries(tmp_path, entries, message) -> None:
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(entries))
    with pytest.raises(UserError, match=r"--search-space .*space.json") as error:
        resolve_space("scratch", str(space_file))
    assert message in str(error.value)


def test_a_bad_search_space_stops_the_command_with_exit_status_2(tmp_path, search_data, capsys) -> None:
    args = search_args(tmp_path, search_data, "random", space={"kernel_size": ["big"]})
    assert run_main(train_scratch_main, args) == 2
    assert "error: --search-space" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_yaml_search_space_overrides_the_default_entry_by_entry(tmp_path) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text("activation: [gelu, mish]\nlearning_rate: {min: 0.0001, max: 0.01, log: true}\naugment: null\nl2: 0\n")
    space = resolve_space("scratch", str(space_file), pinned={"batch_size"})
    assert space["activation"] == ["gelu", "mish"]
    assert space["learning_rate"] == {"min": 1e-4, "max": 1e-2, "log": True}
    assert space["l2"] == 0.0 and space["dense_dropout"] == SCRATCH_SPACE["dense_dropout"]
    assert "augment" not in space and "batch_size" not in space


def test_flags_given_on_the_command_line_fix_their_hyperparameters() -> None:
    import argparse

    args = argparse.Namespace(num_blocks=3, kernel_size=[3], activation=None, filters=None, batch_size=None, data="d")
    assert pinned_by_flags(args, "scratch") == {"num_blocks", "kernel_size", "kernel_size_per_block"}


def test_trial_values_become_an_ordinary_run_config() -> None:
    base = RunConfig(name="s", model={"num_blocks": 5})
    values = {
        "num_blocks": 3,
        "kernel_size_1": 5,
        "kernel_size_2": 3,
        "kernel_size_3": 3,
        "kernel_size_4": 5,
        "dense_units": 256,
        "learning_rate": 0.003,
        "batch_size": 64,
        "augment": True,
        "tuner/epochs": 2,
    }
    config = trial_config(base, values)
    assert config.model == {"num_blocks": 3, "kernel_size": [5, 3, 3], "dense_units": [256]}
    assert (config.train.learning_rate, config.data.batch_size, config.data.augment) == (0.003, 64, True)
    assert base.model == {"num_blocks": 5}  # the base is left alone


def test_each_trial_model_is_built_in_the_runs_precision_after_keras_tuner_clears_the_session(tmp_path) -> None:
    import types

    import keras
    import keras_tuner

    from inat_keras.config import DataConfig, TrainConfig
    from inat_keras.search.hypermodel import TrialModels

    base = RunConfig(
        name="s",
        data=DataConfig(image_size=32),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(mixed_precision="on"),
    )
    split = types.SimpleNamespace(class_names=["a", "b", "c"], train=[None] * 8)
    hypermodel = TrialModels(base, {"activation": ["relu", "gelu"]}, split, tmp_path)
    try:
        keras.utils.clear_session()  # what KerasTuner does before every build: the policy is back to float32
        model = hypermodel.build(keras_tuner.HyperParameters())
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.get_layer("predictions").compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_continuing_a_search_with_other_settings_is_refused(tmp_path, search_data) -> None:
    args = search_args(tmp_path, search_data, "random", "--max-trials", "1", "--no-retrain")
    assert train_scratch_main(args) == 0
    other = [*args[:3], "bayes", *args[4:]]
    with pytest.raises(UserError, match="holds a search with other settings \\(tuner was random, now bayes\\)"):
        train_scratch_main(other)


def test_the_refusal_names_each_changed_setting_with_both_values(tmp_path) -> None:
    record = {
        "tuner": "random",
        "executions_per_trial": 1,
        "space": {"activation": ["relu", "gelu"]},
        "base": {"train": {"epochs": 2}, "data": {"seed": 42}},
    }
    record_or_check(tmp_path, record)
    changed = {**record, "space": {"activation": ["gelu"]}, "base": {"train": {"epochs": 3}, "data": {"seed": 42}}}
    expected = "space.activation was ['relu', 'gelu'], now ['gelu']; train.epochs was 2, now 3"
    with pytest.raises(UserError, match=re.escape(f"other settings ({expected}): re-run its own command")):
        record_or_check(tmp_path, changed)
    record_or_check(tmp_path, record)  # the same settings continue


def test_a_search_continues_after_its_folder_was_moved_or_renamed(tmp_path) -> None:
    base = RunConfig(name="s1", out="runs").to_dict()
    base.pop("tracking")
    record = {"tuner": "random", "executions_per_trial": 1, "space": {}, "base": base}
    record_or_check(tmp_path, record)
    moved = {**record, "base": {**base, "name": "s2", "out": "/elsewhere"}}
    record_or_check(tmp_path, moved)  # raises if the name or folder counted as another setting
    assert read_json(tmp_path / "search.json") == moved  # the record now says where the search lives
    with pytest.raises(UserError, match=r"train\.epochs was 10, now 11"):  # a real change is still refused
        record_or_check(tmp_path, {**moved, "base": {**moved["base"], "train": {**base["train"], "epochs": 11}}})


def test_a_new_best_trial_gets_its_own_retrain_and_the_old_one_is_set_aside(tmp_path) -> None:
    run_dir, logged = tmp_path / "s", []
    search_dir = run_dir / "search"
    search_dir.mkdir(parents=True)
    (search_dir / "trials.csv").write_text("kept\n")
    for name in ("config.json", "metrics.json", "best.keras"):
        (run_dir / name).write_text(name)
    (search_dir / "retrained.json").write_text('{"trial_id": "0"}')

    set_aside_other_retrain(run_dir, search_dir, "0", logged.append)  # the same best: its retrain resumes
    assert (run_dir / "config.json").exists() and not logged

    set_aside_other_retrain(run_dir, search_dir, "3", logged.append)
    archive = run_dir / "retrain-trial-1"  # trial id 0 is KerasTuner's trial #1
    assert sorted(path.name for path in archive.iterdir()) == ["best.keras", "config.json", "metrics.json"]
    assert sorted(path.name for path in run_dir.iterdir()) == ["retrain-trial-1", "search"]
    assert (search_dir / "trials.csv").read_text() == "kept\n"
    assert logged == [f"the best configuration is now trial 4, no longer trial 1: its retrain moved to {archive}"]


def test_a_damaged_trial_file_is_named_before_keras_tuner_reads_it(tmp_path, search_data) -> None:
    args = search_args(tmp_path, search_data, "random", "--max-trials", "1", "--no-retrain")
    assert train_scratch_main(args) == 0
    trial_file = next((tmp_path / "runs" / "s" / "search").glob("trial_*/trial.json"))
    trial_file.write_text(trial_file.read_text()[:40])
    with pytest.raises(UserError, match=re.escape(f"{trial_file} is damaged (")):
        train_scratch_main(args)  # re-running the command continues the search


def test_a_search_recorded_before_a_setting_existed_continues_with_its_default(tmp_path) -> None:
    from inat_keras.config import RunConfig

    base = RunConfig(name="s").to_dict()
    base.pop("tracking")
    record = {"tuner": "random", "executions_per_trial": 1, "space": {}, "base": base}
    older = {**record, "base": {**base, "data": {k: v for k, v in base["data"].items() if k != "augment_placement"}}}
    record_or_check(tmp_path, older)
    record_or_check(tmp_path, record)  # the new setting at its default: the same search
    asked = {**record, "base": {**base, "data": {**base["data"], "augment_placement": "model"}}}
    with pytest.raises(UserError, match=r"data.augment_placement was auto, now model"):
        record_or_check(tmp_path, asked)


def test_a_space_deeper_than_the_image_allows_is_refused_before_any_trial(tmp_path, search_data) -> None:
    args = search_args(tmp_path, search_data, "random", space={"num_blocks": [3, 6]})
    with pytest.raises(UserError, match="search space: --image-size 32 is too small for 6 pooling blocks"):
        train_scratch_main(args)


def test_resume_flag_is_refused_with_a_search() -> None:
    import argparse

    args = argparse.Namespace(resume="runs/x", name=None, tuner="random")
    with pytest.raises(UserError, match="re-run its own command"):
        search_command(args, RunConfig(name="x"))


@pytest.mark.slow
def test_a_finetuning_search_trains_each_trial_through_head_and_unfreezing_phases(tmp_path, search_data, monkeypatch) -> None:
    from inat_keras.cli.finetune import main as finetune_main

    space = {"unfreeze": ["all"], "dropout": [0.0, 0.3], "dense_units": [0, 8], "batch_size": [8, 16], "augment": False}
    weighted = ("--class-weight", "balanced")
    args = search_args(tmp_path, search_data, "random", "--max-trials", "1", "--no-retrain", *weighted, space=space)
    args[args.index("--epochs") + 1] = "2"
    class_weights = class_weights_of_every_fit(monkeypatch)
    assert finetune_main([*args, "--backbone", "mobilenetv2", "--weights", "none", "--head-epochs", "1"]) == 0
    assert len(class_weights) == 2 and all(isinstance(weights, dict) for weights in class_weights)  # both phases weigh
    rows = read_rows(tmp_path / "runs" / "s" / "search" / "trials.csv")
    assert [row["status"] for row in rows] == ["COMPLETED"]
    assert rows[0]["epochs_run"] == "2"  # the head epoch, then the unfrozen one
    assert {"unfreeze", "dropout", "dense_units", "learning_rate"} <= set(rows[0])
    assert "backbone" not in rows[0]  # fixed by --backbone
