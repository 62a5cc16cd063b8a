"""``python -m inat_keras evaluate``: test metrics, confusion matrix, prediction grid and mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inat_keras.cli.flags import add_inspection_wandb_arg, add_model_args
from inat_keras.cli.run import open_trained, track_in_wandb
from inat_keras.cli.values import Parser, positive_int, seed


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m inat_keras evaluate", description="Evaluate a trained model on test images.")
    add_model_args(parser)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="test images: a dataset root (its val/<class>/) or a folder of class folders (default: the run's test split)",
    )
    parser.add_argument("--tta", action="store_true", help="also report test-time augmentation (image and its mirror averaged)")
    parser.add_argument("--out", help="output folder (default: <run>/eval)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per prediction step (default: 32)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the prediction grid's choice of images (default: 0)")
    add_inspection_wandb_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    trained, out_dir = open_trained(args, "eval")
    from inat_keras.inspection.evaluate import evaluate, format_summary
    from inat_keras.inspection.tracking import log_evaluation

    metrics = evaluate(trained, out_dir, data=args.data, tta=args.tta, seed=args.seed, batch_size=args.batch_size)
    for skipped in metrics["skipped"]:
        print(f"error: {skipped['path']}: not a readable image ({skipped['error']}); skipped", file=sys.stderr)
    print(format_summary(metrics, out_dir))
    track_in_wandb(trained, args, "evaluate", lambda wandb_run: log_evaluation(wandb_run, out_dir))
    return 0
