"""``python -m inat_keras predict``: the top-k classes of image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from inat_keras.cli.flags import add_model_args
from inat_keras.cli.run import start_tensorflow
from inat_keras.cli.values import Parser, positive_int


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m inat_keras predict", description="Top-k classes of images and folders.")
    add_model_args(parser)
    parser.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes listed per image (default: 3)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV (path, rank, class, probability) instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    start_tensorflow()
    from inat_keras.inspection.predict import format_table, predict_paths, write_csv_rows
    from inat_keras.inspection.trained import load_trained

    trained = load_trained(args.model, args.classes)
    report = predict_paths(trained, args.images, k=args.top_k)
    for failure in report.failures:
        print(f"error: {failure['path']}: {failure['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"results": report.results, "errors": report.failures}, indent=2))
    elif args.csv:
        write_csv_rows(report, sys.stdout)
    elif report.results:
        print(format_table(report))
    # 1: some inputs could not be predicted (the others were); 2 is kept for usage errors.
    return 1 if report.failures else 0
