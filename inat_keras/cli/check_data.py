"""``python -m inat_keras check-data``: unusable images, duplicates and class imbalance of a dataset."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from inat_keras.cli.run import start_tensorflow
from inat_keras.cli.values import Parser, positive_int
from inat_keras.data.check import check_dataset
from inat_keras.data.gate import training_layout_problem
from inat_keras.data.report import MIN_SIDE, format_report
from inat_keras.errors import UserError
from inat_keras.storage import write_json

# -- command line ---------------------------------------------------------------------------------


class ProgressLine:
    """``checked N/M images`` on stderr: redrawn in a terminal, every 10% otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream, self.last, self.step = stream or sys.stderr, 0.0, -1
        self.live = self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.live and (now - self.last > 0.2 or done == total):
            self.last = now
            print(f"\rchecked {done}/{total} images ", end="\n" if done == total else "", file=self.stream, flush=True)
        elif not self.live and (step := 10 * done // total) > self.step:
            self.step = step
            print(f"checked {done}/{total} images", file=self.stream, flush=True)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m inat_keras check-data",
        description="Decode every image of a dataset once and report unusable files, duplicates and class balance. "
        "Exit status 1 when some images are unusable or training would refuse the folder layout.",
    )
    parser.add_argument("dir", metavar="DIR", help="dataset root with train/<class>/ and val/<class>/ (or class folders)")
    parser.add_argument("--json", metavar="FILE", help="also write the complete report as JSON (default: none)")
    parser.add_argument(
        "--min-size", type=positive_int, default=MIN_SIDE, help=f"smallest usable image side in pixels (default {MIN_SIDE})"
    )
    parser.add_argument("--workers", type=positive_int, help="parallel decoders (default: one per CPU core)")
    parser.add_argument("--no-cache", action="store_true", help="decode every file again, ignoring cached verdicts")
    parser.add_argument("--all", action="store_true", help="list every file in the text report, not the first 20 per section")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    report = check_dataset(
        args.dir,
        min_side=args.min_size,
        workers=args.workers,
        use_cache=not args.no_cache,
        progress=None if args.quiet else ProgressLine(),
        before_decoding=start_tensorflow,  # its JPEG decoder checks the JPEGs; a check the cache answers never starts it
    )
    print(format_report(report, limit=None if args.all else 20))
    if args.json:
        try:
            write_json(args.json, report.to_dict())
        except OSError as error:
            raise UserError(f"cannot write {args.json} ({error.strerror}): choose a writable --json path") from None
        print(f"report: {args.json}")
    layout_problem = training_layout_problem(Path(args.dir), report)
    if layout_problem:
        print(f"problem: {layout_problem}")
    return 1 if report.bad or layout_problem else 0
