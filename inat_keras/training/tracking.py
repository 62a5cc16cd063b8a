"""Weights & Biases: offline by default, online on request with a key, off on request.

Never a login prompt: the mode is decided here before ``wandb.init`` is called.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inat_keras.config import RunConfig, TrackingConfig
from inat_keras.errors import UserError
from inat_keras.runs import BEST_MODEL, MODEL_SUMMARY_FILE, STATE_FILE
from inat_keras.storage import read_json, write_json

WandbMode = Literal["offline", "online", "off"]
WANDB_MODES: tuple[WandbMode, ...] = ("offline", "online", "off")


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(requested: str) -> WandbMode:
    """``auto`` is online when a key is configured, else offline."""
    if requested == "auto":
        return "online" if has_wandb_key() else "offline"
    if requested == "online" and not has_wandb_key():
        raise UserError("--wandb online needs a W&B key: run `wandb login` or set WANDB_API_KEY, or use --wandb offline")
    for mode in WANDB_MODES:  # the matching literal, so the mode is typed as one wandb.init accepts
        if requested == mode:
            return mode
    raise UserError(f"--wandb {requested}: choose auto, offline, online or off")


@dataclass
class WandbRun:
    """A started W&B run and how to upload it later."""

    run: Any
    mode: str
    directory: Path
    # The step of the first ``log``: an offline W&B run resumed later restarts its steps at 0, and its rows
    # would land on (and, at ``wandb sync``, replace) the ones logged before; see ``remember_step``.
    next_step: int | None = None

    def callbacks(self) -> list:
        from wandb.integration.keras import WandbMetricsLogger

        return [WandbMetricsLogger(log_freq="epoch")]

    def log(self, values: dict[str, Any]) -> None:
        if self.next_step is None:
            self.run.log(values)
        else:  # never below the run's own step: W&B drops a row logged at a step it has passed
            step = max(self.next_step, self.run.step)
            self.run.log(values, step=step)
            self.next_step = step + 1

    def log_summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def log_text_file(self, key: str, path: Path) -> None:
        """A text file as a preformatted HTML panel under ``key``, and the file itself in the run's Files tab."""
        import wandb

        text = path.read_text(encoding="utf-8", errors="replace")
        self.log({key: wandb.Html(f"<pre>{html.escape(text)}</pre>", inject=False, data_is_not_path=True)})
        # Saved from a copy in the run's own files folder: run.save of an outside file symlinks it, and warns.
        copy = Path(self.run.dir) / path.name
        shutil.copyfile(path, copy)
        self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def log_model(self, path: Path, *, name: str, metadata: dict[str, Any]) -> None:
        """``path`` (a .keras file) as a W&B artifact of type ``model``, aliased ``best``."""
        import wandb

        artifact = wandb.Artifact(artifact_name(name), type="model", metadata=metadata)
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact, aliases=["best"])

    def finish(self) -> str:
        """Close the run; returns the line telling the user where it went."""
        remember_step(self.directory, self.run.id, max(self.run.step, self.next_step or 0))
        self.run.finish()
        if self.mode == "offline":
            return f"W&B run saved offline; upload it with: wandb sync {self.directory}/wandb/offline-run-*"
        return f"W&B run: {self.run.url}"


def start_wandb(
    tracking: TrackingConfig,
    run_dir: Path,
    *,
    name: str,
    config: dict[str, Any],
    job_type: str = "train",
    resume_id: str | None = None,
) -> WandbRun | None:
    """Start a W&B run stored under ``run_dir/wandb``, or None when tracking is off."""
    mode = resolve_mode(tracking.wandb)
    if mode == "off":
        return None
    import wandb

    run = wandb.init(
        project=tracking.project,
        group=tracking.group,
        job_type=job_type,
        name=name,
        id=resume_id,
        resume="allow" if resume_id else None,
        config=config,
        dir=str(run_dir),
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off", init_timeout=90),
    )
    # Resumed: count the steps here, from the larger of what the server says (online) and what was recorded.
    next_step = max(run.step, recorded_step(run_dir, resume_id) or 0) if resume_id else None
    return WandbRun(run=run, mode=mode, directory=run_dir, next_step=next_step)


def artifact_name(name: str) -> str:
    """``model-<run name>``, with the characters W&B refuses in artifact names replaced by dashes."""
    return "model-" + re.sub(r"[^A-Za-z0-9._-]", "-", name)


def read_wandb_id(run_dir: Path) -> str | None:
    """The id of the W&B run a training run logged to (``checkpoint/state.json``), or None."""
    try:
        state = read_json(run_dir / STATE_FILE)
    except (OSError, ValueError):
        return None
    wandb_id = state.get("wandb_id") if isinstance(state, dict) else None
    return str(wandb_id) if wandb_id else None


def recorded_step(run_dir: Path, wandb_id: str | None) -> int | None:
    """The next free W&B step of the run ``wandb_id`` as ``remember_step`` left it in ``state.json``, or None."""
    try:
        state = read_json(run_dir / STATE_FILE)
    except (OSError, ValueError):
        return None
    if wandb_id is None or not isinstance(state, dict) or state.get("wandb_id") != wandb_id:
        return None
    step = state.get("wandb_step")
    return int(step) if isinstance(step, int) else None


def remember_step(run_dir: Path, wandb_id: str, step: int) -> None:
    """Record the next free W&B step in the run's ``state.json`` (when it names this W&B run), so that a later
    command resuming the W&B run offline logs after what is already there instead of over it."""
    try:
        state = read_json(run_dir / STATE_FILE)
    except (OSError, ValueError):
        return
    if isinstance(state, dict) and state.get("wandb_id") == wandb_id and step > int(state.get("wandb_step") or 0):
        write_json(run_dir / STATE_FILE, {**state, "wandb_step": int(step)})


def record_wandb_id(run_dir: Path, wandb_id: str) -> None:
    """Remember a W&B run started later for a finished run trained without one, so its next command resumes it.

    Only a finished run's ``state.json`` is touched: an unfinished one is still training's to write.
    """
    try:
        state = read_json(run_dir / STATE_FILE)
    except (OSError, ValueError):
        return
    if isinstance(state, dict) and state.get("finished") and not state.get("wandb_id"):
        write_json(run_dir / STATE_FILE, {**state, "wandb_id": wandb_id})


def log_training_files(wandb_run: WandbRun, config: RunConfig, run_dir: Path, metrics: dict[str, Any]) -> None:
    """At the end of training: the model summary, and ``best.keras`` as a model artifact with ``--wandb-log-model``."""
    summary = run_dir / MODEL_SUMMARY_FILE
    if summary.is_file():
        wandb_run.log_text_file("train/model_summary", summary)
    if config.tracking.log_model and (run_dir / BEST_MODEL).is_file():
        numbers = {key: value for key, value in metrics.items() if isinstance(value, (int, float, str, bool))}
        wandb_run.log_model(run_dir / BEST_MODEL, name=config.name, metadata={"config": config.to_dict(), "metrics": numbers})
