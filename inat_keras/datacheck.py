"""The data check: every image of a dataset decoded once, before any training.

``python -m inat_keras check-data DIR [--json FILE]`` prints images per class and split, the
class imbalance, duplicates (same bytes) within and across splits, every unusable file with
its reason, and the non-image files that were ignored. Training runs the same check first, so
a broken file stops a run before it starts instead of crashing tf.data hours into it.

Each file is decoded by the decoder training uses for it (TensorFlow's for plain JPEGs,
``data.decodes_natively``; Pillow's ``data.to_rgb`` for the rest), so a file that passes here
decodes in training. Verdicts are cached by path, size and modification time in
``cache_home()/datacheck/``: the second check only stats the files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import data as data_lib
from .errors import UserError
from .io import read_json, write_csv, write_json, write_text

# The demo digits are 8x8; smaller images are tracking pixels, icons and placeholders.
MIN_SIDE = 8
# Decoding JPEGs at a reduced DCT scale still reads every byte, so truncation is found, at a fraction of the cost.
DRAFT_SIDE = 32
CACHE_VERSION = 2  # 2: plain JPEGs checked with TensorFlow's decoder, as training reads them
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "icon\r"})
REASONS = {
    "zero_bytes": "zero bytes",
    "unreadable": "unreadable",
    "truncated": "truncated",
    "not_an_image": "not an image",
    "unsupported": "unsupported format",
    "too_small": "image too small",
    "too_large": "image too large",
}
ProgressCallback = Callable[[int, int], None]


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


# -- finding the files ----------------------------------------------------------------------


def dataset_splits(root: Path) -> list[tuple[str, Path]]:
    """``train/`` and ``val/`` when present; otherwise ``root`` itself holds the class folders."""
    splits = [(name, root / name) for name in ("train", "val") if (root / name).is_dir()]
    return splits or [("all", root)]


def ignore_reason(path: str) -> str:
    name = os.path.basename(path)
    lowered = name.lower()
    if lowered in SYSTEM_FILES or lowered.startswith("._"):
        return "system file"
    if name.startswith("."):
        return "hidden"
    reason = f"not an image name ({Path(lowered).suffix or 'no extension'})"
    fmt = image_format(path)
    return f"{reason}, but a {fmt} image: rename it to .{fmt.lower()} to use it" if fmt else reason


def image_format(path: str) -> str:
    """The format Pillow reads from a file's first bytes (no decoding), or "" when it is no image."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")
            return image.format or ""
    except Exception:  # not an image, unreadable, or a format Pillow refuses: all mean "not usable as is"
        return ""


def list_ignored(folder: Path) -> list[dict[str, str]]:
    """Every file under a split folder that training will not read, with why."""
    ignored = []
    for dirpath, dirnames, filenames in os.walk(folder):
        top = Path(dirpath) == folder
        hidden = [d for d in dirnames if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(hidden):
            count = sum(len(files) for _, _, files in os.walk(os.path.join(dirpath, name)))
            ignored.append({"path": os.path.join(dirpath, name), "reason": f"hidden folder ({count} files)"})
        for name in sorted(filenames):
            if top and data_lib.is_image_name(Path(name)):
                ignored.append({"path": os.path.join(dirpath, name), "reason": "outside the class folders"})
            elif not data_lib.is_image_name(Path(name)):
                ignored.append({"path": os.path.join(dirpath, name), "reason": ignore_reason(os.path.join(dirpath, name))})
    return ignored


def list_dataset_files(root: Path) -> tuple[list[tuple[str, str, str]], list[dict[str, str]]]:
    """(path, split, class) of every file training would read, and the files it ignores.

    Image files are listed by ``data.list_class_images``, the function training uses, so the
    paths here are the exact strings of a run's ``split.csv``.
    """
    candidates, ignored = [], []
    for split, folder in dataset_splits(root):
        for label, paths in data_lib.list_class_images(folder).items():
            candidates.extend((path, split, label) for path in paths)
        ignored.extend(list_ignored(folder))
    return candidates, ignored


# -- one file ---------------------------------------------------------------------------------


def sniff_other_format(head: bytes) -> tuple[str, str]:
    """Name what a file Pillow cannot open probably is, from its first bytes."""
    lowered = head[:1024].lower().lstrip()
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "unsupported", "HEIC/HEIF photo (convert it to JPEG)"
    if brand in (b"avif", b"avis"):
        return "unsupported", "AVIF image this Pillow cannot decode (convert it to JPEG)"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "unsupported", "JPEG XL image (convert it to JPEG)"
    if lowered.startswith(b"<svg") or (lowered.startswith(b"<?xml") and b"<svg" in lowered):
        return "unsupported", "SVG drawing (render it to PNG)"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "not_an_image", "an HTML page, usually a failed download"
    if head.startswith(b"%PDF"):
        return "not_an_image", "a PDF document"
    if brand:
        return "not_an_image", "a video or other media file"
    return "not_an_image", "Pillow cannot identify its format"


def decode_problem(error: Exception) -> tuple[str, str]:
    text = str(error) or type(error).__name__
    if "truncated" in text.lower():
        return "truncated", text
    if "not available" in text or "unsupported" in text.lower():
        return "unsupported", text
    return "unreadable", text


def inspect_bytes(content: bytes) -> Inspection:
    """Decode ``content`` exactly as training will; never raises."""
    from PIL import Image, UnidentifiedImageError

    if not content:
        return Inspection("zero_bytes", "an empty file")
    sha256 = hashlib.sha256(content).hexdigest()
    try:
        with Image.open(io.BytesIO(content)) as image:
            fmt, (width, height) = image.format or "", image.size
            native = data_lib.decodes_natively(image)  # before draft, which may change what the header says
            image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
            if native:
                try:
                    data_lib.verify_jpeg(content)
                except ValueError:
                    data_lib.to_rgb(image)  # Pillow's reason (truncated, say) when it fails too
                    raise
            else:
                data_lib.to_rgb(image)
    except UnidentifiedImageError:
        status, detail = sniff_other_format(content[:1024])
        return Inspection(status, detail, sha256)
    except Image.DecompressionBombError as error:
        return Inspection("too_large", str(error), sha256)
    except Exception as error:  # any decoder failure is a verdict on the file, never a crash
        status, detail = decode_problem(error)
        return Inspection(status, detail, sha256)
    return Inspection("ok", "", sha256, fmt, width, height)


def inspect_file(path: str) -> Inspection:
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as error:
        return Inspection("unreadable", error.strerror or str(error))
    return inspect_bytes(content)


# -- the cache --------------------------------------------------------------------------------


def cache_dir() -> Path:
    from .demo import cache_home

    return cache_home() / "datacheck"


def dataset_key(root: Path) -> str:
    resolved = root.resolve()
    return f"{resolved.name or 'root'}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"


def cache_stamp() -> str:
    # A newer Pillow may decode what an older one could not (AVIF, say): re-check then.
    import PIL

    return f"{CACHE_VERSION}/{PIL.__version__}"


def load_cache(path: Path) -> dict[str, list]:
    """The cached verdicts, or nothing when the cache is missing, stale or damaged."""
    try:
        raw = read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("stamp") != cache_stamp() or not isinstance(raw.get("files"), dict):
        return {}
    return raw["files"]


def save_cache(path: Path, entries: dict[str, list]) -> None:
    try:
        write_json(path, {"stamp": cache_stamp(), "files": entries})
    except OSError:
        pass  # the cache only saves time; a read-only home must not fail the check


# -- the check --------------------------------------------------------------------------------


def inspect_all(
    paths: Sequence[str], *, cache_path: Path | None, workers: int | None, progress: ProgressCallback | None
) -> tuple[dict[str, Inspection], int]:
    """Verdicts for ``paths`` (from the cache where size and mtime match) and how many were decoded."""
    cached = load_cache(cache_path) if cache_path else {}
    entries: dict[str, list] = {}
    verdicts: dict[str, Inspection] = {}
    todo: list[tuple[str, str, os.stat_result]] = []
    for path in paths:
        key = os.path.abspath(path)
        try:
            stat = os.stat(path)
        except OSError as error:
            verdicts[path] = Inspection("unreadable", error.strerror or str(error))
            continue
        hit = cached.get(key)
        if hit and hit[:2] == [stat.st_size, stat.st_mtime_ns]:
            verdicts[path], entries[key] = Inspection(*hit[2:]), hit
        else:
            todo.append((path, key, stat))

    pool = ThreadPoolExecutor(max_workers=workers or data_lib.usable_cores(), thread_name_prefix="datacheck")
    try:
        # Pillow and hashlib release the GIL while decoding and hashing, so threads run in parallel.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            futures: dict[Future, tuple[str, str, os.stat_result]] = {
                pool.submit(inspect_file, path): (path, key, stat) for path, key, stat in todo
            }
            for done, future in enumerate(as_completed(futures), 1):
                path, key, stat = futures[future]
                verdict = future.result()
                verdicts[path] = verdict
                entries[key] = [stat.st_size, stat.st_mtime_ns, *asdict(verdict).values()]
                if progress:
                    progress(done, len(todo))
    finally:
        # Ctrl-C: drop the queue, and keep what was checked so far for next time.
        pool.shutdown(wait=True, cancel_futures=True)
        if cache_path and (todo or len(entries) != len(cached)):
            save_cache(cache_path, entries)
    return verdicts, len(todo)


def final_status(inspection: Inspection, min_side: int) -> tuple[str, str]:
    if inspection.status == "ok" and min(inspection.width, inspection.height) < min_side:
        return "too_small", f"{inspection.width}x{inspection.height} pixels, below the {min_side}-pixel minimum"
    return inspection.status, inspection.detail


def check_dataset(
    root: str | os.PathLike,
    *,
    min_side: int = MIN_SIDE,
    workers: int | None = None,
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> DataReport:
    """Check every file of the dataset at ``root`` and summarise what training would see."""
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist: pass a folder with train/<class>/ and val/<class>/ inside")
    candidates, ignored = list_dataset_files(root)
    cache_path = cache_dir() / f"{dataset_key(root)}.json" if use_cache else None
    verdicts, checked_now = inspect_all(
        [path for path, _, _ in candidates], cache_path=cache_path, workers=workers, progress=progress
    )
    files = [CheckedFile(path, split, label, verdicts[path]) for path, split, label in candidates]
    report = build_report(root, files, ignored, min_side)
    report.seconds, report.checked_now = round(time.perf_counter() - started, 3), checked_now
    return report


def build_report(root: Path, files: list[CheckedFile], ignored: list[dict[str, str]], min_side: int) -> DataReport:
    per_class: dict[str, Counter] = defaultdict(Counter)
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
    more = lambda items: [f"  ... and {len(items) - limit} more (all of them are in the --json report)"] if limit is not None and len(items) > limit else []
    s = report.summary
    lines = [f"data check of {root}: {s['images']} images in {s['classes']} classes"]

    splits = list(report.images_per_class)
    classes = sorted({label for counts in report.images_per_class.values() for label in counts})
    width = max([len("class")] + [len(label) for label in classes])
    lines += ["", "usable images per class:", "  " + "class".ljust(width) + "".join(f"{split:>8}" for split in splits)]
    for label in classes:
        lines.append("  " + label.ljust(width) + "".join(f"{report.images_per_class[split].get(label, 0):>8}" for split in splits))
    for split, info in report.imbalance.items():
        ratio = "a class has no usable image" if info["ratio"] is None else f"{info['ratio']:.2f}"
        lines.append(f"class imbalance in {split} (largest / smallest): {ratio} ({info['largest'][0]} {info['largest'][1]}, {info['smallest'][0]} {info['smallest'][1]})")
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
    write_json(run_dir / "data-check.json", report.to_dict())
    if report.bad:
        rows = [(entry["path"], entry["reason"], entry["detail"]) for entry in report.bad]
        write_csv(run_dir / "skipped-images.csv", ("path", "reason", "detail"), rows)


def usable_split(
    split: data_lib.DatasetSplit,
    bad_paths: frozenset[str],
    *,
    skip_bad: bool,
    run_dir: Path,
    log: Callable[[str], None] = print,
) -> data_lib.DatasetSplit:
    """``split`` without ``bad_paths``: a resumed run drops files that went bad since it started.

    Files deleted since then are refused (or dropped with ``skip_bad``) here, before training:
    the data check only sees the files that are there, and a missing one would stop tf.data
    mid-epoch.
    """
    listed = [*split.train.paths, *split.validation.paths, *split.test.paths]
    missing = [path for path in listed if path not in bad_paths and not os.path.isfile(path)]
    if missing and not skip_bad:
        raise UserError(
            f"{len(missing)} image(s) in {Path(run_dir) / data_lib.SPLIT_FILE} no longer exist (the first: {missing[0]}): "
            f"restore them, or resume with --skip-bad to continue without them"
        )
    if missing:
        log(f"skipping {len(missing)} image(s) deleted since the run started (the first: {missing[0]})")
    dropped = bad_paths | frozenset(missing)

    def keep(files: data_lib.LabelledFiles) -> data_lib.LabelledFiles:
        kept = [(path, label) for path, label in zip(files.paths, files.labels) if path not in dropped]
        return data_lib.LabelledFiles([path for path, _ in kept], [label for _, label in kept])

    return data_lib.DatasetSplit(split.class_names, keep(split.train), keep(split.validation), keep(split.test))


# -- command line ---------------------------------------------------------------------------------


class ProgressLine:
    """``checked N/M images`` on stderr: redrawn in a terminal, every 10% otherwise."""

    def __init__(self, stream=None) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras check-data",
        description="Decode every image of a dataset once and report unusable files, duplicates and class balance. "
        "Exit status 1 when some images are unusable or training would refuse the folder layout.",
    )
    parser.add_argument("dir", metavar="DIR", help="dataset root with train/<class>/ and val/<class>/ (or class folders)")
    parser.add_argument("--json", metavar="FILE", help="also write the complete report as JSON")
    parser.add_argument("--min-size", type=int, default=MIN_SIDE, help=f"smallest usable image side in pixels (default {MIN_SIDE})")
    parser.add_argument("--workers", type=int, help="parallel decoders (default: one per CPU core)")
    parser.add_argument("--no-cache", action="store_true", help="decode every file again, ignoring cached verdicts")
    parser.add_argument("--all", action="store_true", help="list every file in the text report, not the first 20 per section")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    report = check_dataset(
        args.dir,
        min_side=args.min_size,
        workers=args.workers,
        use_cache=not args.no_cache,
        progress=None if args.quiet else ProgressLine(),
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


def training_layout_problem(root: Path, report: DataReport) -> str | None:
    """Why training would refuse a train/ + val/ dataset even when every image is usable, if it would."""
    if not ((root / "train").is_dir() or (root / "val").is_dir()):
        return None  # bare class folders: a layout the check reads but training does not ask for
    try:
        data_lib.discover_dataset(root, exclude=report.bad_paths)
    except UserError as error:
        return str(error)
    return None
