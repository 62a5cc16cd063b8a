"""``python -m inat_keras download``: fetch and extract iNaturalist-12K, resumably."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from inat_keras.cli.values import Parser
from inat_keras.data.download import DATASET_URL, download_dataset


class WholeWordsHelp(argparse.HelpFormatter):
    """Help lines that wrap between words only, so the default URL stays one piece a terminal can open."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m inat_keras download",
        description="Download and extract iNaturalist-12K (resumes an interrupted download).",
        formatter_class=WholeWordsHelp,
    )
    parser.add_argument("--dest", default="data", help="folder to download and extract into (default: data)")
    parser.add_argument("--url", default=DATASET_URL, help=f"where to fetch the zip from (default: {DATASET_URL})")
    parser.add_argument(
        "--archive", help="extract this local nature_12K.zip instead of downloading (default: download from --url)"
    )
    parser.add_argument("--delete-archive", action="store_true", help="remove the zip after extraction")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    root = download_dataset(
        args.dest, url=args.url, archive=args.archive, progress=not args.quiet, keep_archive=not args.delete_archive
    )
    print(f"dataset ready: python train_scratch.py --data {root}")
    return 0
