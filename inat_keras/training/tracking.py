"""Weights & Biases: offline by default, online on request with a key, off on request.

Never a login prompt: the mode is decided here before ``wandb.init`` is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inat_keras.config import TrackingConfig
from inat_keras.errors import UserError

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

    def callbacks(self) -> list:
        from wandb.integration.keras import WandbMetricsLogger

        return [WandbMetricsLogger(log_freq="epoch")]

    def log_summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self) -> str:
        """Close the run; returns the line telling the user where it went."""
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
    return WandbRun(run=run, mode=mode, directory=run_dir)
