"""``python -m inat_keras report``: one self-contained ``report.html`` per run, per search, and for runs compared.

The training commands write the run's (and a search's) page themselves at the end, unless ``--no-report``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from inat_keras.cli.values import Parser
from inat_keras.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="python -m inat_keras report",
        description="Write report.html, one page with every file of a run or a search, pictures embedded; "
        "several runs also get a comparison page.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="RUN_OR_SEARCH",
        help="run directories (runs/NAME), searches (runs/NAME/search), or a quoted glob",
    )
    parser.add_argument(
        "--out", default="comparison", help="folder of the comparison page when several runs are given (default: comparison)"
    )
    args = parser.parse_args(argv)
    # The library is imported after the flags parse: --help and flag errors come at once.
    from inat_keras.inspection.report import write_reports

    for page in write_reports(args.targets, Path(args.out)):
        print(f"report: {page}")
    return 0


def report_after_run(run_dir: Path) -> Path | None:
    """The run's report.html at the end of training (None, with a warning, if it could not be written)."""
    from inat_keras.inspection.report import write_run_report

    return written_or_warned(write_run_report, run_dir)


def report_after_search(search_dir: Path) -> Path | None:
    """The search's report.html, and its retrained run's, at the end of a search."""
    from inat_keras.inspection.report import write_search_report

    return written_or_warned(write_search_report, search_dir)


def written_or_warned(write: Callable[[Path], Path], target: Path) -> Path | None:
    # The run itself succeeded: a page that cannot be written (a damaged file, a full disk) does not fail the command.
    try:
        return write(target)
    except (UserError, OSError) as error:
        print(f"warning: no report.html for {target}: {error}", file=sys.stderr)
        return None
