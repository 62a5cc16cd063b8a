"""``train_scratch.py`` (``inat-keras train-scratch``): train the flexible from-scratch CNN."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inat_keras.cli.defaults import config_defaults, show_defaults
from inat_keras.cli.flags import (
    add_cnn_args,
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
from inat_keras.cli.values import Parser
from inat_keras.config import CNNConfig, DataConfig, TrainConfig

# The digits are 8x8 pictures: a small input and a few epochs suit them.
SCRATCH_DEMO_DEFAULTS = {
    "image_size": 32,
    "epochs": 10,
    "batch_size": 32,
    "dense_units": [128],
    "learning_rate": 2e-3,
    "batch_norm_momentum": 0.9,
}


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="train_scratch.py",
        description="Train the flexible from-scratch CNN on a folder-per-class dataset.",
    )
    add_run_args(parser)
    add_data_args(parser)
    add_cnn_args(parser)
    add_train_args(parser)

    add_search_args(parser)
    show_defaults(parser, config_defaults(DataConfig, TrainConfig, CNNConfig), SCRATCH_DEMO_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)

    if args.resume:
        config = load_resume_config(args, parser)
    else:
        require_data(args, "training")
        model = pick(args, CNNConfig, SCRATCH_DEMO_DEFAULTS if args.demo else {})
        config = run_config_from_args(args, kind="scratch", model=model, demo_defaults=SCRATCH_DEMO_DEFAULTS)
    refuse_unusable_paths(config, resume=bool(args.resume))
    if args.tuner:
        return search_command(args, config, command=typed_command("train_scratch.py", argv))
    return train_and_report(config, args)
