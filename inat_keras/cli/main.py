"""``python -m inat_keras <command>`` and the ``inat-keras`` console command.

Each command lives in its own module of ``inat_keras.cli`` as ``main(argv) -> int``; this table only
names them, so adding a command is one line and running one imports nothing else.
"""

from __future__ import annotations

import importlib
import sys

from inat_keras.cli.run import run_main

COMMANDS = {
    "train-scratch": ("inat_keras.cli.train_scratch", "train the from-scratch CNN (same as train_scratch.py)"),
    "train": ("inat_keras.cli.train_scratch", "the same as train-scratch"),
    "finetune": ("inat_keras.cli.finetune", "fine-tune an ImageNet backbone (same as finetune.py)"),
    "download": ("inat_keras.cli.download", "download and extract the iNaturalist-12K dataset"),
    "check-data": ("inat_keras.cli.check_data", "find unusable images, duplicates and class imbalance in a dataset"),
    "sweep-analysis": ("inat_keras.cli.sweep_analysis", "trials table, plots, parameter importance and summary of a search"),
    "evaluate": ("inat_keras.cli.evaluate", "test metrics, confusion matrix, prediction grid and mistakes of a trained model"),
    "predict": ("inat_keras.cli.predict", "top-k classes of image files and folders"),
    "explain": ("inat_keras.cli.explain", "filters, feature maps, guided backpropagation and Grad-CAM of a trained model"),
    "export": ("inat_keras.cli.export", "export a trained model to SavedModel, TFLite or ONNX and check it"),
    "compare": ("inat_keras.cli.compare", "table and bar chart of scratch and fine-tuned runs side by side"),
    "report": ("inat_keras.cli.report", "report.html: one page with everything a run, a search or runs compared wrote"),
}


def usage() -> str:
    lines = ["usage: inat-keras <command> [options]   (or: python -m inat_keras <command> ...)", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `python -m inat_keras <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = importlib.import_module(COMMANDS[name][0]).main
    return run_main(command, rest)
