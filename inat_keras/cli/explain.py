"""``python -m inat_keras explain``: filters, feature maps, guided backpropagation and Grad-CAM of a model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inat_keras.cli.flags import add_model_args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras explain",
        description="Filters, feature maps, guided backpropagation and Grad-CAM of a trained CNN.",
    )
    add_model_args(parser)
    parser.add_argument("--image", help="image to explain (default: the run's first test image)")
    parser.add_argument("--out", help="output folder (default: <run>/explain)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the guided-backpropagation neurons")
    args = parser.parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    from inat_keras.inspection.explain import explain
    from inat_keras.inspection.trained import default_output_dir, load_trained

    trained = load_trained(args.model, args.classes)
    out_dir = default_output_dir(trained, args.out, "explain")
    summary = explain(trained, out_dir, image_path=args.image, seed=args.seed)
    maps = ", ".join(item["file"] for item in summary["feature_maps"])
    print(f"{summary['image']}: predicted {summary['predicted_class']} ({summary['probability']:.1%})")
    print(f"written to {out_dir}: filters.png, {maps}, guided_backprop.png, gradcam.png, explain.json")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    return 0
