"""Around a run: the GPU install and its start-up warning, the device a run names, TensorBoard logs that survive a
kill and resume, and the provenance metrics.json records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO
from inat_keras import devices, runs
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.training import checkpoints, loop, provenance
from inat_keras.training.tensorboard import TENSORBOARD_DIR, drop_events_from, trial_log_dir


class Killed(Exception):
    """Stands for a SIGKILL at one exact line (as in test_faults.py)."""


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tiny_config(data: Path, out: Path, *, epochs: int, tensorboard: bool = True) -> RunConfig:
    return RunConfig(
        name="run",
        out=str(out),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=8),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(epochs=epochs),
        tracking=TrackingConfig(wandb="off", tensorboard=tensorboard),
    )


def read_events(folder: Path) -> list:
    """Every event of every event file in ``folder``, in file order; raw, so a duplicate step would show."""
    import tensorflow as tf

    return [
        tf.compat.v1.Event.FromString(record.numpy())
        for path in sorted(folder.glob("events.out.tfevents.*"))
        for record in tf.data.TFRecordDataset(str(path))
    ]


def steps_by_tag(folder: Path) -> dict[str, list[int]]:
    steps = defaultdict(list)
    for event in read_events(folder):
        for value in event.summary.value:
            steps[value.tag].append(event.step)
    return dict(steps)


# -- 1. GPU install and start-up ---------------------------------------------------------------


def test_the_gpu_requirements_are_requirements_txt_plus_tensorflow_with_cuda_at_the_same_pin() -> None:
    lines = requirement_lines(REPO / "requirements-gpu.txt")
    assert lines[0] == "-r requirements.txt"
    (gpu,) = [Requirement(line) for line in lines[1:]]
    (cpu,) = [Requirement(line) for line in requirement_lines(REPO / "requirements.txt") if line.startswith("tensorflow==")]
    assert gpu.name == "tensorflow" and gpu.extras == {"and-cuda"}
    assert gpu.specifier == cpu.specifier, "requirements-gpu.txt pins another TensorFlow than requirements.txt"


@pytest.fixture
def nvidia_machine(monkeypatch, tmp_path):
    """No NVIDIA signal and no GPU for TensorFlow; the test turns signals on. Returns a function doing so."""
    import tensorflow as tf

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_FILES", (tmp_path / "proc-driver-nvidia-version", tmp_path / "dev-nvidia0"))
    # Only devices' view of shutil: the rest of the process keeps the real which().
    monkeypatch.setattr(devices, "shutil", types.SimpleNamespace(which=lambda name: None))
    real_list = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda device_type=None: [] if device_type == "GPU" else real_list(device_type)
    )

    def turn_on(signal: str) -> None:
        if signal == "nvidia-smi":
            nvidia_smi = types.SimpleNamespace(which=lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
            monkeypatch.setattr(devices, "shutil", nvidia_smi)
        else:
            (tmp_path / signal).write_text("NVRM version: 580.65\n")

    return turn_on


@pytest.mark.parametrize("signal", ["proc-driver-nvidia-version", "dev-nvidia0", "nvidia-smi"])
def test_an_nvidia_gpu_tensorflow_does_not_list_gives_one_warning_naming_the_install(nvidia_machine, signal) -> None:
    assert devices.unused_gpu_warning() is None
    nvidia_machine(signal)
    warning = devices.unused_gpu_warning()
    assert warning is not None and "\n" not in warning
    assert "NVIDIA GPU" in warning and "CPU" in warning and "pip install -r requirements-gpu.txt" in warning


def test_no_gpu_warning_when_tensorflow_lists_the_gpu_or_the_gpus_are_hidden(nvidia_machine, monkeypatch) -> None:
    import tensorflow as tf

    nvidia_machine("nvidia-smi")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.unused_gpu_warning() is None, "hidden on purpose"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: [gpu])
    assert devices.unused_gpu_warning() is None


def test_the_device_is_named_by_its_cores_or_its_gpus(monkeypatch) -> None:
    import tensorflow as tf

    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: [])
    assert devices.describe_device() == "CPU (2 cores)"
    assert devices.device_line("CPU (2 cores)", "float32", False) == "device: CPU (2 cores)"
    assert devices.device_line("CPU (2 cores)", "float32", True) == "device: CPU (2 cores), XLA on"

    gpus = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(2)]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: gpus[:1])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: {"device_name": "NVIDIA A100-SXM4-40GB"})
    assert devices.describe_device() == "1 GPU (NVIDIA A100-SXM4-40GB)"
    assert (
        devices.device_line("1 GPU (NVIDIA A100-SXM4-40GB)", "mixed_float16", True)
        == "device: 1 GPU (NVIDIA A100-SXM4-40GB), mixed_float16, XLA on"
    )
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: gpus)
    assert devices.describe_device() == "1 GPU of 2 (NVIDIA A100-SXM4-40GB)", "without a strategy Keras uses the first GPU"
    assert devices.describe_device(all_gpus=True) == "2 GPUs (NVIDIA A100-SXM4-40GB)"


# -- 2. TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_logs_one_scalar_per_epoch_across_a_kill_and_resume_and_the_run_records_where_it_ran(
    tiny_dataset: Path, tmp_path: Path, monkeypatch, nvidia_machine
) -> None:
    nvidia_machine("nvidia-smi")  # a GPU machine whose TensorFlow cannot see it: warned, then trains on the CPU
    original = checkpoints.EpochCheckpoint.save_epoch

    def die_before_committing_epoch_2(checkpoint, epoch, logs=None):
        if epoch == 1:
            raise Killed("epoch 2 ran and was logged, but never committed")
        original(checkpoint, epoch, logs)

    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", die_before_committing_epoch_2)
    messages: list[str] = []
    with pytest.raises(Killed):
        loop.train_run(tiny_config(tiny_dataset, tmp_path / "runs", epochs=3), verbose=0, log=messages.append)
    monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", original)
    run = tmp_path / "runs" / "run"
    logs = run / TENSORBOARD_DIR
    assert steps_by_tag(logs / "train")["epoch_loss"] == [0, 1], "the uncommitted epoch reached the event file"

    loop.train_run(runs.load_run_config(run), resume=True, verbose=0, log=messages.append)

    train, validation = steps_by_tag(logs / "train"), steps_by_tag(logs / "validation")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_top3_accuracy", "epoch_learning_rate"):
        assert train[tag] == [0, 1, 2], (tag, train)
    for tag in ("epoch_loss", "epoch_accuracy"):  # val_loss and val_accuracy, as TensorBoard files them
        assert validation[tag] == [0, 1, 2], (tag, validation)
    assert not [tag for tag in {**train, **validation} if "vs_iterations" in tag or "histogram" in tag]
    # The graphs: the model's config (TensorBoard's conceptual graph) and the traced training step, once per fit.
    assert train["keras"] == [0, 1] and train["train_step"] == [0, 1]

    warnings = [m for m in messages if m.startswith("warning:") and "NVIDIA GPU" in m]
    assert len(warnings) == 2, "one line at the start of each of the two processes"
    assert sum(m.startswith("device: CPU (") for m in messages) == 2, messages
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"] == f"CPU ({devices.usable_cores()} core{'s' if devices.usable_cores() != 1 else ''})"

    # 5. Provenance, of a run trained by two processes.
    recorded = metrics["provenance"]
    assert recorded["packages"] == {
        "tensorflow": metadata.version("tensorflow"),
        "keras": metadata.version("keras"),
        "keras-tuner": metadata.version("keras-tuner"),
        "numpy": metadata.version("numpy"),
        "inat-keras": __import__("inat_keras").__version__,
    }
    assert recorded["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert recorded["os"] and recorded["working_directory"] == os.getcwd()
    # One command per process that trained the run: this test process, started and resumed in-process.
    from inat_keras.training.provenance import command_line

    assert recorded["commands"] == [command_line(), command_line()]
    assert set(recorded["git"]) == {"commit", "uncommitted_changes"}


def test_tensorboard_continues_a_run_resumed_after_its_last_epoch_was_committed(tmp_path: Path) -> None:
    """What a resume finds after a kill mid-write: later steps and a record cut short are dropped, earlier ones kept."""
    import tensorflow as tf

    folder = tmp_path / "tensorboard" / "train"
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        for step in range(4):
            tf.summary.scalar("epoch_loss", 1.0 / (step + 1), step=step)
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    with open(path, "ab") as handle:
        handle.write(b"\x10\x00\x00\x00\x00\x00\x00\x00cut")  # a record whose length was written but not its body

    drop_events_from(tmp_path / "tensorboard", 2)
    assert steps_by_tag(folder) == {"epoch_loss": [0, 1]}
    drop_events_from(tmp_path / "tensorboard", 0)  # nothing committed: nothing kept
    assert not list(folder.glob("events.out.tfevents.*"))


def test_each_search_trial_logs_to_its_own_tensorboard_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    import keras_tuner

    from inat_keras.data.files import make_split
    from inat_keras.search.hypermodel import TrialModels

    base = tiny_config(tiny_dataset, tmp_path / "runs", epochs=2)
    base.tracking.tensorboard_histograms = True
    hypermodel = TrialModels(base, {}, make_split(base.data), tmp_path / "runs" / "run" / "search")
    hp = keras_tuner.HyperParameters()
    hypermodel.fit(hp, hypermodel.build(hp), trial_id="07", epochs=2, verbose=0)

    assert trial_log_dir(tmp_path / "runs" / "run", "07") == tmp_path / "runs" / "run" / "tensorboard" / "trial_07"
    assert trial_log_dir(tmp_path, "07", execution=2).name == "trial_07-2"
    folder = tmp_path / "runs" / "run" / "tensorboard" / "trial_07"
    assert steps_by_tag(folder / "train")["epoch_learning_rate"] == [0, 1]
    assert steps_by_tag(folder / "validation")["epoch_accuracy"] == [0, 1]
    histograms = [steps for tag, steps in steps_by_tag(folder / "train").items() if tag.endswith("/histogram")]
    assert histograms and all(steps == [0, 1] for steps in histograms), "--tensorboard-histograms: every weight, every epoch"


def test_the_tensorboard_flags_reach_the_run_config_and_older_configs_load_without_them(tmp_path: Path) -> None:
    import argparse

    from inat_keras.cli.flags import add_data_args, add_run_args, load_resume_config, run_config_from_args
    from inat_keras.storage import write_json

    parser = argparse.ArgumentParser()
    add_run_args(parser)
    add_data_args(parser)
    config = run_config_from_args(
        parser.parse_args(["--demo", "--tensorboard-histograms"]), kind="scratch", model={}, demo_defaults={}
    )
    assert config.tracking.tensorboard and config.tracking.tensorboard_histograms
    plain = run_config_from_args(parser.parse_args(["--demo"]), kind="scratch", model={}, demo_defaults={})
    assert not plain.tracking.tensorboard

    older = RunConfig(name="r").to_dict()
    del older["tracking"]["tensorboard"], older["tracking"]["tensorboard_histograms"]
    assert RunConfig.from_dict(older).tracking == TrackingConfig()

    run = tmp_path / "runs" / "r"
    write_json(run / "config.json", {**older, "class_names": ["a", "b"]})
    resumed = load_resume_config(parser.parse_args(["--resume", str(run), "--tensorboard"]), parser)
    assert resumed.tracking.tensorboard and not resumed.tracking.tensorboard_histograms


# -- 5. Provenance ---------------------------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(folder), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


@needs_git
def test_the_git_state_is_the_checkouts_commit_and_whether_its_code_changed(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    package = checkout / "inat_keras"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    git(checkout, "init", "-q")
    git(checkout, "add", ".")
    git(checkout, "commit", "-q", "-m", "one")
    commit = git(checkout, "rev-parse", "HEAD")
    assert provenance.git_state(package) == {"commit": commit, "uncommitted_changes": False}

    (checkout / "runs").mkdir()
    (checkout / "runs" / "metrics.json").write_text("{}")
    assert provenance.git_state(package)["uncommitted_changes"] is False, "results beside the code are not code"
    (package / "new.py").write_text("")
    assert provenance.git_state(package)["uncommitted_changes"] is True
    (package / "new.py").unlink()
    (package / "__init__.py").write_text("x = 1\n")
    assert provenance.git_state(package) == {"commit": commit, "uncommitted_changes": True}


@needs_git
def test_the_git_state_is_null_outside_a_checkout_of_the_package(tmp_path: Path, monkeypatch) -> None:
    unknown = {"commit": None, "uncommitted_changes": None}
    installed = tmp_path / "site-packages" / "inat_keras"
    installed.mkdir(parents=True)
    assert provenance.git_state(installed) == unknown
    # A package installed into a virtual environment inside another repository is not that repository's code.
    git(tmp_path, "init", "-q")
    assert provenance.git_state(installed) == unknown
    monkeypatch.setenv("PATH", "")  # no git at all
    assert provenance.git_state(REPO / "inat_keras") == unknown


@needs_git
def test_the_git_state_of_this_checkout_names_its_head() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not run from a git checkout")
    state = provenance.git_state()
    assert state["commit"] == git(REPO, "rev-parse", "HEAD")
    assert isinstance(state["uncommitted_changes"], bool)
