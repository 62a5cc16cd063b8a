"""What produced a run, for ``metrics.json``: package versions, Python, the OS, the code's git commit, the command.

A user who finds a good run months later can rebuild its environment from this and ``config.json``.
Nothing here imports TensorFlow: the versions come from the installed packages' metadata.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import inat_keras

# The packages whose versions decide how a run trains (distribution names, as pip knows them).
PACKAGES = ("tensorflow", "keras", "keras-tuner", "numpy")
GIT_TIMEOUT_SECONDS = 10


def package_versions() -> dict[str, str | None]:
    """The installed version of each of ``PACKAGES`` (None if absent), and this project's own."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["inat-keras"] = inat_keras.__version__
    return versions


def command_line() -> str:
    """The command as typed, ready to paste: ``python -m inat_keras train ...`` (``sys.orig_argv`` keeps the
    ``-m inat_keras`` that ``sys.argv`` turns into a path)."""
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def git(package_dir: Path, *args: str) -> str | None:
    """``git -C package_dir ARGS``'s output, or None without git or outside a repository."""
    try:
        done = subprocess.run(
            ["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(package_dir: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout the code runs from, and whether it had uncommitted changes.

    Both are None when the package is not run from a git checkout of this project (installed from a
    wheel, no git): a package installed into a virtual environment inside some other repository
    must not report that repository's commit, so the checkout's top must hold the package.
    """
    package_dir = (package_dir or Path(inat_keras.__file__).parent).resolve()
    unknown: dict[str, Any] = {"commit": None, "uncommitted_changes": None}
    top = git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != package_dir.parent:
        return unknown
    commit, status = git(package_dir, "rev-parse", "HEAD"), git(package_dir, "status", "--porcelain")
    if commit is None or status is None:
        return unknown
    # Untracked files count only inside the package: runs/ and data/ beside it are not code.
    changes = [line for line in status.splitlines() if not line.startswith("??") or line[3:].startswith(f"{package_dir.name}/")]
    return {"commit": commit.strip(), "uncommitted_changes": bool(changes)}


def provenance(commands: list[str] | None = None) -> dict[str, Any]:
    """The ``provenance`` entry of ``metrics.json``: this process's environment, and ``commands``, every
    command that trained the run (the first started it; later ones resumed it), by default this one's."""
    return {
        "packages": package_versions(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "git": git_state(),
        "commands": list(commands or [command_line()]),
        "working_directory": os.getcwd(),
    }
