"""The end the training commands share: train (or resume) the run, then print where it is and how it did."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from inat_keras.cli.flags import REAL_DATA_HINT
from inat_keras.config import RunConfig

if TYPE_CHECKING:
    from inat_keras.training.loop import RunResult


def report(result: RunResult, config: RunConfig) -> None:
    for message in result.messages:
        print(message)
    if config.demo:
        print(f"This was the embedded demo (handwritten digits). For real data: {REAL_DATA_HINT}.")
    print(f"run: {result.run_dir}  test accuracy: {result.metrics['test_accuracy']:.4f}")


def train_and_report(config: RunConfig, args: argparse.Namespace) -> int:
    from inat_keras.training.loop import train_run  # after the flags: TensorFlow starts here

    result = train_run(config, resume=bool(args.resume), verbose=0 if args.quiet else "auto")
    report(result, config)
    return 0
