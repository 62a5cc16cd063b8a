"""``python -m inat_keras explain``: filters, feature maps, guided backpropagation and Grad-CAM of a model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inat_keras.cli.flags import add_inspection_wandb_arg, add_model_args
from inat_keras.cli.run import open_trained, track_in_wandb
from inat_keras.cli.values import Parser, seed


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m inat_keras explain",
        description="Filters, feature maps, guided backpropagation and Grad-CAM of a trained CNN.",
    )
    add_model_args(parser)
    parser.add_argument("--image", help="image to explain (default: the run's first test image)")
    parser.add_argument("--out", help="output folder (default: <run>/explain)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the guided-backpropagation neurons (default: 0)")
    add_inspection_wandb_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    trained, out_dir = open_trained(args, "explain")
    from inat_keras.inspection.explain import MIN_MAP_SIDE, explain
    from inat_keras.inspection.tracking import log_explanation

    summary = explain(trained, out_dir, image_path=args.image, seed=args.seed)
    maps = ", ".join(item["file"] for item in summary["feature_maps"])
    print(f"{summary['image']}: predicted {summary['predicted_class']} ({summary['probability']:.1%})")
    print(f"written to {out_dir}: filters.png, {maps}, guided_backprop.png, gradcam.png, explain.json")
    skipped = summary["feature_maps_skipped"]
    if skipped:
        names = [f"{item['layer']} ({item['size']})" for item in skipped]
        listed = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:2])}, ..., {', '.join(names[-2:])}"
        smaller = f"smaller than {MIN_MAP_SIDE}x{MIN_MAP_SIDE}"
        print(f"feature maps: skipped {len(skipped)} layer(s) whose maps are {smaller}: {listed} (all in explain.json)")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    track_in_wandb(trained, args, "explain", lambda wandb_run: log_explanation(wandb_run, out_dir))
    return 0
