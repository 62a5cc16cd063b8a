"""``--tuner``: the search flags shared by ``train_scratch.py`` and ``finetune.py``, and the search they run."""

from __future__ import annotations

import argparse
import os

from inat_keras.cli.report import report_after_search
from inat_keras.cli.run import start_tensorflow
from inat_keras.cli.values import positive_int
from inat_keras.config import RunConfig
from inat_keras.errors import UserError
from inat_keras.search.record import SearchSettings
from inat_keras.search.space import TUNERS, pinned_by_flags, resolve_space


def add_search_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameter search (KerasTuner)")
    group.add_argument(
        "--tuner", choices=TUNERS, help="search hyperparameters instead of training one configuration (default: no search)"
    )
    group.add_argument("--max-trials", type=positive_int, default=20, help="trials to run (default 20); caps hyperband too")
    group.add_argument("--executions-per-trial", type=positive_int, default=1, help="trainings averaged per trial (default 1)")
    group.add_argument(
        "--search-space",
        metavar="FILE",
        help="JSON or YAML overriding entries of the default space (null removes one; default: the default space)",
    )
    group.add_argument("--no-retrain", dest="retrain", action="store_false", help="do not retrain the best configuration")


def search_command(
    args: argparse.Namespace, config: RunConfig, pinned: set[str] | None = None, *, command: str | None = None
) -> int:
    """``--tuner``: the search the flags describe; flags given explicitly fix their hyperparameters.

    ``command``: the command as typed, which continues the search after an interrupt.
    """
    if args.resume:
        raise UserError("--resume with --tuner: a search continues when you re-run its own command (same --name)")
    if args.name is None:
        config.name = f"{config.kind}-search-{args.tuner}"  # so that re-running the command resumes it
    pinned = pinned_by_flags(args, config.kind) if pinned is None else pinned
    settings = SearchSettings(
        tuner=args.tuner,
        max_trials=args.max_trials,
        executions_per_trial=args.executions_per_trial,
        space=resolve_space(config.kind, args.search_space, pinned),
        retrain=args.retrain,
    )
    if pinned:
        print(f"fixed by flags: {', '.join(sorted(pinned))}")
    start_tensorflow(verbose=args.verbose)
    from inat_keras.inspection.tracking import track_sweep_analysis
    from inat_keras.search.run import run_search  # after the flags and the quiet start

    result = run_search(config, settings, verbose=0 if args.quiet else "auto", command=command, show_summary=args.verbose)
    if result.role == "worker":
        ran = ", ".join(map(str, result.trials_run)) or "none"
        print(f"{os.environ.get('KERASTUNER_TUNER_ID')} ran trials: {ran}")
        return 0
    for message in result.messages:
        print(message)
    tracked = track_sweep_analysis(result.search_dir, config.tracking)  # beside the trials, in their W&B group
    if tracked:
        print(tracked)
    if result.run is not None:
        for message in result.run.messages:
            print(message)
        print(f"run: {result.run.run_dir}  test accuracy: {result.run.metrics['test_accuracy']:.4f}")
    page = report_after_search(result.search_dir) if args.report else None
    if page is not None:
        retrained = f" (the retrained run's: {result.run.run_dir / 'report.html'})" if result.run is not None else ""
        print(f"report: {page}{retrained}")
    return 0
