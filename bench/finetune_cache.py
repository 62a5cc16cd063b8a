"""Head-only fine-tuning: the frozen-backbone feature cache against running the backbone every epoch.

Two complete ``train_run``s of the same head-only transfer run (``--unfreeze 0``, no augmentation,
``weights=None`` so nothing is downloaded), on the embedded digits demo data or ``--data DIR``:

- cached: the backbone runs once over the training and validation images, the head trains on
  the pooled features (``TransferConfig.feature_cache=True``, the default);
- every epoch: the whole image model trains with its backbone frozen (``feature_cache=False``).

Both times are wall-clock seconds of the whole run (data check, model build, feature
extraction, every epoch, the test evaluation). The last line is
``cached_seconds=A every_epoch_seconds=B speedup=B/A``.

    python bench/finetune_cache.py --backbone mobilenetv2 --image-size 96 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def head_only_run(args: argparse.Namespace, out: str, *, feature_cache: bool):
    from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig

    return RunConfig(
        name="cached" if feature_cache else "every-epoch",
        kind="transfer",
        out=out,
        demo=args.data is None,
        data=DataConfig(data_dir=args.data, image_size=args.image_size, batch_size=args.batch_size),
        model={"backbone": args.backbone, "weights": None, "unfreeze": 0, "feature_cache": feature_cache},
        train=TrainConfig(epochs=args.epochs),
        tracking=TrackingConfig(wandb="off"),
    )


def timed_run(config) -> tuple[float, float]:
    from inat_keras.training.loop import train_run

    start = time.perf_counter()
    result = train_run(config, verbose=0, log=lambda line: None)
    return time.perf_counter() - start, result.metrics["val_accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--data", help="dataset root (default: the embedded digits demo)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as out:
        # Every-epoch first, so any first-use cost (demo data written, data check) is not the cache's gain.
        every_epoch, every_val = timed_run(head_only_run(args, out, feature_cache=False))
        cached, cached_val = timed_run(head_only_run(args, out, feature_cache=True))
    print(f"{args.backbone} at {args.image_size} px, {args.epochs} epochs, head only:")
    print(f"  every epoch through the backbone: {every_epoch:7.1f} s  (best val accuracy {every_val:.3f})")
    print(f"  features cached once:             {cached:7.1f} s  (best val accuracy {cached_val:.3f})")
    print(f"cached_seconds={cached:.1f} every_epoch_seconds={every_epoch:.1f} speedup={every_epoch / cached:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
