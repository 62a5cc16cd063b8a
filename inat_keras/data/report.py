"""The data check's findings: per-file verdicts, counts per class, imbalance, duplicates, and the report text."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inat_keras.storage import write_json, write_text

REASONS = {
    "zero_bytes": "zero bytes",
    "unreadable": "unreadable",
    "truncated": "truncated",
    "not_an_image": "not an image",
    "unsupported": "unsupported format",
    "too_small": "image too small",
    "too_large": "image too large",
}


# The demo digits are 8x8; smaller images are tracking pixels, icons and placeholders.
MIN_SIDE = 8
# Above this largest / smallest class ratio in the training images, the check suggests --class-weight balanced.
CLASS_WEIGHT_RATIO = 3.0


@dataclass
class Inspection:
    """What reading and decoding one file found (``status`` is "ok" or a ``REASONS`` key)."""

    status: str
    detail: str = ""
    sha256: str = ""
    format: str = ""
    width: int = 0
    height: int = 0


@dataclass
class CheckedFile:
    path: str
    split: str
    label: str
    inspection: Inspection


@dataclass
class DataReport:
    """The outcome of a check; ``to_dict()`` is the ``--json`` report."""

    root: str
    min_side: int
    summary: dict[str, int]
    images_per_class: dict[str, dict[str, int]]
    imbalance: dict[str, dict[str, Any]]
    formats: dict[str, int]
    bad: list[dict[str, str]]
    duplicates: list[dict[str, Any]]
    ignored: list[dict[str, str]]
    seconds: float = 0.0
    checked_now: int = 0

    @property
    def bad_paths(self) -> frozenset[str]:
        return frozenset(entry["path"] for entry in self.bad)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    root: Path,
    files: list[CheckedFile],
    ignored: list[dict[str, str]],
    min_side: int,
    *,
    classes: dict[str, list[str]] | None = None,
) -> DataReport:
    """``classes``: each split's class folders, so a folder with no image file counts too (with 0)."""
    per_class: dict[str, Counter] = defaultdict(Counter)
    for split, labels in (classes or {}).items():
        for label in labels:
            per_class[split][label] += 0
    formats: Counter = Counter()
    bad, usable = [], []
    for file in files:
        per_class[file.split][file.label] += 0  # a class whose images are all unusable still shows, with 0
        status, detail = final_status(file.inspection, min_side)
        if status == "ok":
            per_class[file.split][file.label] += 1
            formats[file.inspection.format] += 1
            usable.append(file)
        else:
            bad.append({"path": file.path, "split": file.split, "class": file.label, "reason": REASONS[status], "detail": detail})
    duplicates = find_duplicates(usable)
    summary = {
        "images": len(files),
        "usable": len(usable),
        "unusable": len(bad),
        "ignored": len(ignored),
        "classes": len({file.label for file in files}),
        "duplicate_groups": len(duplicates),
        "duplicate_groups_across_splits": sum(1 for group in duplicates if "+" in group["splits"]),
    }
    return DataReport(
        root=str(root),
        min_side=min_side,
        summary=summary,
        images_per_class={split: dict(sorted(counts.items())) for split, counts in per_class.items()},
        imbalance={split: imbalance(counts) for split, counts in per_class.items()},
        formats=dict(formats.most_common()),
        bad=bad,
        duplicates=duplicates,
        ignored=ignored,
    )


def imbalance(counts: Counter) -> dict[str, Any]:
    largest, smallest = max(counts.items(), key=lambda kv: kv[1]), min(counts.items(), key=lambda kv: kv[1])
    ratio = round(largest[1] / smallest[1], 3) if smallest[1] else None
    return {"largest": list(largest), "smallest": list(smallest), "ratio": ratio}


def find_duplicates(files: list[CheckedFile]) -> list[dict[str, Any]]:
    """Groups of files with identical bytes; ``splits`` "train+val" means test-set leakage."""
    groups: dict[str, list[CheckedFile]] = defaultdict(list)
    for file in files:
        groups[file.inspection.sha256].append(file)
    found = []
    for sha256, members in groups.items():
        if len(members) < 2:
            continue
        splits = "+".join(sorted({member.split for member in members}, key=("train", "val", "all").index))
        classes = sorted({member.label for member in members})
        found.append({"sha256": sha256, "splits": splits, "classes": classes, "paths": [m.path for m in members]})
    # Leakage across splits first: it is the one that makes test accuracy wrong.
    return sorted(found, key=lambda group: ("+" not in group["splits"], group["paths"][0]))


# -- the report as text -------------------------------------------------------------------------


def format_report(report: DataReport, *, limit: int | None = 20) -> str:
    """The report for a terminal; ``limit`` lines per list (None: all)."""
    root = Path(report.root)
    rel = lambda path: os.path.relpath(path, root)
    shown = lambda items: items if limit is None else items[:limit]
    more = lambda items: (
        [f"  ... and {len(items) - limit} more (all of them are in the --json report)"]
        if limit is not None and len(items) > limit
        else []
    )
    s = report.summary
    lines = [f"data check of {root}: {s['images']} images in {s['classes']} classes"]
    if "all" in report.images_per_class:
        lines.append("layout: one folder of class folders; training splits it into train / validation / test (--test-split)")
    else:
        lines.append("layout: train/ + val/ (val/ is the test set)")

    splits = list(report.images_per_class)
    classes = sorted({label for counts in report.images_per_class.values() for label in counts})
    width = max([len("class")] + [len(label) for label in classes])
    lines += ["", "usable images per class:", "  " + "class".ljust(width) + "".join(f"{split:>8}" for split in splits)]
    for label in classes:
        lines.append(
            "  " + label.ljust(width) + "".join(f"{report.images_per_class[split].get(label, 0):>8}" for split in splits)
        )
    for split, info in report.imbalance.items():
        ratio = "a class has no usable image" if info["ratio"] is None else f"{info['ratio']:.2f}"
        largest, smallest = info["largest"], info["smallest"]
        lines.append(
            f"class imbalance in {split} (largest / smallest): {ratio} ({largest[0]} {largest[1]}, {smallest[0]} {smallest[1]})"
        )
        if split != "val" and info["ratio"] is not None and info["ratio"] > CLASS_WEIGHT_RATIO:
            lines.append(
                f"  the largest class has more than {CLASS_WEIGHT_RATIO:g}x the images of the smallest: "
                "train with --class-weight balanced so the small classes count as much in the loss"
            )
    if report.formats:
        lines.append("formats: " + ", ".join(f"{name or '?'} {count}" for name, count in report.formats.items()))

    lines += ["", f"duplicates (identical bytes): {len(report.duplicates)} group(s)"]
    for group in shown(report.duplicates):
        where = "ACROSS SPLITS (test leakage)" if "+" in group["splits"] else f"within {group['splits']}"
        conflict = f", classes differ: {', '.join(group['classes'])}" if len(group["classes"]) > 1 else ""
        lines.append(f"  {where}{conflict}: " + " = ".join(rel(path) for path in group["paths"]))
    lines += more(report.duplicates)

    lines += ["", f"unusable files: {len(report.bad)}"]
    lines += [f"  {rel(entry['path'])}: {entry['reason']} ({entry['detail']})" for entry in shown(report.bad)]
    lines += more(report.bad)

    lines += ["", f"ignored (not read by training): {len(report.ignored)}"]
    lines += [f"  {rel(entry['path'])}: {entry['reason']}" for entry in shown(report.ignored)]
    lines += more(report.ignored)

    lines += ["", summary_line(report)]
    return "\n".join(lines)


def summary_line(report: DataReport) -> str:
    s = report.summary
    reasons = Counter(entry["reason"] for entry in report.bad)
    why = f" ({', '.join(f'{n} {reason}' for reason, n in reasons.most_common())})" if reasons else ""
    return (
        f"summary: {s['images']} images, {s['usable']} usable, {s['unusable']} unusable{why}, "
        f"{s['duplicate_groups']} duplicate group(s) ({s['duplicate_groups_across_splits']} across splits), "
        f"{s['ignored']} ignored file(s); {report.checked_now} decoded now, {s['images'] - report.checked_now} from the cache"
    )


# -- before training ----------------------------------------------------------------------------


def write_report(report: DataReport, folder: Path, stem: str) -> Path:
    """``<stem>.txt`` (complete) and ``<stem>.json`` in ``folder``; returns the text file."""
    text = folder / f"{stem}.txt"
    write_text(text, format_report(report, limit=None) + "\n")
    write_json(folder / f"{stem}.json", report.to_dict())
    return text


def final_status(inspection: Inspection, min_side: int) -> tuple[str, str]:
    if inspection.status == "ok" and min(inspection.width, inspection.height) < min_side:
        return "too_small", f"{inspection.width}x{inspection.height} pixels, below the {min_side}-pixel minimum"
    return inspection.status, inspection.detail
