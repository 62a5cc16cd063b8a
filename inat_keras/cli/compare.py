"""``python -m inat_keras compare``: scratch and fine-tuned runs side by side."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from inat_keras.cli.values import Parser
from inat_keras.config import WANDB_MODES


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m inat_keras compare",
        description="Compare finished runs (scratch and fine-tuned): a Markdown and CSV table and a bar chart, "
        "runs ranked against the runs of their own dataset only.",
    )
    parser.add_argument("runs", nargs="+", help="run directories, or a quoted glob such as 'runs/*'")
    parser.add_argument("--out", default="comparison", help="folder for comparison.csv/.md/.png (default: comparison)")
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="W&B mode (default: log to W&B when one of the runs was trained with W&B, else nothing)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from inat_keras.inspection.compare import collect_rows, expand_runs, markdown_table, ranked_rows, write_comparison
    from inat_keras.inspection.tracking import track_comparison

    run_dirs = expand_runs(args.runs)
    rows, skipped = collect_rows(run_dirs)
    rows = ranked_rows(rows)
    for note in skipped:
        print(note)
    paths = write_comparison(rows, Path(args.out))
    print(markdown_table(rows), end="")
    print("wrote " + ", ".join(map(str, paths)))
    tracked = track_comparison(run_dirs, args.wandb, paths, Path(args.out))
    if tracked:
        print(tracked)
    return 0
