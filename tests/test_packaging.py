"""Packaging: pyproject.toml agrees with the requirements files, and the package installs and runs as `inat-keras`.

The install is offline (--no-index --no-build-isolation --no-deps): it builds with the setuptools already
installed and takes the dependencies from the environment, so it never reaches a package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy, in requirements-dev.txt, installs tomli on Python 3.10
    import tomli as tomllib


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(name: str) -> list[str]:
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def pinned(name: str) -> dict[str, Requirement]:
    """The requirements of a requirements file by canonical name, each checked to be pinned with ==."""
    requirements = {}
    for line in requirement_lines(name):
        if line.startswith("-r "):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}: pin {line!r} with =="
        requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


def pin_of(requirement: Requirement) -> str:
    return next(iter(requirement.specifier)).version


def declared() -> dict[str, Requirement]:
    requirements = [Requirement(line) for line in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def test_requirements_and_pyproject_name_the_same_runtime_packages() -> None:
    in_requirements, in_pyproject = set(pinned("requirements.txt")), set(declared())
    assert in_requirements == in_pyproject, (
        f"only in requirements.txt: {sorted(in_requirements - in_pyproject)}; "
        f"only in pyproject.toml: {sorted(in_pyproject - in_requirements)}"
    )


def test_every_pinned_version_lies_in_the_range_pyproject_declares() -> None:
    ranges = declared()
    outside = [
        f"{name}=={pin_of(requirement)} is outside pyproject's {name}{ranges[name].specifier}"
        for name, requirement in pinned("requirements.txt").items()
        if name in ranges and not ranges[name].specifier.contains(pin_of(requirement), prereleases=True)
    ]
    assert not outside, "\n".join(outside)


def test_the_gpu_extra_is_tensorflow_with_cuda_at_the_pinned_version() -> None:
    (gpu,) = [Requirement(line) for line in pyproject()["project"]["optional-dependencies"]["gpu"]]
    tensorflow_pin = pin_of(pinned("requirements.txt")["tensorflow"])
    assert canonicalize_name(gpu.name) == "tensorflow" and gpu.extras == {"and-cuda"}, gpu
    assert gpu.specifier == declared()["tensorflow"].specifier, (gpu, declared()["tensorflow"])
    assert gpu.specifier.contains(tensorflow_pin), (gpu, tensorflow_pin)


def test_dev_requirements_add_pinned_tools_to_the_runtime_ones() -> None:
    assert requirement_lines("requirements-dev.txt")[0] == "-r requirements.txt"
    tools = pinned("requirements-dev.txt")  # asserts each is pinned
    assert {"pytest", "ruff", "mypy", "import-linter"} <= set(tools), sorted(tools)
    assert not set(tools) & set(pinned("requirements.txt")), "a package is in both requirements files"


def test_pre_commit_runs_the_pinned_ruff() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (ruff_repo,) = [repo for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit")]
    assert ruff_repo["rev"] == "v" + pin_of(pinned("requirements-dev.txt")["ruff"]), ruff_repo["rev"]


# The installed copy: built from a copy of the sources (a build in place would leave build/ and
# *.egg-info/ in the repository), run from another folder so the repository's own package is not on the path.


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("installed")
    source, target = work / "source", work / "target"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "inat_keras", source / "inat_keras", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--no-input", "--quiet", "--target", str(target), str(source)]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_installed(target: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cwd = target.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_installed_package_is_the_copy_and_its_version_is_the_distributions(installed: Path) -> None:
    script = (
        "import importlib.metadata, inat_keras; "
        "print(inat_keras.__file__); print(inat_keras.__version__); print(importlib.metadata.version('inat-keras'))"
    )
    result = run_installed(installed, sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    location, version, distribution_version = result.stdout.split()
    assert Path(location).is_relative_to(installed), location
    assert version == distribution_version, (version, distribution_version)


def test_the_console_script_lists_the_commands(installed: Path) -> None:
    result = run_installed(installed, str(installed / "bin" / "inat-keras"), "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    for command in ("train-scratch", "finetune", "evaluate", "predict", "export"):
        assert f"  {command} " in result.stdout, f"{command} missing from:\n{result.stdout}"


def test_the_installed_package_holds_the_report_templates(installed: Path) -> None:
    script = "from inat_keras.inspection.report_html import environment; print(*sorted(environment().list_templates()))"
    result = run_installed(installed, sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    assert {"run.html.j2", "search.html.j2", "comparison.html.j2"} <= set(result.stdout.split()), result.stdout


@pytest.mark.slow
def test_the_console_script_trains_a_demo_run(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = ("train-scratch", "--demo", "--epochs", "1", "--quiet", "--wandb", "off", "--out", str(out))
    result = run_installed(installed, str(installed / "bin" / "inat-keras"), *args, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (metrics_file,) = out.rglob("metrics.json")
    assert json.loads(metrics_file.read_text()), metrics_file
    assert (metrics_file.parent / "report.html").is_file(), result.stdout
