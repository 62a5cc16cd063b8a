"""Test accuracy and training speed of the scratch CNN on the demo digits with each of today's recipes.

Each variant trains ``train_scratch.py --demo``'s CNN (32 px, 10 epochs, batch 32) on the embedded
digits with the basic ``--augment`` stack, plus one recipe, once per seed:

- basic: ``--augment`` (crop, flip, rotation, colour jitter), the baseline;
- randaugment: ``--augment-policy randaugment`` (crop and flip, then Keras's RandAugment, 2 operations at 0.5);
- mixup: basic + ``--mixup 0.2``;   cutmix: basic + ``--cutmix 1.0``;   ema: basic + ``--ema 0.99``;
- augmix and erasing (basic + ``--random-erasing 0.25``) on request (``--variants``).

The seed sets the validation split, the shuffling, the augmentation and the initial weights; the
test set is the digits' own ``val/``. The cost is measured apart, in one process: each variant's
training pipeline and compiled model train ``--steps`` steps after 2 warm-up steps, the variants in
turn, ``--rounds`` times, and the median images/s is reported (augmentation in the tf.data pipeline,
as ``--augment-placement auto`` puts it on a CPU). Interleaving matters on a shared machine: the runs'
own ``metrics.json`` rates, printed per run, moved by 50 % with the load of other processes. The
digits are easy: the table shows that each recipe trains and what it costs, not which one wins on real
photographs. The last line is machine-readable:
``<variant>_test_accuracy_mean=... <variant>_test_accuracy_std=... <variant>_images_per_second=...`` per variant.

    python bench/recipes.py                      # 5 variants x 3 seeds, about 20 minutes on 2 cores
    python bench/recipes.py --variants basic augmix erasing --seeds 0 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import mean, stdev
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Each variant's settings on top of --augment (DataConfig fields, or TrainConfig's "ema").
VARIANTS: dict[str, dict[str, Any]] = {
    "basic": {},
    "randaugment": {"augment_policy": "randaugment"},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "ema": {"ema": 0.99},
    "augmix": {"augment_policy": "augmix"},
    "erasing": {"random_erasing": 0.25},
}
DEFAULT_VARIANTS = ("basic", "randaugment", "mixup", "cutmix", "ema")


def run_config(variant: str, seed: int, args: argparse.Namespace, out: Path) -> Any:
    """The demo's scratch run (``SCRATCH_DEMO_DEFAULTS``) with --augment and the variant's recipe."""
    from inat_keras.cli.train_scratch import SCRATCH_DEMO_DEFAULTS
    from inat_keras.config import CNNConfig, DataConfig, RunConfig, TrackingConfig, TrainConfig

    settings = dict(VARIANTS[variant])
    ema = settings.pop("ema", 0.0)
    demo = SCRATCH_DEMO_DEFAULTS
    model = {field.name: demo[field.name] for field in dataclasses.fields(CNNConfig) if field.name in demo}
    model["batch_norm"] = args.batch_norm
    return RunConfig(
        name=f"{variant}-seed{seed}",
        kind="scratch",
        out=str(out),
        demo=args.data is None,
        data=DataConfig(
            data_dir=str(args.data) if args.data else None,
            image_size=args.image_size or demo["image_size"],
            batch_size=demo["batch_size"],
            seed=seed,
            augment=True,
            **settings,
        ),
        model=model,
        train=TrainConfig(
            epochs=args.epochs,
            learning_rate=demo["learning_rate"],
            ema=ema,
            mixed_precision="off",
            jit_compile="auto",
        ),
        tracking=TrackingConfig(wandb="off"),
    )


def train(variant: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    import keras

    from inat_keras.storage import read_json
    from inat_keras.training.loop import train_run

    keras.utils.clear_session()
    result = train_run(run_config(variant, seed, args, out), verbose=0, log=lambda message: None)
    recorded = read_json(result.run_dir / "config.json")
    for name, value in VARIANTS[variant].items():  # the recipe is in the run's config.json
        section = "train" if name == "ema" else "data"
        assert recorded[section][name] == value, (variant, name, recorded[section][name])
    history = read_json(result.run_dir / "checkpoint" / "state.json")["history"]
    return {
        "test_accuracy": result.metrics["test_accuracy"],
        "train_accuracy": history[-1]["accuracy"],
        "images_per_second": result.metrics["train_images_per_second"],
    }


def training_rates(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Median training images/s of each variant's pipeline and compiled model, the variants measured in turn."""
    from statistics import median

    from train_step import images_per_second

    from inat_keras.data.demo import demo_dataset_dir
    from inat_keras.data.files import make_split
    from inat_keras.data.pipeline import epoch_batches, make_dataset
    from inat_keras.models.factory import build_model
    from inat_keras.training.runtime import compile_model

    configs = {variant: run_config(variant, 0, args, out) for variant in args.variants}
    for config in configs.values():
        config.data.data_dir = str(args.data or demo_dataset_dir())
    split = make_split(next(iter(configs.values())).data)
    classes, batch_size = len(split.class_names), next(iter(configs.values())).data.batch_size
    feeds, models = {}, {}
    for variant, config in configs.items():
        feeds[variant] = make_dataset(split.train, config.data, classes, training=True)  # endless
        models[variant] = build_model(config, classes)
        compile_model(models[variant], config, steps_per_epoch=epoch_batches(len(split.train), batch_size))
    rates: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            rate = images_per_second(models[variant], feeds[variant], steps=args.steps, warmup=2, batch_size=batch_size)
            rates[variant].append(rate)
    return {variant: median(values) for variant, values in rates.items()}


def summary(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    def spread(values: list[float]) -> float:
        return stdev(values) if len(values) > 1 else 0.0

    return {
        variant: {
            "test_accuracy_mean": mean(r["test_accuracy"] for r in runs),
            "test_accuracy_std": spread([r["test_accuracy"] for r in runs]),
            "test_accuracy_min": min(r["test_accuracy"] for r in runs),
            "test_accuracy_max": max(r["test_accuracy"] for r in runs),
            "train_accuracy_mean": mean(r["train_accuracy"] for r in runs),
        }
        for variant, runs in results.items()
    }


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    basic = table.get("basic", {}).get("images_per_second")
    norm = "" if args.batch_norm else " without batch normalisation"
    print(f"\nscratch CNN{norm} on the demo digits, {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}")
    print("| recipe | test accuracy, mean ± sd (min-max) | last-epoch training accuracy | training images/s (median) |")
    print("| --- | --- | --- | --- |")
    for variant, row in table.items():
        cost = f" ({row['images_per_second'] / basic:.2f}x basic)" if basic and variant != "basic" else ""
        print(
            f"| {variant} | {100 * row['test_accuracy_mean']:.1f} % ± {100 * row['test_accuracy_std']:.1f} "
            f"({100 * row['test_accuracy_min']:.1f}-{100 * row['test_accuracy_max']:.1f}) | "
            f"{100 * row['train_accuracy_mean']:.1f} % | {row['images_per_second']:,.0f}{cost} |"
        )
    fields = {"test_accuracy_mean": ".4f", "test_accuracy_std": ".4f", "images_per_second": ".1f"}
    print(" ".join(f"{variant}_{name}={row[name]:{form}}" for variant, row in table.items() for name, form in fields.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per variant and seed (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default: 10, the demo's)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per variant and round (default: 100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the interleaved speed measurement (default: 5)")
    parser.add_argument("--data", type=Path, help="another dataset root instead of the demo digits (default: the digits)")
    parser.add_argument("--image-size", type=int, help="input size (default: the demo's 32)")
    parser.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the CNN's batch normalisation (default: on, as the demo; Keras's EMA does not average its statistics)",
    )
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder, deleted)")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="inat-recipes-"))
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in args.variants}
    try:
        for seed in args.seeds:  # seeds outermost: an interrupted bench still has every variant of the first seeds
            for variant in args.variants:
                results[variant].append(train(variant, seed, args, out))
                r = results[variant][-1]
                print(
                    f"{variant} seed {seed}: test accuracy {r['test_accuracy']:.4f}, "
                    f"{r['images_per_second']:.0f} training images/s in metrics.json",
                    flush=True,
                )
        table = summary(results)
        for variant, rate in training_rates(args, out).items():
            table[variant]["images_per_second"] = rate
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print_table(table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
