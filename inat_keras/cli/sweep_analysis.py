"""``python -m inat_keras sweep-analysis``: redo a search's trials table, plots and summary."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from inat_keras.cli.values import Parser
from inat_keras.config import WANDB_MODES, TrackingConfig
from inat_keras.errors import UserError
from inat_keras.runs import SEARCH_DIR


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m inat_keras sweep-analysis",
        description="Write the local sweep analysis (trials.csv, plots, importance, summary.md) of a search.",
    )
    parser.add_argument("search_dir", help="a search run (e.g. runs/scratch-search-bayes) or its search/ folder")
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="W&B mode (default: log the analysis to W&B when the trials were logged there, else nothing)",
    )
    parser.add_argument(
        "--wandb-project", default=TrackingConfig.project, help=f"W&B project (default: {TrackingConfig.project})"
    )
    parser.add_argument("--wandb-group", default=None, help="W&B group (default: the search's name, the group of its trials)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    from inat_keras.inspection.tracking import track_sweep_analysis, trials_were_tracked
    from inat_keras.search.analysis import write_analysis

    search_dir = Path(args.search_dir)
    if not search_dir.is_dir():
        raise UserError(f"{search_dir} does not exist: give a search run (runs/<name>) or its search/ folder")
    if (search_dir / SEARCH_DIR).is_dir():
        search_dir = search_dir / SEARCH_DIR
    analysis = write_analysis(search_dir)
    print(analysis.headline)
    if args.wandb != "off" and (args.wandb or trials_were_tracked(search_dir)):
        tracking = TrackingConfig(wandb=args.wandb or "auto", project=args.wandb_project, group=args.wandb_group)
        tracked = track_sweep_analysis(search_dir, tracking)
        if tracked:
            print(tracked)
    return 0
