"""Faults during a run: SIGKILL and resume, Ctrl-C, a NaN loss, a full disk, an unwritable directory, OOM."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO
from inat_keras import runs
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.data import files, pipeline
from inat_keras.errors import UserError
from inat_keras.training import checkpoints, faults, loop, setup

TINY_CLI = [
    "--image-size",
    "32",
    "--num-blocks",
    "3",
    "--first-filters",
    "4",
    "--dense-units",
    "8",
    "--batch-size",
    "4",
    "--wandb",
    "off",
    "--quiet",
]


def tiny_run_config(data: Path, out: Path, name: str = "run", *, epochs: int = 1, batch_size: int = 8, **train) -> RunConfig:
    """A model of a few thousand weights on 32x32 images: about a second an epoch on a CPU."""
    return RunConfig(
        name=name,
        out=str(out),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=batch_size),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(epochs=epochs, **train),
        tracking=TrackingConfig(wandb="off"),
    )


def quiet(message: str) -> None:
    pass


# -- real processes ------------------------------------------------------------------------------


def start_training(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    # Output to a file: a pipe nobody reads could fill up and stall the process.
    with open(log, "a") as handle:
        return subprocess.Popen(
            [sys.executable, str(REPO / "train_scratch.py"), *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def epochs_saved(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training ended before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def kill(process: subprocess.Popen, signum: int = signal.SIGKILL) -> int:
    process.send_signal(signum)
    return process.wait(timeout=60)


def saving_a_checkpoint(run: Path) -> bool:
    return bool(list((run / "checkpoint").glob(".epoch-*.tmp*")))


def test_a_run_killed_twice_resumes_to_exactly_the_requested_epochs(tiny_dataset: Path, tmp_path: Path) -> None:
    run, log = tmp_path / "runs" / "killed", tmp_path / "train.log"
    first = start_training(
        ["--data", str(tiny_dataset), "--out", str(tmp_path / "runs"), "--name", "killed", "--epochs", "6", *TINY_CLI], log
    )
    # Kill point 1: as soon as the first epoch is committed (the second one is under way).
    wait_until(lambda: epochs_saved(run) >= 1, first, log)
    assert kill(first) == -signal.SIGKILL

    second = start_training(["--resume", str(run)], log)
    # Kill point 2: in the middle of writing a later epoch's checkpoint, the most fragile moment.
    wait_until(lambda: epochs_saved(run) >= 3 and (saving_a_checkpoint(run) or epochs_saved(run) >= 5), second, log)
    assert kill(second) == -signal.SIGKILL
    assert 3 <= epochs_saved(run) < 6

    final = subprocess.run(
        [sys.executable, str(REPO / "train_scratch.py"), "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert final.returncode == 0, final.stderr[-3000:]

    with open(run / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4, 5, 6]
    assert list(history[0])[:2] == ["epoch", "accuracy"]  # the column order of an uninterrupted run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 6 and 1 <= metrics["best_epoch"] <= 6
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["finished"] and [row["epoch"] for row in state["history"]] == [1, 2, 3, 4, 5, 6]
    json.loads((run / "config.json").read_text())
    with open(run / "split.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 36
    import keras

    assert keras.models.load_model(run / "best.keras").output_shape == (None, 3)
    assert not list(run.rglob(".*.tmp*")), "no temporary file of a killed write is left"
    assert not list(run.glob("checkpoint/*.keras")), "finished runs keep no resume checkpoint"


def test_ctrl_c_saves_the_state_and_names_the_resume_command(tiny_dataset: Path, tmp_path: Path) -> None:
    run, log = tmp_path / "runs" / "ctrl-c", tmp_path / "train.log"
    process = start_training(
        ["--data", str(tiny_dataset), "--out", str(tmp_path / "runs"), "--name", "ctrl-c", "--epochs", "30", *TINY_CLI], log
    )
    wait_until(lambda: epochs_saved(run) >= 2, process, log)
    assert kill(process, signal.SIGINT) == 2

    output = log.read_text()
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "interrupted after epoch" in error_lines[0]
    assert f"--resume {run}" in error_lines[0]
    assert "Traceback" not in output
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] >= 2 and (run / "checkpoint" / state["checkpoint"]).is_file()
    assert f"after epoch {state['epochs_done']}:" in error_lines[0], "the message names the epoch that was saved"


def test_a_ctrl_c_during_the_epoch_commit_waits_until_it_is_written() -> None:
    reached_end = False
    with pytest.raises(KeyboardInterrupt), faults.sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here; a plain handler would raise now
        reached_end = True
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- in-process faults ----------------------------------------------------------------------------


def test_a_nan_loss_names_the_learning_rate_and_keeps_the_best_model(tiny_dataset: Path, tmp_path: Path) -> None:
    # One step per epoch: epoch 1's loss is measured before the absurd update, so it is finite.
    config = tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=3, batch_size=64, learning_rate=1e30)
    with pytest.raises(UserError) as caught:
        loop.train_run(config, verbose=0, log=quiet)
    message = str(caught.value)
    assert "NaN" in message and "1e+30" in message and "--learning-rate" in message
    run = tmp_path / "runs" / "run"
    assert str(run / "best.keras") in message and "epoch 1" in message
    import keras

    assert keras.models.load_model(run / "best.keras").output_shape == (None, 3)
    assert epochs_saved(run) == 1


class BrokenDisk:
    """From epoch 2 on, ``module.name`` fails as a full or read-only disk would, until ``repair()``."""

    def __init__(self, monkeypatch, module, name: str, fail: Callable) -> None:
        self.broken, self.armed = False, True
        original_save, original = checkpoints.EpochCheckpoint.save_epoch, getattr(module, name)

        def save_epoch(checkpoint, epoch: int, logs=None) -> None:
            self.broken = self.broken or (self.armed and epoch >= 1)
            original_save(checkpoint, epoch, logs)

        def call(*args, **kwargs):
            return fail(*args, **kwargs) if self.broken else original(*args, **kwargs)

        monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", save_epoch)
        monkeypatch.setattr(module, name, call)

    def repair(self) -> None:
        self.broken = self.armed = False


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def permission_denied(dir: str, prefix: str, suffix: str, **kwargs):
    # What mkstemp raises in a directory that lost its write permission (chmod does not stop root).
    raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}abc123{suffix}"))


def test_a_full_disk_ends_the_run_with_the_path_and_a_resumable_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    config = tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=3)
    run = tmp_path / "runs" / "run"
    # fsync is where a full disk usually shows up: the data was accepted into the page cache, not stored.
    disk = BrokenDisk(monkeypatch, os, "fsync", no_space)
    with pytest.raises(UserError) as caught:
        loop.train_run(config, verbose=0, log=quiet)
    message = str(caught.value)
    assert "No space left on device" in message and str(run) in message and f"--resume {run}" in message
    assert epochs_saved(run) == 1
    assert not list(run.rglob(".*.tmp*")), "the failed write left no temporary file"

    disk.repair()
    result = loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)
    assert result.metrics["epochs_run"] == 3


def test_an_unwritable_run_directory_ends_the_run_with_a_clear_message(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    config = tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=3)
    run = tmp_path / "runs" / "run"
    BrokenDisk(monkeypatch, tempfile, "mkstemp", permission_denied)
    with pytest.raises(UserError) as caught:
        loop.train_run(config, verbose=0, log=quiet)
    message = str(caught.value)
    assert message.startswith(f"cannot write {run}") and "(Permission denied)" in message
    assert f"make {run} writable" in message and "\n" not in message
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 1 and (run / "checkpoint" / state["checkpoint"]).is_file()


def test_out_of_memory_suggests_a_smaller_batch_size(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import keras
    import tensorflow as tf

    def fit(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[8,4,32,32]")

    monkeypatch.setattr(keras.Model, "fit", fit)
    config = tiny_run_config(tiny_dataset, tmp_path / "runs", batch_size=8)
    with pytest.raises(UserError, match=r"out of memory with --batch-size 8 .*try --batch-size 4"):
        loop.train_run(config, verbose=0, log=quiet)
    assert not (tmp_path / "runs" / "run").exists(), "the retry with a smaller batch may use the same --name"


# -- kills between the writes of one epoch, and files damaged or deleted before a resume ----------


class Killed(Exception):
    """Stands for a SIGKILL at one exact line: the process stops there and writes nothing more."""


def kill_once(monkeypatch, module, name: str, when: Callable[..., bool] = lambda *args: True) -> None:
    """``module.name`` raises ``Killed`` the first time ``when(*args)`` holds, then works again, as after a restart."""
    original, armed = getattr(module, name), [True]

    def call(*args, **kwargs):
        if armed[0] and when(*args):
            armed[0] = False
            raise Killed(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, call)


def interrupted_run(dataset: Path, out: Path, monkeypatch, *, epochs: int = 2) -> Path:
    """A run killed right after committing epoch 1 of ``epochs``."""
    original = checkpoints.EpochCheckpoint.save_epoch

    def save_then_die(checkpoint, epoch, logs=None):
        original(checkpoint, epoch, logs)
        raise Killed("after epoch 1")

    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", save_then_die)
    with pytest.raises(Killed):
        loop.train_run(tiny_run_config(dataset, out, epochs=epochs), verbose=0, log=quiet)
    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", original)
    run = out / "run"
    assert epochs_saved(run) == 1
    return run


def validation_accuracy(run: Path, model_path: Path) -> float:
    from inat_keras import runs
    from inat_keras.models.augment import load_model

    config = runs.load_run_config(run)
    class_names = json.loads((run / "config.json").read_text())["class_names"]
    split = files.load_split(run, class_names)
    dataset = pipeline.make_dataset(split.validation, config.data, len(class_names), training=False)
    return load_model(model_path).evaluate(dataset, verbose=0, return_dict=True)["accuracy"]


def test_a_kill_between_the_epoch_commit_and_best_keras_is_completed_on_resume(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "runs" / "run"
    kill_once(monkeypatch, checkpoints, "publish_best")  # epoch 1 always improves: the first publication dies
    with pytest.raises(Killed):
        loop.train_run(tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=1), verbose=0, log=quiet)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["best_epoch"] == state["epochs_done"] == 1
    assert not (run / "best.keras").exists(), "best.keras is published only after state.json"

    result = loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)
    assert result.metrics["best_epoch"] == 1
    # best.keras is the model of the epoch state.json names as the best, not some other epoch's.
    assert validation_accuracy(run, run / "best.keras") == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)


def test_best_keras_always_holds_the_epoch_state_json_names(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "runs" / "run"
    seen = []

    def check_best(checkpoint, epoch, logs=None):
        original(checkpoint, epoch, logs)
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        seen.append((validation_accuracy(run, run / "best.keras"), state["best_val_accuracy"]))

    original = checkpoints.EpochCheckpoint.save_epoch
    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", check_best)
    loop.train_run(tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=4, learning_rate=0.01), verbose=0, log=quiet)
    assert len(seen) == 4
    for on_disk, recorded in seen:
        assert on_disk == pytest.approx(recorded, abs=1e-6)


def test_a_kill_before_the_last_epochs_history_is_written_is_mended_on_resume(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "runs" / "run"
    kill_once(monkeypatch, checkpoints, "write_history", lambda run_dir, history, title: len(history) == 2)
    with pytest.raises(Killed):
        loop.train_run(tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=2), verbose=0, log=quiet)
    assert epochs_saved(run) == 2
    with open(run / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]

    loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)
    with open(run / "history.csv") as handle:
        reader = csv.DictReader(handle)
        assert [row["epoch"] for row in reader] == ["1", "2"]
    columns = reader.fieldnames
    assert columns[0] == "epoch" and columns[-2:] == ["seconds", "learning_rate"]
    assert columns[1:-2] == sorted(columns[1:-2]), "the same column order as an uninterrupted run"


def test_an_image_deleted_before_a_resume_is_named_or_skipped_before_training(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    run = interrupted_run(tiny_dataset, tmp_path / "runs", monkeypatch)
    with open(run / "split.csv") as handle:
        gone = next(row["path"] for row in csv.DictReader(handle) if row["subset"] == "train")
    with open(run / "split.csv") as handle:
        train_images = sum(row["subset"] == "train" for row in csv.DictReader(handle))
    os.remove(gone)

    with pytest.raises(UserError) as caught:
        loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)
    message = str(caught.value)
    assert f"1 image(s) in {run / 'split.csv'} no longer exist (the first: {gone})" in message and "--skip-bad" in message

    config = runs.load_run_config(run)
    config.data.skip_bad = True
    logged = []
    result = loop.train_run(config, resume=True, verbose=0, log=logged.append)
    assert result.metrics["epochs_run"] == 2 and result.metrics["num_train_images"] == train_images - 1
    assert any("skipping 1 image(s) deleted since the run started" in line for line in logged)


def test_damaged_state_and_checkpoint_files_are_named_in_one_line(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    run = interrupted_run(tiny_dataset, tmp_path / "runs", monkeypatch)
    state_file = run / "checkpoint" / "state.json"
    checkpoint = run / "checkpoint" / json.loads(state_file.read_text())["checkpoint"]
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    # Keras calls a truncated archive "File not found"; the message says what it is.
    with pytest.raises(UserError, match=re.escape(f"{checkpoint} is damaged: truncated or not a .keras archive (")) as caught:
        loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)
    assert f"delete {state_file} to train again from epoch 1" in str(caught.value) and "\n" not in str(caught.value)

    state_file.write_text('{"epochs_done": 1, "check')
    with pytest.raises(UserError, match=re.escape(f"{state_file} is damaged (")):
        loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=quiet)

    state_file.unlink()  # now as if no epoch had finished: said, then trained from the start
    logged = []
    result = loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=logged.append)
    assert any("has no finished epoch" in line and "starts at epoch 1" in line for line in logged)
    assert result.metrics["epochs_run"] == 2


def test_publishing_the_best_checkpoint_twice_leaves_no_temporary_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint" / "epoch-001.keras"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"model")
    checkpoints.publish_best(tmp_path, checkpoint)
    checkpoints.publish_best(tmp_path, checkpoint)  # a resume completing a publication that had finished
    assert (tmp_path / "best.keras").read_bytes() == b"model"
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_a_new_run_that_fails_before_its_first_epoch_gives_its_name_back(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    kill_once(monkeypatch, setup, "build_model")  # as a --weights file that does not fit would
    config = tiny_run_config(tiny_dataset, tmp_path / "runs", epochs=1)
    with pytest.raises(Killed):
        loop.train_run(config, verbose=0, log=quiet)
    assert not (tmp_path / "runs" / "run").exists()
    assert loop.train_run(config, verbose=0, log=quiet).metrics["epochs_run"] == 1  # the corrected command

    # In a folder that was there before (a search's), only the run's own files go.
    search_files = tmp_path / "runs" / "s" / "search"
    search_files.mkdir(parents=True)
    (search_files / "oracle.json").write_text("{}")
    kill_once(monkeypatch, setup, "build_model")
    with pytest.raises(Killed):
        loop.train_run(tiny_run_config(tiny_dataset, tmp_path / "runs", "s"), verbose=0, log=quiet)
    assert sorted(path.name for path in (tmp_path / "runs" / "s").iterdir()) == ["search"]
    assert (search_files / "oracle.json").read_text() == "{}"


def test_a_run_interrupted_in_its_first_epoch_keeps_its_folder_for_resume(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    import keras

    def fit(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(faults.Interrupted, match="interrupted after epoch 0"):
        loop.train_run(tiny_run_config(tiny_dataset, tmp_path / "runs"), verbose=0, log=quiet)
    assert (tmp_path / "runs" / "run" / "config.json").is_file()
