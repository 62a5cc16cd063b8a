"""``finetune.py``: fine-tune an ImageNet backbone on a folder-per-class dataset.

The defaults are the documented best practice for fine-tuning (see README, "Part B"); every one
of them is a flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from inat_keras.cli.defaults import config_defaults, show_defaults
from inat_keras.cli.flags import (
    add_data_args,
    add_run_args,
    add_train_args,
    load_resume_config,
    pick,
    require_data,
    run_config_from_args,
)
from inat_keras.cli.run import typed_command
from inat_keras.cli.search import add_search_args, search_command
from inat_keras.cli.train import refuse_unusable_paths, train_and_report
from inat_keras.cli.values import Parser, fraction, non_negative_int, positive_float, positive_int_list
from inat_keras.config import DataConfig, TrainConfig, TransferConfig, architecture
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
# Random initial weights: the demo runs offline (ImageNet weights are a download, and learnt on photos).
DEMO_DEFAULTS: dict[str, Any] = {
    **FINETUNE_DEFAULTS,
    "backbone": "mobilenetv2",
    "weights": "none",
    "image_size": 32,
    "epochs": 6,
    "head_epochs": 1,
    "augment": False,
    "warmup_epochs": 0,
    "finetune_lr_factor": 0.5,
}


def add_transfer_args(parser: argparse.ArgumentParser) -> None:

    group = parser.add_argument_group("backbone and head")
    group.add_argument("--backbone", choices=list(BACKBONES), help="ImageNet backbone")
    group.add_argument("--weights", help="'imagenet' (downloaded once by Keras), 'none' (random), or a local no-top weights file")
    group.add_argument("--unfreeze", help="backbone layers to train, from the top: 0 (head only), K, or 'all'")
    group.add_argument(
        "--two-phase",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the head first, then unfreeze",
    )
    group.add_argument("--head-epochs", type=non_negative_int, help="epochs of the head-only phase")
    group.add_argument(
        "--finetune-lr-factor",
        type=positive_float,
        help="learning rate of backbone training relative to --learning-rate",
    )
    group.add_argument("--head-dropout", dest="dropout", type=fraction, help="dropout before the classifier")
    group.add_argument(
        "--head-dense-units",
        dest="dense_units",
        type=positive_int_list,
        help="optional dense layer(s) in the head, e.g. 512 (default: none)",
    )
    group.add_argument(
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --unfreeze 0 and no augmentation, run the backbone once",
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


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="finetune.py",
        description="Fine-tune an ImageNet backbone (keras.applications) on a folder-per-class dataset.",
        epilog="Each flag's help names its default, and its value under --demo where that differs.",
    )
    add_run_args(parser)
    add_data_args(parser)
    add_transfer_args(parser)
    add_train_args(parser)

    add_search_args(parser)
    defaults = {**config_defaults(DataConfig, TrainConfig, TransferConfig), **FINETUNE_DEFAULTS}
    defaults["image_size"] = "the backbone's native size"
    show_defaults(parser, defaults, DEMO_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    pinned = pinned_by_flags(args, "transfer")  # before the fine-tuning defaults fill in the flags left out

    if args.resume:
        config = load_resume_config(args, parser)
    else:
        offline = "from random weights (--demo implies --weights none, so nothing is downloaded)"
        if args.demo and args.tuner and args.backbone is None:
            # EfficientNetV2-S and ResNet50 learn nothing from 8x8 digits at 32 px in a few epochs: the demo's backbone stays.
            pinned.add("backbone")
        require_data(args, f"fine-tuning {offline}" if args.demo and args.weights is None else "fine-tuning")
        fill_defaults(args, DEMO_DEFAULTS if args.demo else FINETUNE_DEFAULTS)

        backbone = get_backbone(args.backbone or TransferConfig.backbone)
        args.backbone = backbone.name
        if args.image_size is None:
            args.image_size = backbone.input_size  # the resolution its ImageNet weights were trained at
        config = run_config_from_args(args, kind="transfer", model=transfer_settings(args), demo_defaults={})
    refuse_unusable_paths(config, resume=bool(args.resume))
    if args.tuner:
        return search_command(args, config, pinned, command=typed_command("finetune.py", argv))
    return train_and_report(config, args)
