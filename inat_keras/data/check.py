"""The data check: every image of a dataset decoded once, before any training.

``python -m inat_keras check-data DIR [--json FILE]`` prints images per class and split, the
class imbalance, duplicates (same bytes) within and across splits, every unusable file with
its reason, and the non-image files that were ignored. Training runs the same check first, so
a broken file stops a run before it starts instead of crashing tf.data hours into it.

Each file is decoded by the decoder training uses for it (TensorFlow's for plain JPEGs,
``data.native_jpeg_header``; Pillow's ``data.to_rgb`` for the rest), so a file that passes here
decodes in training. Verdicts are cached by path, size and modification time in
``cache_home()/datacheck/``: the second check only stats the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from inat_keras.data.decode import HEADER_BYTES, native_jpeg_header, quiet_size_warning, to_rgb, verify_jpeg
from inat_keras.data.demo import cache_home
from inat_keras.data.files import is_image_name, list_class_images
from inat_keras.data.report import MIN_SIDE, CheckedFile, DataReport, Inspection, build_report
from inat_keras.devices import usable_cores
from inat_keras.errors import UserError
from inat_keras.storage import read_json, write_json

# Decoding JPEGs at a reduced DCT scale still reads every byte, so truncation is found, at a fraction of the cost.
DRAFT_SIDE = 32
CACHE_VERSION = 4  # 2: plain JPEGs checked with TensorFlow's decoder, as training reads them; 3: over Pillow's pixel limit;
# 4: which JPEGs are plain decided from the header bytes (native_jpeg_header)
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "icon\r"})
ProgressCallback = Callable[[int, int], None]


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
        if not top:  # inside a class: os.walk, here and in training, does not follow a link to a folder
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    ignored.append({"path": os.path.join(dirpath, name), "reason": "link to a folder (not followed)"})
        for name in sorted(filenames):
            if top and is_image_name(Path(name)):
                ignored.append({"path": os.path.join(dirpath, name), "reason": "outside the class folders"})
            elif not is_image_name(Path(name)):
                ignored.append({"path": os.path.join(dirpath, name), "reason": ignore_reason(os.path.join(dirpath, name))})
    return ignored


def list_dataset_files(root: Path) -> tuple[list[tuple[str, str, str]], list[dict[str, str]], dict[str, list[str]]]:
    """(path, split, class) of every file training would read, the files it ignores, and each split's class folders.

    Image files are listed by ``data.list_class_images``, the function training uses, so the
    paths here are the exact strings of a run's ``split.csv``.
    """
    candidates: list[tuple[str, str, str]] = []
    ignored: list[dict[str, str]] = []
    classes: dict[str, list[str]] = {}
    for split, folder in dataset_splits(root):
        found = list_class_images(folder)
        classes[split] = list(found)  # with the folders that hold no image file: the worst imbalance
        for label, paths in found.items():
            candidates.extend((path, split, label) for path in paths)
        ignored.extend(list_ignored(folder))
    return candidates, ignored, classes


# -- one file ---------------------------------------------------------------------------------


def sniff_other_format(head: bytes) -> tuple[str, str]:
    """Name what a file Pillow cannot open probably is, from its first bytes."""
    lowered = head[:1024].lower().lstrip()
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "unsupported", "HEIC/HEIF photo (convert it to JPEG)"
    if brand in (b"avif", b"avis"):
        return "unsupported", "AVIF image this Pillow cannot decode (convert it to JPEG)"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
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
    quiet_size_warning()
    try:
        with Image.open(io.BytesIO(content)) as image:
            fmt, (width, height) = image.format or "", image.size
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:  # where Pillow starts to warn
                limit = f"over Pillow's limit of {Image.MAX_IMAGE_PIXELS}"
                return Inspection("too_large", f"{width}x{height} pixels, {limit}", sha256)
            native = native_jpeg_header(content[:HEADER_BYTES])
            image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
            if native:
                try:
                    verify_jpeg(content)
                except ValueError:
                    to_rgb(image)  # Pillow's reason (truncated, say) when it fails too
                    raise
            else:
                to_rgb(image)
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
    # The cache only saves time; a read-only home must not fail the check.
    with contextlib.suppress(OSError):
        write_json(path, {"stamp": cache_stamp(), "files": entries})


# -- the check --------------------------------------------------------------------------------


def inspect_all(
    paths: Sequence[str],
    *,
    cache_path: Path | None,
    workers: int | None,
    progress: ProgressCallback | None,
    before_decoding: Callable[[], None] | None = None,
) -> tuple[dict[str, Inspection], int]:
    """Verdicts for ``paths`` (from the cache where size and mtime match) and how many were decoded.

    ``before_decoding`` runs once before the first file is decoded, and not at all when the cache holds every verdict.
    """
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

    if todo and before_decoding:
        before_decoding()
    pool = ThreadPoolExecutor(max_workers=workers or usable_cores(), thread_name_prefix="datacheck")
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


def check_dataset(
    root: str | os.PathLike,
    *,
    min_side: int = MIN_SIDE,
    workers: int | None = None,
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
    before_decoding: Callable[[], None] | None = None,
) -> DataReport:
    """Check every file of the dataset at ``root`` and summarise what training would see.

    ``before_decoding``: see ``inspect_all`` (the command starts TensorFlow there, which checks the JPEGs).
    """
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data directory {root} does not exist: pass a folder with train/<class>/ and val/<class>/ inside, "
            "or a folder of class folders"
        )
    candidates, ignored, classes = list_dataset_files(root)
    cache_path = cache_dir() / f"{dataset_key(root)}.json" if use_cache else None
    paths = [path for path, _, _ in candidates]
    verdicts, checked_now = inspect_all(
        paths, cache_path=cache_path, workers=workers, progress=progress, before_decoding=before_decoding
    )
    files = [CheckedFile(path, split, label, verdicts[path]) for path, split, label in candidates]
    report = build_report(root, files, ignored, min_side, classes=classes)
    report.seconds, report.checked_now = round(time.perf_counter() - started, 3), checked_now
    return report
