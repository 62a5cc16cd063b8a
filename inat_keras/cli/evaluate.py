"""``python -m inat_keras evaluate``: test metrics, confusion matrix, prediction grid and mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inat_keras.cli.flags import add_model_args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inat_keras evaluate", description="Evaluate a trained model on test images.")
    add_model_args(parser)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="test images: a dataset root (its val/<class>/) or a folder of class folders (default: the run's test split)",
    )
    parser.add_argument("--tta", action="store_true", help="also report test-time augmentation (image and its mirror averaged)")
    parser.add_argument("--out", help="output folder (default: <run>/eval)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prediction grid's choice of images")
    args = parser.parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    from inat_keras.inspection.evaluate import evaluate, format_summary
    from inat_keras.inspection.trained import default_output_dir, load_trained

    trained = load_trained(args.model, args.classes)
    out_dir = default_output_dir(trained, args.out, "eval")
    metrics = evaluate(trained, out_dir, data=args.data, tta=args.tta, seed=args.seed, batch_size=args.batch_size)
    for skipped in metrics["skipped"]:
        print(f"error: {skipped['path']}: not a readable image ({skipped['error']}); skipped", file=sys.stderr)
    print(format_summary(metrics, out_dir))
    return 0
