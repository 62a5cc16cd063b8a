"""The end the training commands share: train (or resume) the run, then print where it is and how it did."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from inat_keras.cli.flags import REAL_DATA_HINT
from inat_keras.cli.report import report_after_run
from inat_keras.cli.run import start_tensorflow
from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.runs import run_dir_of

if TYPE_CHECKING:
    from inat_keras.training.loop import RunResult


def report(result: RunResult, config: RunConfig, page: Path | None = None) -> None:
    for message in result.messages:
        print(message)
    if config.demo:
        print(f"This was the embedded demo (handwritten digits). For real data: {REAL_DATA_HINT}.")
    print(f"run: {result.run_dir}  test accuracy: {result.metrics['test_accuracy']:.4f}" + (f"  report: {page}" if page else ""))


def refuse_unusable_paths(config: RunConfig, *, resume: bool) -> None:
    """The settings, the data folder's layout and a writable --out, checked before TensorFlow takes seconds to start."""
    from inat_keras.data.files import discover_dataset  # light: lists folders, decodes nothing

    config.train.validate()
    config.data.validate()
    if not resume and config.data.data_dir is not None:
        discover_dataset(config.data.data_dir)
    run_dir = run_dir_of(config)
    # The nearest folder that exists: the run directory, or the one it will be created in.
    existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a folder" if not existing.is_dir() else "not writable"
        raise UserError(f"cannot write to {run_dir} ({existing} is {reason}): choose a writable --out directory")


def train_and_report(config: RunConfig, args: argparse.Namespace) -> int:
    start_tensorflow(verbose=args.verbose)
    from inat_keras.training.loop import train_run  # after the flags and the quiet start

    result = train_run(config, resume=bool(args.resume), verbose=0 if args.quiet else "auto", show_summary=args.verbose)
    # A worker other than the chief trains in a temporary copy of the run: the chief writes the page.
    own_run = result.run_dir == run_dir_of(config)
    page = report_after_run(result.run_dir) if args.report and own_run else None
    report(result, config, page)
    return 0
