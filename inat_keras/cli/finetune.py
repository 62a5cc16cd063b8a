"""``finetune.py``: fine-tune an ImageNet backbone on a folder-per-class dataset.

The defaults are the documented best practice for fine-tuning (see README, "Part B"); every one
of them is a flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from inat_keras.cli.flags import (
    add_data_args,
    add_run_args,
    add_train_args,
    int_list,
    load_resume_config,
    pick,
    require_data,
    run_config_from_args,
)
from inat_keras.cli.search import add_search_args, search_command
from inat_keras.cli.train import train_and_report
from inat_keras.config import TransferConfig, architecture
from inat_keras.models.backbones import BACKBONES, get_backbone, parse_unfreeze
from inat_keras.search.space import pinned_by_flags

# Real data on a GPU: two-phase fine-tuning of the whole network, regularised (README, "Part B").
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "augment": True,
    "optimizer": "adamw",
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
    "lr_schedule": "cosine",
    "warmup_epochs": 1,
}

# The 8x8 digits on a 2-core CPU: a small input, few epochs, the cheapest backbone (about a minute).
DEMO_DEFAULTS: dict[str, Any] = {
    **FINETUNE_DEFAULTS,
    "backbone": "mobilenetv2",
    "image_size": 32,
    "epochs": 6,
    "head_epochs": 1,
    "augment": False,
    "warmup_epochs": 0,
    "finetune_lr_factor": 0.5,
}


def add_transfer_args(parser: argparse.ArgumentParser) -> None:

    group = parser.add_argument_group("backbone and head")
    group.add_argument("--backbone", choices=list(BACKBONES), help=f"ImageNet backbone (default {TransferConfig.backbone})")
    group.add_argument("--weights", help="'imagenet' (default, downloaded once by Keras), 'none', or a local no-top weights file")
    group.add_argument("--unfreeze", help="backbone layers to train, from the top: 0 (head only), K, or 'all' (default)")
    group.add_argument(
        "--two-phase",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the head first, then unfreeze (default on)",
    )
    group.add_argument("--head-epochs", type=int, help=f"epochs of the head-only phase (default {TransferConfig.head_epochs})")
    group.add_argument(
        "--finetune-lr-factor",
        type=float,
        help=f"learning rate of backbone training relative to --learning-rate (default {TransferConfig.finetune_lr_factor})",
    )
    group.add_argument(
        "--head-dropout", dest="dropout", type=float, help=f"dropout before the classifier (default {TransferConfig.dropout})"
    )
    group.add_argument(
        "--head-dense-units", dest="dense_units", type=int_list, help="optional dense layer(s) in the head, e.g. 512"
    )
    group.add_argument(
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --unfreeze 0 and no augmentation, run the backbone once (default on)",
    )


def fill_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Flags the user left out take the fine-tuning defaults (the shared dataclass defaults suit scratch CNNs)."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def transfer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every TransferConfig setting, given or default, so config.json records the whole model."""
    model = architecture(TransferConfig(**pick(args, TransferConfig, {})))
    if str(model["weights"]).lower() == "none":
        model["weights"] = None
    model["unfreeze"] = parse_unfreeze(model["unfreeze"])
    return model


def describe(defaults: dict[str, Any]) -> str:
    return ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in defaults.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description="Fine-tune an ImageNet backbone (keras.applications) on a folder-per-class dataset.",
        epilog="Defaults for a flag left out: "
        + describe(FINETUNE_DEFAULTS)
        + "; --image-size: the backbone's native size. With --demo: "
        + describe(DEMO_DEFAULTS)
        + ".",
    )
    add_run_args(parser)
    add_data_args(parser)
    add_transfer_args(parser)
    add_train_args(parser)

    add_search_args(parser)
    args = parser.parse_args(argv)
    pinned = pinned_by_flags(args, "transfer")  # before the fine-tuning defaults fill in the flags left out

    if args.resume:
        config = load_resume_config(args, parser)
    else:
        require_data(args, "fine-tuning")
        fill_defaults(args, DEMO_DEFAULTS if args.demo else FINETUNE_DEFAULTS)

        backbone = get_backbone(args.backbone or TransferConfig.backbone)
        args.backbone = backbone.name
        if args.image_size is None:
            args.image_size = backbone.input_size  # the resolution its ImageNet weights were trained at
        config = run_config_from_args(args, kind="transfer", model=transfer_settings(args), demo_defaults={})
    if args.tuner:
        return search_command(args, config, pinned)
    return train_and_report(config, args)
