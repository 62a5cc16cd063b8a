"""Distributed training: TF_CONFIG parsing, explicit scaling, and a real two-worker run on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from inat_keras.config import RunConfig, TrainConfig
from inat_keras.errors import UserError
from inat_keras.training.distribute import (
    Distribution,
    config_for_worker,
    distribution_report,
    read_tf_config,
    scaled_learning_rate,
)

TINY_MODEL = ["--image-size", "32", "--num-blocks", "3", "--first-filters", "8", "--dense-units", "16"]


def tf_config(workers: list[str], index: int, chief: list[str] | None = None, task_type: str = "worker") -> dict[str, str]:
    cluster = {"worker": workers, **({"chief": chief} if chief else {})}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; they are released just before the workers bind them."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_worker_zero_is_the_chief_when_the_cluster_names_no_chief() -> None:
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    first, second = read_tf_config(tf_config(workers, 0)), read_tf_config(tf_config(workers, 1))
    assert first.is_chief and not second.is_chief
    assert first.num_workers == second.num_workers == 2


def test_a_chief_task_is_the_chief_and_counts_as_a_worker() -> None:
    env = tf_config(["127.0.0.1:2"], 0, chief=["127.0.0.1:1"])
    assert not read_tf_config(env).is_chief
    chief = read_tf_config(tf_config(["127.0.0.1:2"], 0, chief=["127.0.0.1:1"], task_type="chief"))
    assert chief.is_chief and chief.num_workers == 2


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({}, "needs TF_CONFIG"),
        ({"TF_CONFIG": "{not json"}, "not valid"),
        (tf_config(["127.0.0.1:1"], 3), "not in its cluster"),
        (
            {"TF_CONFIG": json.dumps({"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}})},
            "'ps'",
        ),
    ],
)
def test_a_missing_or_wrong_tf_config_is_a_one_line_user_error(environ: dict[str, str], words: str) -> None:
    with pytest.raises(UserError, match=words):
        read_tf_config(environ)


def test_learning_rate_scales_by_the_chosen_rule() -> None:
    assert scaled_learning_rate(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_learning_rate(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-3, 4, "none") == pytest.approx(1e-3)


def test_an_unknown_distribute_mode_is_refused_before_training() -> None:
    with pytest.raises(UserError, match="--distribute"):
        TrainConfig(distribute="horovod").validate()


def test_a_worker_that_is_not_the_chief_writes_to_a_temporary_folder_without_wandb(tmp_path: Path) -> None:
    config = RunConfig(name="run", out=str(tmp_path / "runs"))
    config.tracking.wandb = "online"
    other = Distribution("multiworker", 2, read_tf_config(tf_config(["a:1", "b:2"], 1)))
    moved = config_for_worker(config, other, resume=False)
    assert Path(moved.out).is_dir() and not Path(moved.out).is_relative_to(tmp_path)
    assert moved.tracking.wandb == "off" and config.tracking.wandb == "online"
    chief = Distribution("multiworker", 2, read_tf_config(tf_config(["a:1", "b:2"], 0)))
    assert config_for_worker(config, chief, resume=False) is config


def test_the_report_gives_the_global_batch_and_the_scaled_learning_rate() -> None:
    config = RunConfig(name="run")
    config.data.batch_size, config.train.learning_rate = 16, 1e-3
    report = distribution_report(Distribution("mirrored", 8), config, scaled_learning_rate(1e-3, 8, "linear"))
    assert report["global_batch_size"] == 128 and report["learning_rate"] == pytest.approx(8e-3)


@pytest.mark.slow
def test_two_workers_on_localhost_train_one_epoch_and_only_the_chief_writes_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    out = tmp_path / "runs"
    args = [
        "--data",
        str(tiny_dataset),
        *TINY_MODEL,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--learning-rate",
        "1e-3",
        "--distribute",
        "multiworker",
        "--out",
        str(out),
        "--name",
        "mw",
        "--wandb",
        "off",
        "--quiet",
    ]
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            **tf_config(workers, index),
            "INAT_KERAS_HOME": str(tmp_path / f"home{index}"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
        }
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed when the worker ends, below)
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, str(REPO / "train_scratch.py"), *args], env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    try:
        codes = [process.wait(timeout=140) for process, _ in processes]
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in logs)

    run = out / "mw"
    for name in ("config.json", "split.csv", "best.keras", "history.csv", "curves.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert [p.name for p in out.iterdir()] == ["mw"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    scaling = metrics["distribution"]
    assert scaling["mode"] == "multiworker" and scaling["num_workers"] == 2 and scaling["num_replicas"] == 2
    assert scaling["global_batch_size"] == 8 and scaling["learning_rate"] == pytest.approx(2e-3)
    assert "(chief)" in logs[0] and "temporary directory" in logs[1]
    other_run = Path(logs[1].strip().splitlines()[-1].split()[1])
    assert not other_run.is_relative_to(out) and not other_run.exists()


def test_mirrored_training_on_one_device_records_its_scaling(tiny_dataset: Path, tmp_path: Path) -> None:
    from inat_keras.training.loop import train_run

    config = RunConfig(name="mirrored", out=str(tmp_path / "runs"))
    config.data.data_dir, config.data.image_size, config.data.batch_size = str(tiny_dataset), 32, 4
    config.model = {"num_blocks": 3, "first_filters": 8, "dense_units": [16]}
    config.train.epochs, config.train.distribute, config.tracking.wandb = 1, "mirrored", "off"
    result = train_run(config, verbose=0, log=lambda line: None)
    import tensorflow as tf

    replicas = max(1, len(tf.config.list_logical_devices("GPU")))  # MirroredStrategy takes every local GPU
    scaling = json.loads((result.run_dir / "metrics.json").read_text())["distribution"]
    assert scaling["mode"] == "mirrored" and scaling["num_replicas"] == replicas
    assert scaling["global_batch_size"] == 4 * replicas


@pytest.mark.slow
def test_fine_tuning_recompiles_inside_the_mirrored_strategy_between_phases(tiny_dataset: Path, tmp_path: Path) -> None:
    from inat_keras.cli.finetune import main as finetune_main

    args = [
        "--data",
        str(tiny_dataset),
        "--backbone",
        "mobilenetv2",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--head-epochs",
        "1",
        "--batch-size",
        "4",
        "--distribute",
        "mirrored",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "ft",
        "--wandb",
        "off",
        "--quiet",
    ]
    assert finetune_main(args) == 0
    metrics = json.loads((tmp_path / "runs" / "ft" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["distribution"]["mode"] == "mirrored"
