"""``python -m inat_keras export``: a trained model as SavedModel, TFLite or ONNX, checked against Keras."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inat_keras.cli.flags import add_inspection_wandb_arg, add_model_args
from inat_keras.cli.run import open_trained, track_in_wandb
from inat_keras.cli.values import Parser, non_negative_float
from inat_keras.inspection.formats import FORMATS, TOLERANCE


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m inat_keras export", description="Export a trained model and check the export.")
    add_model_args(parser)
    parser.add_argument(
        "--format", choices=FORMATS, action="append", required=True, help="savedmodel, tflite or onnx (required; repeatable)"
    )
    parser.add_argument("--out", help="output folder (default: <run>/export)")
    parser.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=TOLERANCE,
        help=f"largest accepted probability difference (default: {TOLERANCE:g})",
    )
    add_inspection_wandb_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    trained, out_dir = open_trained(args, "export")
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.tracking import log_exports

    results = {}
    for fmt in dict.fromkeys(args.format):
        result = results[fmt] = export_model(trained, fmt, out_dir, tolerance=args.tolerance)
        print(
            f"{fmt}: {result['path']} ({human_size(result['bytes'])}); max difference from Keras "
            f"{result['max_abs_difference']:.2e} on {result['checked_images']} images"
        )
    track_in_wandb(trained, args, "export", lambda wandb_run: log_exports(wandb_run, results))
    return 0
