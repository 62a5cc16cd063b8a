"""KerasTuner's distributed mode: a chief oracle on 127.0.0.1 and two workers, as real processes."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_dataset_root

SPACE = {"num_blocks": 3, "first_filters": [4, 8], "dense_units": [8, 16], "batch_size": [8, 16], "augment": False}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_chief_and_two_workers_run_every_trial_exactly_once(tmp_path: Path) -> None:
    data = make_dataset_root(tmp_path / "data", train_per_class=6, val_per_class=2)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    command = [
        sys.executable,
        "train_scratch.py",
        "--data",
        str(data),
        "--tuner",
        "random",
        "--max-trials",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--search-space",
        str(space),
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "dist",
        "--wandb",
        "off",
        "--quiet",
        "--no-retrain",
    ]
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}
    processes = {
        tuner_id: subprocess.Popen(
            command,
            cwd=REPO,
            env={**env, "KERASTUNER_TUNER_ID": tuner_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    try:
        outputs = {tuner_id: process.communicate(timeout=170)[0] for tuner_id, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for tuner_id, process in processes.items():
        assert process.returncode == 0, f"{tuner_id} failed:\n{outputs[tuner_id][-3000:]}"

    ran = []
    for tuner_id in ("tuner0", "tuner1"):
        match = re.search(rf"^{tuner_id} ran trials: (.*)$", outputs[tuner_id], re.MULTILINE)
        assert match, outputs[tuner_id][-2000:]
        ran += [trial for trial in match.group(1).split(", ") if trial != "none"]
    assert sorted(ran) == ["1", "2", "3"]  # every trial (by KerasTuner's numbers), none twice

    search_dir = tmp_path / "runs" / "dist" / "search"
    with open(search_dir / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["COMPLETED"] * 3
    assert "best val accuracy" in outputs["chief"]
    assert not (tmp_path / "runs" / "dist" / "metrics.json").exists()  # --no-retrain


def test_the_private_keras_tuner_api_the_chief_serves_with_is_still_there() -> None:
    """search/chief.py is the one user of keras_tuner.src: this fails by name when KerasTuner moves it."""
    import inspect

    from keras_tuner.src import protos  # noqa: TID251 (this test pins the private API)
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief  # noqa: TID251

    assert callable(protos.get_service_grpc().add_OracleServicer_to_server)
    assert list(inspect.signature(OracleServicer).parameters) == ["oracle"]
    assert callable(exit_chief)
    servicer = OracleServicer(oracle=None)
    assert servicer.stop_triggered is False  # serve_oracle polls it
