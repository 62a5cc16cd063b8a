"""Training images per second: the real input pipeline against tensors already in memory.

For each model at its native input size (scratch CNN 224, ResNet50 224, Xception 299,
EfficientNetV2-S 384, -M and -L 480, ConvNeXt 224; ``weights=None``, nothing is downloaded), two
feeds of the same batches. The ConvNeXt and EfficientNetV2-M/L models are built as ``finetune.py``
builds them (``build_transfer``, every layer trainable but BatchNormalization; ConvNeXt's depthwise
convolutions as ``DepthwiseConv2D``, see ``inat_keras.models.transfer.flat_graph``):

- pipeline: ``inat_keras.data.make_dataset`` over a generated folder of 500-800 px JPEGs
  (shuffle, cached uint8, float32, [augmentation], prefetch), after one pass that fills the cache,
  so this is the cost of every epoch after the first; with ``--augment-placement model`` the
  augmentation layers are the model's first layers instead (in both feeds);
- memory: the pipeline's first batch held as tensors and repeated (``Dataset.from_tensors(...).repeat()``),
  so only the model and the host-to-device copy remain.

The pipeline's cost is ``1 - pipeline / memory``; the target is under 10 %. Each feed is timed
inside one ``fit``, from the end of its first ``--warmup`` steps (tracing, XLA compilation) to the end
of its last step.

    python bench/train_step.py --models scratch --batch-size 8 --steps 10
    python bench/train_step.py --models scratch resnet50 xception efficientnetv2s --mixed-precision --jit-compile
    python bench/train_step.py --models resnet50 --augment --augment-placement model --mixed-precision --jit-compile
    python bench/train_step.py --models scratch resnet50 efficientnetv2s --table     # the README's GPU table
    python bench/train_step.py --models efficientnetv2s convnext_tiny convnext_base --table --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline import write_folder

NATIVE_SIZES = {
    "scratch": 224,
    "resnet50": 224,
    "xception": 299,
    "efficientnetv2s": 384,
    "efficientnetv2m": 480,
    "efficientnetv2l": 480,
    "convnext_tiny": 224,
    "convnext_small": 224,
    "convnext_base": 224,
}
LABELS = {
    "scratch": "scratch CNN",
    "resnet50": "ResNet50",
    "xception": "Xception",
    "efficientnetv2s": "EfficientNetV2-S",
    "efficientnetv2m": "EfficientNetV2-M",
    "efficientnetv2l": "EfficientNetV2-L",
    "convnext_tiny": "ConvNeXt-T",
    "convnext_small": "ConvNeXt-S",
    "convnext_base": "ConvNeXt-B",
}
# Built as finetune.py builds them (the flat graph of inat_keras.models.transfer); the others as before.
AS_FINETUNED = ("efficientnetv2m", "efficientnetv2l", "convnext_tiny", "convnext_small", "convnext_base")
NUM_CLASSES = 10
# --table's columns: (mixed precision, XLA).
TABLE_SETTINGS = {
    "float32": (False, False),
    "float32 + XLA": (False, True),
    "mixed_float16": (True, False),
    "mixed_float16 + XLA": (True, True),
}


def build(name: str, size: int, augmentation: list | None):
    """The model, float32 softmax output whatever the precision policy (as in training)."""
    import keras

    from inat_keras.models.cnn import apply_layers

    if name == "scratch":
        from inat_keras.config import CNNConfig
        from inat_keras.models.cnn import build_cnn

        return build_cnn(CNNConfig(num_classes=NUM_CLASSES, input_size=size), augmentation=augmentation)
    if name in AS_FINETUNED:
        from inat_keras.models.transfer import build_transfer

        return build_transfer(
            name, NUM_CLASSES, weights=None, unfreeze="all", input_size=size, dropout=0.0, augmentation=augmentation
        )
    backbones = {
        "resnet50": keras.applications.ResNet50,
        "xception": keras.applications.Xception,
        "efficientnetv2s": keras.applications.EfficientNetV2S,
    }
    inputs = keras.Input((size, size, 3))
    backbone = backbones[name](include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    features = backbone(apply_layers(augmentation or (), inputs))
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(features)
    return keras.Model(inputs, outputs, name=name)


def pipeline_feed(folder: Path, config):
    """The training pipeline (endless), with its cache filled by one full pass."""
    from inat_keras.data.files import LabelledFiles, list_class_images
    from inat_keras.data.pipeline import epoch_batches, make_dataset

    paths, labels = [], []
    for label, files in enumerate(list_class_images(folder).values()):
        paths += files
        labels += [label % NUM_CLASSES] * len(files)
    dataset = make_dataset(LabelledFiles(paths, labels), config, NUM_CLASSES, training=True)
    filling = iter(dataset)
    for _ in range(epoch_batches(len(paths), config.batch_size)):  # the first epoch's decoding is bench/pipeline.py's subject
        next(filling)
    return dataset


def memory_feed(pipeline):
    """One batch of the pipeline, held as tensors and repeated: the same pixels, with no input work."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat()


def images_per_second(model, dataset, *, steps: int, warmup: int, batch_size: int) -> float:
    """Training images/s over ``steps`` steps, timed inside one ``fit`` after ``warmup`` untimed steps.

    Timing the whole call would add fit's set-up and tear-down: deleting the iterator of a repeated
    dataset stalled for about 4 s after some calls here (seen after training had ended), which halved
    the rate of whichever feed it hit. A callback that is not async-safe makes Keras fetch each step's
    logs, so the clock also waits for a GPU to finish the step.
    """
    import keras

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == warmup - 1:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    clock = StepClock()
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return steps * batch_size / (clock.end - clock.start)


def measure(name: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    import keras

    from inat_keras.config import DataConfig
    from inat_keras.models.augment import augmentation_for_model
    from inat_keras.training.runtime import resolve_jit

    size = args.image_size or NATIVE_SIZES[name]
    data = DataConfig(image_size=size, batch_size=args.batch_size, augment=args.augment, augment_placement=args.augment_placement)
    pipeline = pipeline_feed(folder, data)
    feeds = {"pipeline": pipeline, "memory": memory_feed(pipeline)}
    rates = {}
    for feed, dataset in feeds.items():
        keras.utils.clear_session()  # it also resets the precision policy, so set it after
        keras.mixed_precision.set_global_policy("mixed_float16" if args.mixed_precision else "float32")
        model = build(name, size, augmentation_for_model(data))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            # Refuses XLA for a layer it cannot compile, which Keras would otherwise silently drop.
            jit_compile=resolve_jit("on" if args.jit_compile else "off", model),
        )
        rates[feed] = images_per_second(model, dataset, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size)
    rates["cost_pct"] = 100.0 * (1.0 - rates["pipeline"] / rates["memory"])
    return rates


def with_setting(args: argparse.Namespace, setting: str) -> argparse.Namespace:
    mixed_precision, jit_compile = TABLE_SETTINGS[setting]
    return argparse.Namespace(**{**vars(args), "mixed_precision": mixed_precision, "jit_compile": jit_compile})


def print_table(table: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    """The README's GPU table: pipeline-fed images/s per model and setting, the memory feed in brackets."""
    print("| model (native size) | " + " | ".join(TABLE_SETTINGS) + " |")
    print("| --- |" + " --- |" * len(TABLE_SETTINGS))
    for name in args.models:
        cells = [f"{table[s][name]['pipeline']:,.0f} ({table[s][name]['memory']:,.0f})" for s in TABLE_SETTINGS]
        print(f"| {LABELS[name]} ({args.image_size or NATIVE_SIZES[name]}) | " + " | ".join(cells) + " |")
    print(
        " ".join(
            f"{name}_{setting.replace(' + XLA', '_xla')}={table[setting][name]['pipeline']:.1f}"
            for name in args.models
            for setting in TABLE_SETTINGS
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(NATIVE_SIZES), default=["scratch", "resnet50", "xception"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per model and feed")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing, XLA compilation; at least 1)")
    parser.add_argument("--images", type=int, default=256, help="generated JPEGs behind the pipeline feed")
    parser.add_argument("--augment", action="store_true", help="include the random augmentation")
    parser.add_argument(
        "--augment-placement",
        choices=("auto", "pipeline", "model"),
        default="auto",
        help="where --augment runs: the tf.data map, or the model's first layers (auto: model with a GPU)",
    )
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (loss scaling, float32 softmax)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--folder", type=Path, help="keep the generated JPEGs here and reuse them")
    parser.add_argument("--image-size", type=int, help="one input size for every model instead of its native size")
    parser.add_argument(
        "--table",
        action="store_true",
        help="every model in float32 and mixed_float16, each without and with XLA, as a markdown table (the README's GPU table)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the clock starts when the warm-up steps end")

    import tensorflow as tf

    from inat_keras.devices import configure_devices, usable_cores
    from inat_keras.models.augment import resolve_augment_placement

    configure_devices()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [f"CPU ({usable_cores()} cores)"]
    scratch = None if args.folder else Path(tempfile.mkdtemp(prefix="inat-bench-"))
    folder = write_folder(args.folder or scratch / "images", args.images, NUM_CLASSES)
    settings = list(TABLE_SETTINGS) if args.table else [None]
    try:
        table = {
            setting: {name: measure(name, folder, with_setting(args, setting) if setting else args) for name in args.models}
            for setting in settings
        }
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    placement = f" in the {resolve_augment_placement(args.augment_placement)}" if args.augment else ""
    if args.table:
        print(
            f"\ntraining images/s on {', '.join(devices)}; batch {args.batch_size}, {args.steps} steps, "
            f"augment={args.augment}{placement}; fed by the pipeline (from the memory feed)"
        )
        print_table(table, args)
        return 0
    results = table[None]
    precision = "mixed_float16" if args.mixed_precision else "float32"
    print(
        f"\ntraining images/s on {', '.join(devices)}; batch {args.batch_size}, {args.steps} steps, "
        f"{precision}, jit_compile={args.jit_compile}, augment={args.augment}{placement}"
    )
    print(f"{'model':<18}{'size':>6}{'pipeline':>12}{'memory':>12}{'pipeline cost':>15}")
    for name, rates in results.items():
        size = args.image_size or NATIVE_SIZES[name]
        print(f"{name:<18}{size:>6}{rates['pipeline']:>12.1f}{rates['memory']:>12.1f}{rates['cost_pct']:>14.1f}%")
    print(
        " ".join(
            f"{name}_pipeline={r['pipeline']:.1f} {name}_memory={r['memory']:.1f} {name}_pipeline_cost_pct={r['cost_pct']:.1f}"
            for name, r in results.items()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
