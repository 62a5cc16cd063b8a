"""``python -m inat_keras <command>``: the commands beyond the two training scripts.

Each command lives in its own module as ``main(argv) -> int``; this table only names them,
so adding a command is one line and running one imports nothing else.
"""

from __future__ import annotations

import importlib
import sys

from .cli import run_main

COMMANDS = {
    "train": ("inat_keras.cli:train_scratch_main", "train the from-scratch CNN (same as train_scratch.py)"),
    "download": ("inat_keras.download:main", "download and extract the iNaturalist-12K dataset"),
    "check-data": ("inat_keras.datacheck:main", "find unusable images, duplicates and class imbalance in a dataset"),
    "sweep-analysis": ("inat_keras.sweep_analysis:main", "trials table, plots, parameter importance and summary of a search"),
    "evaluate": ("inat_keras.evaluation:main", "test metrics, confusion matrix, prediction grid and mistakes of a trained model"),
    "predict": ("inat_keras.prediction:main", "top-k classes of image files and folders"),
    "explain": ("inat_keras.explain:main", "filters, feature maps, guided backpropagation and Grad-CAM of a trained model"),
    "export": ("inat_keras.export:main", "export a trained model to SavedModel, TFLite or ONNX and check it"),
    "finetune": ("inat_keras.finetune_cli:finetune_main", "fine-tune an ImageNet backbone (same as finetune.py)"),
    "compare": ("inat_keras.compare:main", "table and bar chart of scratch and fine-tuned runs side by side"),
}


def usage() -> str:
    lines = ["usage: python -m inat_keras <command> [options]", "", "commands:"]
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
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    return run_main(command, rest)


if __name__ == "__main__":
    sys.exit(main())
