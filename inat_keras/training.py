"""Training a run end to end: run directory, data, model, fit with resumable checkpoints, test.

A run directory ``<out>/<name>/`` holds:
``config.json`` (everything to rebuild and retrain), ``split.csv``, ``best.keras`` (best
validation accuracy), ``history.csv``, ``curves.png``, ``metrics.json``, and while a run is
unfinished ``checkpoint/`` (the last completed epoch, with optimizer state, for ``--resume``).
Every file is written to a temporary name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import data as data_lib
from .config import CNNConfig, RunConfig
from .distribute import (
    adapt_model_to_multiworker,
    config_for_worker,
    describe_scaling,
    distribution_report,
    make_distribution,
    scaled_learning_rate,
    shard_by_data,
)
from .errors import UserError, brief
from .io import atomic_write, read_json, write_csv, write_json, write_text

CONFIG_FILE = "config.json"
BEST_MODEL = "best.keras"
STATE_FILE = "checkpoint/state.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    messages: list[str] = field(default_factory=list)


# -- run directory ------------------------------------------------------------------------


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.out) / config.name


def prepare_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Create the run directory, refusing to overwrite a run and checking it is writable."""
    if not resume and (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {run_dir} ({error.strerror}): choose a writable --out directory") from None


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: --resume takes a run directory written by a training command")
    return RunConfig.from_dict(read_run_json(path, fix="start a new run with another --name"))


def read_run_json(path: Path, *, fix: str) -> Any:
    """A run's JSON file, or one line naming it when a disk fault or a hand edit broke it."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}): {fix}") from None


# -- devices and precision ----------------------------------------------------------------


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def configure_devices() -> None:
    """Grow GPU memory on demand so a shared GPU is not grabbed whole."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: too late to change, and harmless
            pass


def resolve_switch(value: str, *, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def set_precision(mixed_precision: str) -> str:
    """Mixed float16 on a GPU by default (Keras then scales the loss); float32 on a CPU."""
    import keras

    policy = "mixed_float16" if resolve_switch(mixed_precision, default=gpu_available()) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# -- model and optimizer --------------------------------------------------------------------


def cnn_config(config: RunConfig, num_classes: int) -> CNNConfig:
    from .config import from_dict

    model = from_dict(CNNConfig, {**config.model, "num_classes": num_classes, "input_size": config.data.image_size})
    model.validate()
    return model


ModelBuilder = Callable[[RunConfig, int], Any]


def build_model(config: RunConfig, num_classes: int):
    """The model a run's config describes (scratch CNN or transfer backbone)."""
    augmentation = data_lib.augmentation_for_model(config.data)
    if config.kind == "scratch":
        from .models import build_cnn

        return build_cnn(cnn_config(config, num_classes), augmentation=augmentation)
    if config.kind == "transfer":
        from .transfer import build_transfer_from_config

        return build_transfer_from_config(config, num_classes, augmentation)
    raise UserError(f"run kind {config.kind!r} in config.json: expected 'scratch' or 'transfer'")


def complete_model_settings(config: RunConfig, num_classes: int) -> dict[str, Any]:
    """Every model setting, defaults included: config.json then rebuilds the run whatever later defaults become.

    The class count and input size are left out: they come from the data (class folders, --image-size).
    """
    if config.kind == "transfer":
        from .transfer import transfer_config

        settings = dataclasses.asdict(transfer_config(config, num_classes))
    else:
        settings = dataclasses.asdict(cnn_config(config, num_classes))
    for derived in ("num_classes", "input_size"):
        settings.pop(derived)
    return settings


def model_counts(config: RunConfig, model, num_classes: int) -> dict[str, int]:
    """Parameters and multiply-accumulates; analytic for the scratch CNN."""
    from .models import count_macs, count_params, layer_macs

    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    if config.kind == "scratch":
        cnn = cnn_config(config, num_classes)
        return {"num_params": count_params(cnn), "macs": count_macs(cnn), "trainable_params": trainable}
    return {"num_params": int(model.count_params()), "macs": layer_macs(model), "trainable_params": trainable}


def make_optimizer(config: RunConfig, steps_per_epoch: int, learning_rate: float | None = None):
    import keras

    train = config.train
    rate = learning_rate or train.learning_rate
    schedule: Any = rate
    if train.lr_schedule == "cosine":
        warmup = train.warmup_epochs * steps_per_epoch
        total = max(train.epochs * steps_per_epoch - warmup, 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=rate / 100 if warmup else rate,
            decay_steps=total,
            warmup_target=rate if warmup else None,
            warmup_steps=warmup,
        )
    decay = train.weight_decay or None
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=decay)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay or 1e-4)
    return keras.optimizers.SGD(schedule, momentum=train.momentum, nesterov=True, weight_decay=decay)


def compile_model(model, config: RunConfig, steps_per_epoch: int, learning_rate: float | None = None) -> None:
    import keras

    # In the strategy the model was built under (--distribute), wherever this is called from: the
    # optimizer's variables must be mirrored like the model's.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch, learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing),
            metrics=training_metrics(),
            jit_compile=resolve_jit(config.train.jit_compile, model),
        )


def training_metrics() -> list:
    import keras

    return ["accuracy", keras.metrics.TopKCategoricalAccuracy(k=3, name="top3_accuracy")]


def xla_blockers(model) -> list[str]:
    """The layers of ``model`` XLA cannot compile (Keras's ``supports_jit``).

    Given one, Keras's ``compile(jit_compile=True)`` only warns and trains without XLA. Keras's
    RandomZoom, RandomTranslation and RandomRotation are such layers (their warp,
    ``ImageProjectiveTransformV3``, has no XLA kernel), which is why ``--augment`` uses
    ``augment.RandomAffine`` instead.
    """
    from .models import all_layers

    return [layer.name for layer in all_layers(model) if not layer.supports_jit]


def resolve_jit(value: str, model) -> bool:
    """Whether ``model`` trains with XLA: "auto" is on with a GPU unless the model holds layers XLA cannot compile."""
    blockers = xla_blockers(model)
    if value == "on" and blockers:
        raise UserError(f"--jit-compile on: XLA cannot compile the layers {', '.join(blockers)}; use --jit-compile auto or off")
    if value == "auto":
        # XLA pays off on a GPU; on a CPU its compile time outweighs the gain for these models.
        return gpu_available() and not blockers
    return value == "on"


# -- checkpoints -----------------------------------------------------------------------------


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


def save_model_atomically(model, path: Path) -> None:
    atomic_write(path, lambda tmp: model.save(tmp))


def publish_best(run_dir: Path, checkpoint: Path) -> None:
    """``best.keras`` becomes ``checkpoint`` in one rename: a hard link where the file system allows, else a copy."""
    best = run_dir / BEST_MODEL
    if best.exists() and os.path.samefile(best, checkpoint):
        return  # already linked; renaming a link onto its twin would do nothing and leave the temporary file

    def link_or_copy(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)

    atomic_write(best, link_or_copy)


def finish_best_commit(run_dir: Path, state: dict[str, Any]) -> None:
    """Publish the best checkpoint if a kill came between writing ``state.json`` and ``best.keras``."""
    if state["checkpoint"] and state["best_epoch"] == state["epochs_done"]:
        checkpoint = run_dir / "checkpoint" / state["checkpoint"]
        if checkpoint.is_file():
            publish_best(run_dir, checkpoint)


class EpochCheckpoint(_keras_callback_base()):
    """After each epoch: best model, last checkpoint, history, and the state that names them.

    ``state.json`` is written last and is the commit point: a kill at any moment leaves the
    previous state pointing at a complete checkpoint. Early stopping lives here too, so its
    patience counter survives a resume.
    """

    def __init__(self, run_dir: Path, state: dict[str, Any], patience: int | None, title: str) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.patience = patience
        self.title = title
        self._epoch_start = 0.0
        # The model to save when fit trains only part of it (the head on cached features).
        self.saved_model = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        # Ctrl-C waits until the epoch is saved, so an interrupt never loses a finished epoch.
        with sigint_deferred(), failed_writes_as_user_errors(self.run_dir):
            self.save_epoch(epoch, logs)

    def save_epoch(self, epoch: int, logs=None) -> None:
        import keras

        logs = {key: float(value) for key, value in (logs or {}).items()}
        seconds = time.perf_counter() - self._epoch_start
        row = {"epoch": epoch + 1, **logs, "seconds": seconds}
        if "learning_rate" not in row:
            # convert_to_numpy: under a multi-worker strategy this is a MirroredVariable, which float() refuses.
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = self.state
        state["history"].append(row)
        state["train_seconds"] += seconds
        val_accuracy = logs.get("val_accuracy", float("nan"))
        if not math.isfinite(logs.get("loss", float("nan"))):
            self.model.stop_training = True
            state["stopped"] = "nan"
            return
        improved = val_accuracy > state["best_val_accuracy"]
        if improved:
            state["best_val_accuracy"], state["best_epoch"] = val_accuracy, epoch + 1
        checkpoint = self.run_dir / "checkpoint" / f"epoch-{epoch + 1:03d}.keras"
        save_model_atomically(self.saved_model or self.model, checkpoint)
        previous = state.get("checkpoint")
        state["epochs_done"] = epoch + 1
        state["checkpoint"] = checkpoint.name
        if self.patience and state["epochs_done"] - state["best_epoch"] >= self.patience:
            self.model.stop_training = True
            state["stopped"] = "early_stopping"
        write_json(self.run_dir / STATE_FILE, state)
        # After the commit: best.keras never holds an epoch that state.json does not name. A kill
        # between the two leaves state naming this checkpoint as the best; resuming publishes it.
        if improved:
            publish_best(self.run_dir, checkpoint)
        if previous and previous != checkpoint.name:
            (self.run_dir / "checkpoint" / previous).unlink(missing_ok=True)
        write_history(self.run_dir, state["history"], self.title)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it (main thread only, where signals arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)


@contextmanager
def failed_writes_as_user_errors(run_dir: Path) -> Iterator[None]:
    """A full disk or an unwritable run directory: one line naming the path, not a traceback.

    The writes are atomic, so the last complete checkpoint is still there to resume from.
    """
    try:
        yield
    except OSError as error:
        raise UserError(
            f"cannot write {error.filename or run_dir} ({error.strerror or error}): free disk space or make "
            f"{run_dir} writable, then continue with --resume {run_dir} (the last complete epoch is kept)"
        ) from None


def is_out_of_memory(error: Exception) -> bool:
    # TensorFlow raises ResourceExhaustedError, or an InternalError naming it from inside XLA.
    return type(error).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(error)[:2000]


def out_of_memory_message(config: RunConfig, run_dir: Path) -> str:
    smaller = max(1, config.data.batch_size // 2)
    return (
        f"out of memory with --batch-size {config.data.batch_size} at --image-size {config.data.image_size}: "
        f"try --batch-size {smaller} in a new run (or lower batch_size in {run_dir / CONFIG_FILE} and --resume)"
    )


def remove_temporaries(run_dir: Path) -> None:
    """Half-written temporary files a killed process left behind (never the files they were for)."""
    for folder in (run_dir, run_dir / "checkpoint"):
        for stale in folder.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)


class Interrupted(UserError):
    """Ctrl-C during training: the run directory is kept for --resume, even before its first epoch."""


@contextmanager
def released_if_unstarted(run_dir: Path, *, fresh: bool, created: bool) -> Iterator[None]:
    """Give a new run's name back if the block fails before any epoch is committed.

    Otherwise a bad --weights file, an out-of-memory first step or a refused setting would leave a
    config.json behind, and the corrected command would be told the name already holds a run.
    """
    try:
        yield
    except Exception as error:
        if fresh and not isinstance(error, Interrupted) and not (run_dir / STATE_FILE).exists():
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # a search's folder, say: remove only what this run wrote
                for name in (CONFIG_FILE, data_lib.SPLIT_FILE, "data-check.json", "skipped-images.csv"):
                    (run_dir / name).unlink(missing_ok=True)
        raise


def load_state(run_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The resumed run's state; a fresh one, said aloud, when no epoch was committed yet."""
    path = run_dir / STATE_FILE
    if not path.exists():
        log(f"{run_dir} has no finished epoch ({STATE_FILE} is absent): training starts at epoch 1")
        return new_state()
    return read_run_json(path, fix=f"delete it to train {run_dir} again from epoch 1")


def load_checkpoint(run_dir: Path, name: str):
    from .augment import load_model

    path = run_dir / "checkpoint" / name
    if not path.is_file():
        raise UserError(f"{path}, named in {run_dir / STATE_FILE}, is missing: delete {STATE_FILE} to train again from epoch 1")
    try:
        return load_model(path)
    except Exception as error:  # Keras reports a damaged archive as several different errors
        reason = brief(error)
        raise UserError(
            f"cannot load {path} ({reason}); if it is damaged, delete {run_dir / STATE_FILE} to train again from epoch 1"
        ) from None


def new_state() -> dict[str, Any]:
    return {
        "epochs_done": 0,
        "checkpoint": None,
        "best_val_accuracy": -1.0,
        "best_epoch": 0,
        "train_seconds": 0.0,
        "history": [],
        "stopped": None,
        "finished": False,
    }


def write_history(run_dir: Path, history: list[dict[str, float]], title: str) -> None:
    from .plots import plot_curves

    # One column order whether or not the run was resumed (state.json stores rows with sorted keys).
    keys = {key for row in history for key in row}
    last = [key for key in ("seconds", "learning_rate") if key in keys]
    columns = ["epoch", *sorted(keys - {"epoch", *last}), *last]
    write_csv(run_dir / HISTORY_FILE, columns, ([row.get(c, "") for c in columns] for row in history))
    plot_curves(history, run_dir / "curves.png", title=title)


# -- the run ----------------------------------------------------------------------------------


def resolve_data_dir(config: RunConfig) -> None:
    if config.data.data_dir is None:
        if not config.demo:
            raise UserError(
                "no dataset given: pass --data DIR (get iNaturalist-12K with `python -m inat_keras download`), "
                "or --demo to try the embedded digits"
            )
        from .demo import demo_dataset_dir

        config.data.data_dir = str(demo_dataset_dir())


def train_run(
    config: RunConfig,
    *,
    resume: bool = False,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train (or continue) the run ``config`` describes and evaluate it once on the test set."""
    import keras

    config.train.validate()
    config.data.validate()
    configure_devices()  # first: memory growth and MultiWorkerMirroredStrategy precede any TensorFlow operation
    distribution = make_distribution(config.train.distribute)
    config = config_for_worker(config, distribution, resume=resume)  # only the chief writes the run directory
    run_dir = run_dir_of(config)
    state = load_state(run_dir, log) if resume else new_state()
    if state["finished"]:
        log(f"{run_dir} already finished: nothing to resume")
        return RunResult(run_dir, read_run_json(run_dir / METRICS_FILE, fix=f"delete it and {STATE_FILE} to train again"))
    resolve_data_dir(config)
    # Recorded resolved: a resumed run then augments where its checkpointed model expects, on any machine.
    config.data.augment_placement = data_lib.resolve_augment_placement(config.data.augment_placement)
    from .datacheck import check_before_training, record_in_run, usable_split

    if not resume:
        data_lib.discover_dataset(config.data.data_dir)  # the folder layout first: it costs no decoding
    data_report = check_before_training(config.data.data_dir, skip_bad=config.data.skip_bad, log=log)
    if resume:
        class_names = read_json(run_dir / CONFIG_FILE)["class_names"]
        split = usable_split(
            data_lib.load_split(run_dir, class_names), data_report.bad_paths,
            skip_bad=config.data.skip_bad, run_dir=run_dir, log=log,
        )
    else:
        split = data_lib.make_split(config.data, exclude=data_report.bad_paths)
    num_classes = len(split.class_names)
    if config.kind == "scratch":
        cnn_config(config, num_classes)  # refuse a bad model before any file is written
    elif config.kind == "transfer":
        from .transfer import validate_transfer

        validate_transfer(config, num_classes)
    created = not run_dir.exists()
    prepare_run_dir(run_dir, resume=resume)
    # A new run that fails before its first epoch is committed gives its name back.
    with released_if_unstarted(run_dir, fresh=not resume, created=created):
        remove_temporaries(run_dir)
        with failed_writes_as_user_errors(run_dir):
            record_in_run(data_report, run_dir)

        if not resume:
            config.model = complete_model_settings(config, num_classes)
            data_lib.save_split(split, run_dir)
            # Last: config.json marks the directory as holding a run that --resume can continue.
            write_json(run_dir / CONFIG_FILE, {**config.to_dict(), "class_names": split.class_names})
        finish_best_commit(run_dir, state)

        keras.utils.set_random_seed(config.data.seed + state["epochs_done"])
        policy = set_precision(config.train.mixed_precision)
        # --batch-size is per replica: one step takes a global batch from the pipeline.
        global_data = replace(config.data, batch_size=distribution.global_batch_size(config.data.batch_size))
        datasets = {
            "train": data_lib.make_dataset(split.train, global_data, num_classes, training=True, cache_name="train"),
            "validation": data_lib.make_dataset(split.validation, global_data, num_classes, training=False, cache_name="val"),
        }
        datasets = {name: shard_by_data(dataset, distribution) for name, dataset in datasets.items()}
        steps_per_epoch = math.ceil(len(split.train) / global_data.batch_size)
        learning_rate = scaled_learning_rate(config.train.learning_rate, distribution.num_replicas, config.train.lr_scaling)
        scaling = distribution_report(distribution, config, learning_rate)
        if distribution.mode != "none":
            log(f"distribution {distribution.describe()}; {describe_scaling(scaling)}")

        with distribution.scope():  # variables created here are mirrored on every replica
            if state["checkpoint"]:
                model = load_checkpoint(run_dir, state["checkpoint"])
                log(f"resuming {run_dir} after epoch {state['epochs_done']} of {config.train.epochs}")
                if config.kind == "transfer":
                    from .transfer import apply_final_trainability

                    apply_final_trainability(model, config)  # a phase-1 checkpoint is still frozen
            else:
                model = build_model(config, num_classes)
                compile_model(model, config, steps_per_epoch, learning_rate)
        adapt_model_to_multiworker(model, distribution)
        counts = model_counts(config, model, num_classes)
        log(
            f"{config.kind} model: {counts['num_params']:,} parameters ({counts['trainable_params']:,} trainable), "
            f"{counts['macs'] / 1e6:,.1f} M multiply-accumulates per image; precision {policy}; "
            f"XLA {'on' if model.jit_compile else 'off'}; "
            f"{len(split.train)} train / {len(split.validation)} validation / {len(split.test)} test images"
        )

        from .tracking import start_wandb

        wandb_run = start_wandb(
            config.tracking,
            run_dir,
            name=config.name,
            config={**config.to_dict(), **counts},
            resume_id=state.setdefault("wandb_id", None),
        )
        if wandb_run is not None:
            state["wandb_id"] = wandb_run.run.id

        callbacks: list = [EpochCheckpoint(run_dir, state, config.train.early_stopping, title=config.name)]
        if config.train.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6))
        if wandb_run is not None:
            callbacks.extend(wandb_run.callbacks())

        if state["epochs_done"] < config.train.epochs and not state["stopped"]:
            try:
                if config.kind == "transfer":
                    from .transfer import fit_transfer

                    fit_transfer(
                        model, config, datasets, state, callbacks, steps_per_epoch=steps_per_epoch,
                        learning_rate=learning_rate, verbose=verbose, log=log,
                    )
                else:
                    model.fit(
                        datasets["train"],
                        validation_data=datasets["validation"],
                        epochs=config.train.epochs,
                        initial_epoch=state["epochs_done"],
                        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
                        callbacks=callbacks,
                        verbose=verbose,
                    )
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted after epoch {state['epochs_done']}: continue with "
                    f"`python {'finetune.py' if config.kind == 'transfer' else 'train_scratch.py'} --resume {run_dir}`"
                ) from None
            except Exception as error:
                if is_out_of_memory(error):
                    raise UserError(out_of_memory_message(config, run_dir)) from None
                raise
        if state["stopped"] == "nan":
            raise UserError(
                f"the loss became NaN or infinite in epoch {len(state['history'])}: the learning rate "
                f"({config.train.learning_rate}) is probably too high: start a new run with a lower --learning-rate"
                + (
                    f" and another --name. The best model so far (epoch {state['best_epoch']}) is kept in {run_dir / BEST_MODEL}"
                    if state["best_epoch"]
                    else ". No epoch finished with a finite loss, so there is no best model, and the name is free again"
                )
            )

    if state["history"]:
        # Again here: a kill between an epoch's state.json and its history leaves them out of step.
        with failed_writes_as_user_errors(run_dir):
            write_history(run_dir, state["history"], config.name)
    metrics = {
        **evaluate_best(run_dir, split, config, num_classes, state, counts),
        "distribution": scaling,
        # What "auto" became on this machine.
        "precision_policy": policy,
        "jit_compile": bool(model.jit_compile),
    }
    with failed_writes_as_user_errors(run_dir):
        write_json(run_dir / METRICS_FILE, metrics)
        state["finished"] = True
        write_json(run_dir / STATE_FILE, state)
    # Also an older checkpoint a kill left behind between writing state.json and deleting it.
    for checkpoint in (run_dir / "checkpoint").glob("epoch-*.keras"):
        checkpoint.unlink(missing_ok=True)
    messages = []
    if wandb_run is not None:
        wandb_run.log_summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        messages.append(wandb_run.finish())
    return RunResult(run_dir, metrics, messages)


def evaluate_best(run_dir: Path, split, config: RunConfig, num_classes: int, state, counts) -> dict[str, Any]:
    from .augment import load_model

    best = load_model(run_dir / BEST_MODEL)
    test = data_lib.make_dataset(split.test, config.data, num_classes, training=False, cache_name="test")
    scores = best.evaluate(test, verbose=0, return_dict=True)
    epochs_run = state["epochs_done"]
    train_images = len(split.train) * (epochs_run)
    return {
        "test_accuracy": float(scores["accuracy"]),
        "test_top3_accuracy": float(scores["top3_accuracy"]),
        "test_loss": float(scores["loss"]),
        "val_accuracy": float(state["best_val_accuracy"]),
        "best_epoch": state["best_epoch"],
        "epochs_run": epochs_run,
        "stopped_early": state["stopped"] == "early_stopping",
        "train_seconds": round(state["train_seconds"], 3),
        "train_images_per_second": round(train_images / max(state["train_seconds"], 1e-9), 2),
        "num_train_images": len(split.train),
        "num_validation_images": len(split.validation),
        "num_test_images": len(split.test),
        "class_names": split.class_names,
        **counts,
    }
