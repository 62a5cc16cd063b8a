"""The flag groups the commands share (run, data, training, model), and flags to config dataclasses.

``train_scratch.py`` and ``finetune.py`` build their parsers from the same groups, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from inat_keras.config import (
    ACTIVATIONS,
    AUGMENT_PLACEMENTS,
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
        "--classes", type=parse_classes, help="class names for a .keras file without config.json: a,b,c or a file"
    )


REAL_DATA_HINT = (
    "get the real iNaturalist-12K data with `python -m inat_keras download --dest data`, "
    "then train with --data data/inaturalist_12K"
)


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers like 32,64,128") from None


def add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--data", metavar="DIR", help="dataset root with train/<class>/ and val/<class>/")
    group.add_argument("--demo", action="store_true", help="train on the embedded handwritten-digits demo data")
    group.add_argument("--name", help="run name (default: <kind>-<date>-<time>)")
    group.add_argument("--out", default="runs", help="parent folder of run directories (default: runs)")
    group.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    group.add_argument("--quiet", action="store_true", help="no progress bars; only the final line")
    group.add_argument("--wandb", choices=WANDB_MODES, default="auto", help="W&B mode (default: online with a key, else offline)")
    group.add_argument("--wandb-project", default=TrackingConfig.project)
    group.add_argument("--wandb-group", default=None)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--image-size",
        type=int,
        help=f"square input side in pixels (default {DataConfig.image_size}; finetune.py: the backbone's native size)",
    )
    group.add_argument("--val-split", type=float, help="fraction of train/ held out for validation (default 0.2)")
    group.add_argument("--seed", type=int, help="seed of the split, the shuffling and the initial weights (default 42)")
    group.add_argument("--batch-size", type=int)
    group.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=None, help="random crop, flip, rotation, colour jitter"
    )
    group.add_argument(
        "--augment-placement",
        choices=AUGMENT_PLACEMENTS,
        help="where --augment runs: pipeline (tf.data, CPU), model (first layers, on the GPU); auto (default): model with a GPU",
    )
    group.add_argument("--cache", help="'memory' (default), 'none', or a file path prefix for a disk cache")
    group.add_argument("--skip-bad", action="store_true", default=None, help="train on the usable images when some are broken")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int)
    group.add_argument("--learning-rate", type=float)
    group.add_argument("--optimizer", choices=OPTIMIZERS)
    group.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    group.add_argument("--weight-decay", type=float, help="decoupled weight decay (default 0, AdamW 1e-4; finetune.py 0.05)")
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    group.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs before the cosine decay")
    group.add_argument(
        "--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without a better val accuracy"
    )
    group.add_argument("--mixed-precision", choices=SWITCHES, help="auto: on with a GPU, off on a CPU")
    group.add_argument(
        "--jit-compile", choices=SWITCHES, help="XLA; auto: on with a GPU (off for a model holding layers XLA cannot compile)"
    )
    group.add_argument(
        "--distribute", choices=DISTRIBUTE_MODES, help="none (default), mirrored: all local GPUs, multiworker: TF_CONFIG"
    )
    group.add_argument("--lr-scaling", choices=LR_SCALINGS, help="learning rate x replicas: linear (default), sqrt, none")


def add_cnn_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--num-blocks", type=int, help="conv blocks (default 5)")
    group.add_argument("--filters", type=int_list, help="filters per block, e.g. 32,64,128,256,512")
    group.add_argument("--first-filters", type=int, help="filters of block 1 when --filters is not given (default 32)")
    group.add_argument("--filter-organisation", type=float, help="per-block filter factor: 0.5 halves, 1 keeps, 2 doubles")
    group.add_argument("--kernel-size", type=int_list, help="one size for all blocks, or one per block")
    group.add_argument("--activation", choices=ACTIVATIONS)
    group.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--batch-norm-momentum", type=float, help="moving-statistics momentum (default 0.99)")
    group.add_argument("--conv-dropout", type=float)
    group.add_argument("--pooling", choices=POOLINGS, help="flatten (default), or global avg/max pooling")
    group.add_argument("--dense-units", type=int_list, help="units of each dense layer, e.g. 512 or 512,256")
    group.add_argument("--dense-dropout", type=float)
    group.add_argument("--l2", type=float, help="L2 weight regularisation")


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
        tracking=TrackingConfig(wandb=args.wandb, project=args.wandb_project, group=args.wandb_group),
    )


# What --resume may change: which broken files to skip, and where the run is tracked (and how it prints).
RESUME_OVERRIDES = ("skip_bad", "wandb", "wandb_project", "wandb_group")
RESUME_PASSTHROUGH = ("resume", "quiet", "tuner")


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
            f"(--resume accepts only --skip-bad, --wandb*, --quiet)"
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


def parse_classes(value: str) -> list[str]:
    """``--classes``: a comma-separated list, or a text file with one class name per line."""
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in value.split(",")]
    names = [name for name in names if name]
    if not names:
        raise UserError(f"--classes {value!r} names no classes: give them as a,b,c or a file with one per line")
    return names
