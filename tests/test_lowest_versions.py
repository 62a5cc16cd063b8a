"""The lower end of the supported TensorFlow/Keras range: the demo and a few test files in a second virtualenv.

pyproject.toml allows TensorFlow from ``LOWEST["tensorflow"]`` so a notebook keeps the TensorFlow its
platform ships; this checks that version really runs the code. It downloads TensorFlow from PyPI
(about 620 MB), so it runs only when asked: ``INAT_KERAS_LOWEST=1 python -m pytest -n 0
tests/test_lowest_versions.py`` (.ci/run does, as a step of its own). The virtualenv is kept in
``~/.cache/inat-keras-lowest-venv/<hash of its requirements>`` and reused while the pins stay the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# The lowest versions pyproject.toml allows. TensorFlow 2.19 and older cap numpy below 2.2, under the numpy>=2.4
# the project needs; TensorFlow 2.20 asks for tensorboard 2.20.
LOWEST = {"tensorflow": "2.20.0", "tensorboard": "2.20.0", "keras": "3.15.0"}
# Test files that cover the data pipeline, the models and a training run, and need no W&B or browser.
SMOKE_TESTS = ["tests/test_data.py", "tests/test_models.py", "tests/test_layouts.py"]

pytestmark = pytest.mark.skipif(
    os.environ.get("INAT_KERAS_LOWEST") != "1", reason="downloads TensorFlow from PyPI: set INAT_KERAS_LOWEST=1 to run"
)


def lowest_requirements() -> str:
    """requirements.txt with the lowest TensorFlow, TensorBoard and Keras, plus the test runner's pins."""
    lines = []
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        name = line.split("==")[0].strip()
        lines.append(f"{name}=={LOWEST[name]}" if name in LOWEST else line)
    dev = (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
    lines += [line for line in dev if line.startswith(("pytest==", "pytest-xdist=="))]
    return "\n".join(lines) + "\n"


def lowest_venv() -> Path:
    """The virtualenv with the lowest versions, built once per set of requirements."""
    requirements = lowest_requirements()
    key = hashlib.sha256(requirements.encode()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "inat-keras-lowest-venv" / key
    python = venv / "bin" / "python"
    if (venv / "complete").is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / "requirements.txt").write_text(requirements, encoding="utf-8")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(venv / "requirements.txt")], check=True, timeout=1800
    )
    (venv / "complete").write_text("", encoding="utf-8")  # last: a killed install is redone, not reused
    return python


def run_in(python: Path, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "INAT_KERAS_HOME": str(tmp_path / "home"),
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "WANDB_MODE": "disabled",
    }
    env.pop("INAT_KERAS_LOWEST", None)
    return subprocess.run([str(python), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def test_the_lowest_supported_tensorflow_and_keras_train_the_demo_and_pass_the_smoke_tests(tmp_path: Path) -> None:
    python = lowest_venv()
    versions = run_in(python, ["-c", "import tensorflow as tf, keras; print(tf.__version__, keras.__version__)"], tmp_path)
    assert versions.stdout.split() == [LOWEST["tensorflow"], LOWEST["keras"]], versions.stdout + versions.stderr

    demo = run_in(
        python,
        ["-m", "inat_keras", "train-scratch", "--demo", "--epochs", "1", "--quiet", "--out", str(tmp_path / "runs")],
        tmp_path,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "test accuracy" in demo.stdout

    tests = run_in(python, ["-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", *SMOKE_TESTS], tmp_path)
    assert tests.returncode == 0, tests.stdout[-5000:]
