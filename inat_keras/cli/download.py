"""``python -m inat_keras download``: fetch and extract iNaturalist-12K, resumably."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inat_keras.data.download import DATASET_URL, download_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inat_keras download", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="data", help="folder to download and extract into (default: data)")
    parser.add_argument("--url", default=DATASET_URL, help="where to fetch the zip from")
    parser.add_argument("--archive", help="extract this local nature_12K.zip instead of downloading")
    parser.add_argument("--delete-archive", action="store_true", help="remove the zip after extraction")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    root = download_dataset(
        args.dest, url=args.url, archive=args.archive, progress=not args.quiet, keep_archive=not args.delete_archive
    )
    print(f"dataset ready: python train_scratch.py --data {root}")
    return 0
