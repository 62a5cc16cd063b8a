"""``python -m inat_keras compare``: scratch and fine-tuned runs side by side."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from inat_keras.inspection.compare import collect_rows, expand_runs, markdown_table, write_comparison


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras compare",
        description="Compare finished runs (scratch and fine-tuned): a Markdown and CSV table and a bar chart.",
    )
    parser.add_argument("runs", nargs="+", help="run directories, or a quoted glob such as 'runs/*'")
    parser.add_argument("--out", default="comparison", help="folder for comparison.csv/.md/.png (default: comparison)")
    args = parser.parse_args(argv)

    rows, skipped = collect_rows(expand_runs(args.runs))
    rows.sort(key=lambda row: -(row["test_accuracy"] or 0))
    for note in skipped:
        print(note)
    paths = write_comparison(rows, Path(args.out))
    print(markdown_table(rows), end="")
    print("wrote " + ", ".join(map(str, paths)))
    return 0
