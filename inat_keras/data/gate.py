"""The data check as the gate before training: refuse unusable images unless ``--skip-bad``, record the report."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from inat_keras.data.check import cache_dir, check_dataset, dataset_key
from inat_keras.data.files import DatasetSplit, LabelledFiles, discover_dataset
from inat_keras.data.report import DataReport, write_report
from inat_keras.errors import UserError
from inat_keras.runs import DATA_CHECK_FILE, SKIPPED_FILE, SPLIT_FILE
from inat_keras.storage import write_csv, write_json


def check_before_training(data_dir: str, *, skip_bad: bool, log: Callable[[str], None] = print) -> DataReport:
    """Run the (cached) check; refuse unusable files unless ``skip_bad``.

    The report goes to the cache folder, since the run directory may not exist yet.
    """
    root = Path(data_dir)

    def announce(done: int, total: int) -> None:
        if done == 1 and total >= 100:
            log(f"data check: decoding {total} new or changed image(s) in {root} once; later runs use the cache")

    report = check_dataset(root, progress=announce)
    try:
        report_file = write_report(report, cache_dir(), f"{dataset_key(root)}.report")
    except OSError:
        report_file = None
    s = report.summary
    if report.checked_now:
        log(f"data check: decoded {report.checked_now} image(s) in {report.seconds:.1f} s (cached for next time)")
    if report.bad:
        reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(e["reason"] for e in report.bad).most_common())
        where = f"see {report_file}" if report_file else f"run `python -m inat_keras check-data {root}`"
        if not skip_bad:
            raise UserError(
                f"{s['unusable']} of {s['images']} images in {root} are unusable ({reasons}): {where}; "
                f"fix or remove them, or pass --skip-bad to train on the {s['usable']} usable images"
            )
        log(f"skipping {s['unusable']} unusable image(s) ({reasons}); {where}")
    if s["duplicate_groups_across_splits"]:
        log(
            f"warning: {s['duplicate_groups_across_splits']} image(s) appear in both train/ and val/ "
            f"(test-set leakage): see `python -m inat_keras check-data {root}`"
        )
    return report


def record_in_run(report: DataReport, run_dir: Path) -> None:
    """The check's report beside the run, and ``skipped-images.csv`` when files were skipped."""
    write_json(run_dir / DATA_CHECK_FILE, report.to_dict())
    if report.bad:
        rows = [(entry["path"], entry["reason"], entry["detail"]) for entry in report.bad]
        write_csv(run_dir / SKIPPED_FILE, ("path", "reason", "detail"), rows)


def usable_split(
    split: DatasetSplit,
    bad_paths: frozenset[str],
    *,
    skip_bad: bool,
    run_dir: Path,
    log: Callable[[str], None] = print,
) -> DatasetSplit:
    """``split`` without ``bad_paths``: a resumed run drops files that went bad since it started.

    Files deleted since then are refused (or dropped with ``skip_bad``) here, before training:
    the data check only sees the files that are there, and a missing one would stop tf.data
    mid-epoch.
    """
    listed = [*split.train.paths, *split.validation.paths, *split.test.paths]
    missing = [path for path in listed if path not in bad_paths and not os.path.isfile(path)]
    if missing and not skip_bad:
        raise UserError(
            f"{len(missing)} image(s) in {Path(run_dir) / SPLIT_FILE} no longer exist (the first: {missing[0]}): "
            f"restore them, or resume with --skip-bad to continue without them"
        )
    if missing:
        log(f"skipping {len(missing)} image(s) deleted since the run started (the first: {missing[0]})")
    dropped = bad_paths | frozenset(missing)

    def keep(files: LabelledFiles) -> LabelledFiles:
        kept = [(path, label) for path, label in zip(files.paths, files.labels, strict=True) if path not in dropped]
        return LabelledFiles([path for path, _ in kept], [label for _, label in kept])

    return DatasetSplit(split.class_names, keep(split.train), keep(split.validation), keep(split.test))


def training_layout_problem(root: Path, report: DataReport) -> str | None:
    """Why training would refuse the folder layout even when every image is usable, if it would."""
    try:
        discover_dataset(root, exclude=report.bad_paths)
    except UserError as error:
        return str(error)
    return None
