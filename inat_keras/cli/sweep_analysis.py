"""``python -m inat_keras sweep-analysis``: redo a search's trials table, plots and summary."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from inat_keras.errors import UserError
from inat_keras.runs import SEARCH_DIR


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras sweep-analysis",
        description="Write the local sweep analysis (trials.csv, plots, importance, summary.md) of a search.",
    )
    parser.add_argument("search_dir", help="a search run (e.g. runs/scratch-search-bayes) or its search/ folder")
    args = parser.parse_args(argv)
    # The library (and TensorFlow with it) is imported after the flags parse: --help and flag errors come at once.
    from inat_keras.search.analysis import write_analysis

    search_dir = Path(args.search_dir)
    if not search_dir.is_dir():
        raise UserError(f"{search_dir} does not exist: give a search run (runs/<name>) or its search/ folder")
    if (search_dir / SEARCH_DIR).is_dir():
        search_dir = search_dir / SEARCH_DIR
    analysis = write_analysis(search_dir)
    print(analysis.headline)
    return 0
