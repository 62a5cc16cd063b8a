"""The flag groups the commands share (run, data, training, model), and flags to config dataclasses.

``train_scratch.py`` and ``finetune.py`` build their parsers from the same groups, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from inat_keras.cli.values import (
    cache_target,
    fraction,
    learning_rate,
    non_negative_float,
    non_negative_int,
    parse_classes,
    positive_float,
    positive_int,
    positive_int_list,
    probability,
    seed,
)
from inat_keras.config import (
    ACTIVATIONS,
    AUGMENT_PLACEMENTS,
    AUGMENT_POLICIES,
    CLASS_WEIGHTS,
    DISTRIBUTE_MODES,
    LR_SCALINGS,
    LR_SCHEDULES,
    OPTIMIZERS,
    POOLINGS,
    SWITCHES,
    WANDB_MODES,
    DataConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
)
from inat_keras.errors import UserError
from inat_keras.runs import load_run_config


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The positional model argument and ``--classes``, the same in every command."""
    parser.add_argument("model", help="run directory (runs/<name>) or a .keras file")
    parser.add_argument(
        "--classes",
        type=parse_classes,
        help="class names for a .keras file without config.json: a,b,c or a file (default: the run's config.json)",
    )


REAL_DATA_HINT = (
    "get the real iNaturalist-12K data with `python -m inat_keras download --dest data`, "
    "then train with --data data/inaturalist_12K"
)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--data",
        metavar="DIR",
        help="dataset root with train/<class>/ and val/<class>/, or one folder of class folders (default: none; or --demo)",
    )
    group.add_argument("--demo", action="store_true", help="train on the embedded handwritten-digits demo data")
    group.add_argument("--name", help="run name (default: <kind>-<date>-<time>)")
    group.add_argument("--out", default="runs", help="parent folder of run directories (default: runs)")
    group.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch (default: start a new run)"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars; only the final line")
    group.add_argument(
        "--verbose", action="store_true", help="also print the model summary (in model_summary.txt) and TensorFlow's own log"
    )
    group.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html at the end")
    group.add_argument("--wandb", choices=WANDB_MODES, default="auto", help="W&B mode (default: auto: online with a key)")
    group.add_argument("--wandb-project", default=TrackingConfig.project, help=f"W&B project (default: {TrackingConfig.project})")
    group.add_argument("--wandb-group", default=None, help="W&B group (default: none; a search's name for its trials)")
    group.add_argument(
        "--wandb-log-model", action="store_true", help="also upload best.keras to W&B as a model artifact (default: off)"
    )
    group.add_argument(
        "--tensorboard", action="store_true", help="write TensorBoard logs to <run>/tensorboard/ (tensorboard --logdir <run>)"
    )
    group.add_argument("--tensorboard-histograms", action="store_true", help="--tensorboard, with weight histograms every epoch")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--image-size", type=positive_int, help="square input side in pixels")
    group.add_argument("--val-split", type=fraction, help="fraction of the training images held out for validation")
    group.add_argument(
        "--test-split", type=fraction, help="with a folder of class folders (no train/ + val/): fraction held out as the test set"
    )
    group.add_argument("--seed", type=seed, help="seed of the split, the shuffling and the initial weights")
    group.add_argument("--batch-size", type=positive_int, help="images per training step (per GPU with --distribute)")
    group.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop, flip, colour changes (see --augment-policy)",
    )
    group.add_argument(
        "--augment-placement",
        choices=AUGMENT_PLACEMENTS,
        help="where --augment runs: pipeline (tf.data, CPU), model (first layers, on the GPU); auto (default): model with a GPU",
    )
    group.add_argument(
        "--augment-policy",
        choices=AUGMENT_POLICIES,
        action=AugmentPolicy,
        help="what --augment applies (and turns on, unless --no-augment): basic: crop, flip, rotation, colour jitter; "
        "randaugment, augmix: crop, flip and Keras's RandAugment or AugMix",
    )
    group.add_argument(
        "--randaugment-magnitude", type=probability, help="RandAugment's strength, 0-1, one for all its operations"
    )
    group.add_argument("--randaugment-ops", type=positive_int, help="RandAugment's operations per image")
    group.add_argument(
        "--mixup",
        type=non_negative_float,
        metavar="ALPHA",
        help="MixUp training batches, mixing weights from Beta(ALPHA, ALPHA); 0: off",
    )
    group.add_argument(
        "--cutmix",
        type=non_negative_float,
        metavar="ALPHA",
        help="CutMix training batches (with --mixup: one of the two per batch); 0: off",
    )
    group.add_argument(
        "--random-erasing", type=probability, metavar="P", help="probability of erasing a random rectangle of a training image"
    )
    group.add_argument("--cache", type=cache_target, help="'memory' (default), 'none', or a file path prefix for a disk cache")
    group.add_argument("--skip-bad", action="store_true", default=None, help="train on the usable images when some are broken")


class AugmentPolicy(argparse.Action):
    """``--augment-policy``: also turns ``--augment`` on, unless the command line turned it off."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        setattr(namespace, self.dest, values)
        if getattr(namespace, "augment", None) is None:
            namespace.augment = True


def add_train_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, help="training epochs (finetune.py: both phases together)")
    group.add_argument("--learning-rate", type=learning_rate, help="initial learning rate (of the head, in finetune.py)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help="the optimizer")
    group.add_argument("--momentum", type=fraction, help="SGD momentum")
    group.add_argument("--weight-decay", type=non_negative_float, help="decoupled weight decay (0 with AdamW: 1e-4)")
    group.add_argument("--label-smoothing", type=fraction, help="weight moved from the true class to all classes in the loss")
    group.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, help="learning rate over the epochs: constant, cosine decay, or halved on plateaus"
    )
    group.add_argument("--warmup-epochs", type=non_negative_int, help="linear warm-up epochs before the cosine decay")
    group.add_argument(
        "--early-stopping",
        type=positive_int,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better val accuracy (default: off)",
    )
    group.add_argument("--mixed-precision", choices=SWITCHES, help="auto: on with a GPU, off on a CPU")
    group.add_argument(
        "--jit-compile", choices=SWITCHES, help="XLA; auto: on with a GPU (off for a model holding layers XLA cannot compile)"
    )
    group.add_argument(
        "--distribute", choices=DISTRIBUTE_MODES, help="none (default), mirrored: all local GPUs, multiworker: TF_CONFIG"
    )
    group.add_argument("--lr-scaling", choices=LR_SCALINGS, help="learning rate x replicas: linear (default), sqrt, none")
    group.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        help="balanced: weight each class's loss inversely to its share of the training images; none (default)",
    )
    group.add_argument(
        "--ema",
        type=fraction,
        metavar="DECAY",
        help="validate and keep the exponential moving average of the weights, e.g. 0.999; 0: off",
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="TensorFlow's op determinism: on a CPU a killed and resumed run ends bit-identical to an "
        "uninterrupted one (slower; default: off)",
    )


def add_cnn_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--num-blocks", type=positive_int, help="conv blocks")
    group.add_argument(
        "--filters", type=positive_int_list, help="filters per block, e.g. 32,64,128,256,512 (default: from --first-filters)"
    )
    group.add_argument("--first-filters", type=positive_int, help="filters of block 1 when --filters is not given")
    group.add_argument(
        "--filter-organisation", type=positive_float, help="per-block filter factor: 0.5 halves, 1 keeps, 2 doubles"
    )
    group.add_argument("--kernel-size", type=positive_int_list, help="one size for all blocks, or one per block")
    group.add_argument("--activation", choices=ACTIVATIONS, help="activation of the conv and dense layers")
    group.add_argument(
        "--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="batch normalisation after each convolution"
    )
    group.add_argument("--batch-norm-momentum", type=fraction, help="moving-statistics momentum")
    group.add_argument("--conv-dropout", type=fraction, help="dropout after each conv block")
    group.add_argument("--pooling", choices=POOLINGS, help="flatten (default), or global avg/max pooling")
    group.add_argument("--dense-units", type=positive_int_list, help="units of each dense layer, e.g. 512 or 512,256")
    group.add_argument("--dense-dropout", type=fraction, help="dropout after each dense layer")
    group.add_argument("--l2", type=non_negative_float, help="L2 weight regularisation")


def pick(args: argparse.Namespace, cls: type, defaults: dict[str, Any], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Values for the fields of ``cls``: flag if given, else a demo default, else the dataclass default."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
        elif f.name in defaults:
            values[f.name] = defaults[f.name]
    return values


def run_config_from_args(
    args: argparse.Namespace, *, kind: str, model: dict[str, Any], demo_defaults: dict[str, Any]
) -> RunConfig:
    defaults = demo_defaults if args.demo else {}
    data = DataConfig(**pick(args, DataConfig, defaults))
    data.data_dir = args.data
    name = args.name or f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    return RunConfig(
        name=name,
        kind=kind,
        out=args.out,
        demo=bool(args.demo),
        data=data,
        model=model,
        train=TrainConfig(**pick(args, TrainConfig, defaults)),
        tracking=TrackingConfig(
            wandb=args.wandb,
            project=args.wandb_project,
            group=args.wandb_group,
            log_model=args.wandb_log_model,
            tensorboard=args.tensorboard or args.tensorboard_histograms,
            tensorboard_histograms=args.tensorboard_histograms,
        ),
    )


# What --resume may change: which broken files to skip, and where the run is tracked (and how it prints).
RESUME_OVERRIDES = (
    "skip_bad",
    "wandb",
    "wandb_project",
    "wandb_group",
    "wandb_log_model",
    "tensorboard",
    "tensorboard_histograms",
)
RESUME_PASSTHROUGH = ("resume", "quiet", "verbose", "tuner", "report")


def load_resume_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunConfig:
    """The run's saved settings, with the few flags a resume may change; any other flag is refused.

    A resumed run keeps its model, data and schedule (its checkpoint and optimizer state depend on
    them), so a flag that would change them must not be silently ignored.
    """

    given = [dest for dest, value in vars(args).items() if value != parser.get_default(dest)]
    ignored = [dest for dest in given if dest not in RESUME_OVERRIDES + RESUME_PASSTHROUGH]
    if ignored and not getattr(args, "tuner", None):  # a search refuses --resume itself, more helpfully
        flags = ", ".join("--" + dest.replace("_", "-") for dest in ignored)
        raise UserError(
            f"--resume continues {args.resume} with its saved settings, so {flags} cannot change them: "
            f"drop {'it' if len(ignored) == 1 else 'them'}, or start a new run with another --name "
            f"(--resume accepts only --skip-bad, --wandb*, --tensorboard*, --quiet, --verbose, --no-report)"
        )
    config = load_run_config(args.resume)
    # The run lives where it is now, even if its folder was moved since.
    config.out, config.name = str(Path(args.resume).parent), Path(args.resume).name
    if args.skip_bad:
        config.data.skip_bad = True
    if "wandb" in given:
        config.tracking.wandb = args.wandb
    if "wandb_project" in given:
        config.tracking.project = args.wandb_project
    if "wandb_group" in given:
        config.tracking.group = args.wandb_group
    if args.wandb_log_model:
        config.tracking.log_model = True
    if args.tensorboard or args.tensorboard_histograms:  # a resume may start logging; the steps continue from its epoch
        config.tracking.tensorboard = True
        config.tracking.tensorboard_histograms = config.tracking.tensorboard_histograms or args.tensorboard_histograms
    return config


def require_data(args: argparse.Namespace, doing: str) -> None:
    """Refuse a new run without data; say so when the demo data stands in for iNaturalist."""
    if not args.data and not args.demo:
        raise UserError(f"no dataset given: pass --data DIR, or --demo for the embedded digits; {REAL_DATA_HINT}")
    if args.demo and args.data:
        # --demo also brings the digits' settings (32 px, ...), which would silently shrink a real dataset.
        raise UserError(
            f"--demo and --data {args.data}: pass one; --demo trains on the embedded digits with settings made for them"
        )
    if args.demo:
        print(f"Demo: {doing} on scikit-learn's 1,797 handwritten digits, written as PNG files (not iNaturalist).")


def add_inspection_wandb_arg(parser: argparse.ArgumentParser) -> None:
    """``--wandb`` of the commands that inspect a trained run (evaluate, explain, export)."""
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="W&B mode (default: log to the run's own W&B run if it was trained with W&B, else nothing)",
    )
