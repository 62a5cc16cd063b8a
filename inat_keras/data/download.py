"""Download and extract the course's iNaturalist-12K archive, resuming a cut-off transfer.

``python -m inat_keras download [--dest data] [--url URL] [--archive FILE]``
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from inat_keras.errors import UserError

DATASET_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
DATASET_FOLDER = "inaturalist_12K"
CHUNK_BYTES = 1 << 20


class Progress:
    """One status line on stderr, redrawn at most a few times a second."""

    def __init__(self, total: int | None, done: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.start, self.start_done, self.last = time.monotonic(), done, 0.0

    def update(self, added: int) -> None:
        self.done += added
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.25 or self.done == self.total):
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-6) / 1e6
            share = (
                f"{100 * self.done / self.total:5.1f}% of {self.total / 1e9:.2f} GB"
                if self.total
                else f"{self.done / 1e6:.1f} MB"
            )
            print(f"\rdownloading {share}  {rate:.1f} MB/s ", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def fetch(url: str, target: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target``, continuing ``target.part`` with an HTTP Range request."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the part file is complete
            part.replace(target)
            return target
        raise UserError(
            f"download of {url} failed (HTTP {error.code}): check --url, or pass a local copy with --archive FILE"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot download {url} ({reason}): check the network, or fetch nature_12K.zip elsewhere "
            "and pass it with --archive FILE"
        ) from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = (have if resumed else 0) + expected if expected is not None else None
        bar = Progress(total, have if resumed else 0, progress)
        received = 0
        with open(part, "ab" if resumed else "wb") as handle:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                bar.close()
                raise UserError(f"download of {url} broke off ({error}): run the same command again to resume") from None
        bar.close()
    if expected is not None and received < expected:
        raise UserError(
            f"download of {url} stopped after {have + received if resumed else received} bytes of {total}: "
            "run the same command again to resume"
        )
    part.replace(target)
    return target


def check_archive(archive: Path, fix: str = "delete it and download again") -> None:
    """Every member's CRC, so a damaged download is caught before extraction."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
    except zipfile.BadZipFile:
        raise UserError(f"{archive} is not a complete zip archive: {fix}") from None
    if broken is not None:
        raise UserError(f"{archive} is damaged ({broken} fails its CRC check): {fix}")


def extract(archive: Path, dest: Path, *, downloaded: bool = True) -> Path:
    """Extract into ``dest`` through a staging folder; returns the dataset root."""
    # Deleting a file the user handed over is no advice; re-downloading our own copy is.
    check_archive(
        archive, "delete it and download again" if downloaded else "give the path of the iNaturalist-12K zip, nature_12K.zip"
    )
    staging = dest / f".extracting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as bundle:
        members = [m for m in bundle.namelist() if not m.startswith("__MACOSX/")]
        bundle.extractall(staging, members)
    roots = [p.parent for p in staging.rglob("train") if p.is_dir() and (p.parent / "val").is_dir()]
    if not roots:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{archive} holds no train/ and val/ folders: is it the iNaturalist-12K archive?")
    root = dest / DATASET_FOLDER
    if root.exists():
        shutil.rmtree(root)
    os.replace(roots[0], root)
    shutil.rmtree(staging, ignore_errors=True)
    return root


def download_dataset(
    dest: str | os.PathLike = "data",
    *,
    url: str = DATASET_URL,
    archive: str | os.PathLike | None = None,
    progress: bool = True,
    keep_archive: bool = True,
) -> Path:
    """Fetch (or take ``archive``), check and extract the dataset; returns ``dest/inaturalist_12K``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    downloaded = archive is None
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise UserError(f"--archive {archive} does not exist: give the path of a downloaded nature_12K.zip")
    else:
        archive = dest / Path(urllib.parse.urlparse(url).path).name
        if not archive.is_file():
            fetch(url, archive, progress=progress)
    root = extract(archive, dest, downloaded=downloaded)
    if not keep_archive and archive.parent == dest:
        archive.unlink()
    return root
