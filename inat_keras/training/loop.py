"""Training a run end to end: data check, split, model, fit with resumable checkpoints, test.

The run directory and its files are described in ``inat_keras.runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig
from inat_keras.data.demo import demo_dataset_dir
from inat_keras.data.files import (
    DatasetSplit,
    describe_split,
    discover_dataset,
    load_split,
    make_split,
    save_split,
)
from inat_keras.data.gate import check_before_training, record_in_run, usable_split
from inat_keras.data.pipeline import make_dataset
from inat_keras.data.report import DataReport
from inat_keras.devices import configure_devices, unused_gpu_warning
from inat_keras.errors import UserError
from inat_keras.models.augment import load_model, resolve_augment_placement
from inat_keras.models.factory import cnn_config, complete_model_settings
from inat_keras.runs import (
    BEST_MODEL,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CONFIG_FIX,
    METRICS_FILE,
    MODEL_SUMMARY_FILE,
    STATE_FILE,
    prepare_run_dir,
    read_config_json,
    read_run_json,
    run_dir_locked,
    run_dir_of,
)
from inat_keras.storage import write_json, write_text
from inat_keras.training.checkpoints import (
    EpochCheckpoint,
    finish_best_commit,
    load_state,
    new_state,
    remove_temporaries,
    write_history,
)
from inat_keras.training.determinism import epoch_reseeding
from inat_keras.training.distribute import (
    config_for_worker,
    make_distribution,
)
from inat_keras.training.faults import (
    Interrupted,
    disk_full_message,
    failed_writes_as_user_errors,
    is_disk_full,
    is_out_of_memory,
    out_of_memory_message,
    released_if_unstarted,
    resume_command,
)
from inat_keras.training.finetune import fit_transfer, validate_transfer
from inat_keras.training.provenance import command_line, provenance
from inat_keras.training.runtime import (
    ema_callbacks,
)
from inat_keras.training.setup import TrainingSetup, model_summary, set_up_training
from inat_keras.training.tensorboard import TENSORBOARD_DIR, tensorboard_callback
from inat_keras.training.tracking import WandbRun, log_training_files, start_wandb


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    messages: list[str] = field(default_factory=list)


# -- the run ----------------------------------------------------------------------------------


def resolve_data_dir(config: RunConfig) -> str:
    """The dataset folder: ``--data``, or with ``--demo`` the embedded digits (then recorded in ``config``)."""
    if config.data.data_dir is None:
        if not config.demo:
            raise UserError(
                "no dataset given: pass --data DIR (get iNaturalist-12K with `python -m inat_keras download`), "
                "or --demo to try the embedded digits"
            )
        config.data.data_dir = str(demo_dataset_dir())
    return config.data.data_dir


def train_run(
    config: RunConfig,
    *,
    resume: bool = False,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
    show_summary: bool = False,
) -> RunResult:
    """Train (or continue) the run ``config`` describes and evaluate it once on the test set.

    ``show_summary``: also log the model summary that the run directory keeps in ``model_summary.txt``.
    """
    config.train.validate()
    config.data.validate()
    configure_devices()  # first: memory growth and MultiWorkerMirroredStrategy precede any TensorFlow operation
    warning = unused_gpu_warning()
    if warning:
        log(warning)
    distribution = make_distribution(config.train.distribute)
    config = config_for_worker(config, distribution, resume=resume)  # only the chief writes the run directory
    run_dir = run_dir_of(config)
    state = load_state(run_dir, log) if resume else new_state()
    if state["finished"]:
        log(f"{run_dir} already finished: nothing to resume")
        return RunResult(run_dir, read_run_json(run_dir / METRICS_FILE, fix=f"delete it and {STATE_FILE} to train again"))
    state.setdefault("commands", []).append(command_line())  # each process that trains the run, for its provenance
    split, data_report = checked_split(config, run_dir, resume=resume, log=log)
    num_classes = len(split.class_names)
    refuse_unbuildable_model(config, num_classes)
    created = not run_dir.exists()
    prepare_run_dir(run_dir, resume=resume)
    # A new run that fails before its first epoch is committed gives its name back.
    # One process per run directory (a second --resume would delete the first one's temporary checkpoint).
    with (
        run_dir_locked(run_dir, resume=resume),
        released_if_unstarted(run_dir, fresh=not resume, created=created, resume=resume_command(config, run_dir)),
    ):
        write_run_files(config, run_dir, split, data_report, resume=resume)
        finish_best_commit(run_dir, state)
        setup = set_up_training(config, run_dir, split, distribution, state, log)
        summary = model_summary(setup.model)
        with failed_writes_as_user_errors(run_dir):
            write_text(run_dir / MODEL_SUMMARY_FILE, summary)
        if show_summary:
            log(summary.rstrip("\n"))
        wandb_run = start_wandb(
            config.tracking,
            run_dir,
            name=config.name,
            config={**config.to_dict(), **setup.counts},
            resume_id=state.setdefault("wandb_id", None),
        )
        if wandb_run is not None:
            state["wandb_id"] = wandb_run.run.id
        fit_remaining_epochs(config, run_dir, setup, state, wandb_run, verbose=verbose, log=log)
        refuse_nan_loss(config, run_dir, state)
        return finish_run(config, run_dir, split, setup, state, wandb_run)


def checked_split(
    config: RunConfig, run_dir: Path, *, resume: bool, log: Callable[[str], None]
) -> tuple[DatasetSplit, DataReport]:
    """The data check, then the split: a new one, or the resumed run's own ``split.csv``."""
    data_dir = resolve_data_dir(config)
    # Recorded resolved: a resumed run then augments where its checkpointed model expects, on any machine.
    config.data.augment_placement = resolve_augment_placement(config.data.augment_placement)
    if not resume:
        discover_dataset(data_dir)  # the folder layout first: it costs no decoding
    data_report = check_before_training(data_dir, skip_bad=config.data.skip_bad, log=log)
    if not resume:
        split = make_split(config.data, exclude=data_report.bad_paths)
        log(describe_split(config.data, split))
        return split, data_report
    class_names = read_config_json(run_dir).get("class_names", [])
    if not class_names:
        raise UserError(f"{run_dir / CONFIG_FILE} is damaged (no class_names): {CONFIG_FIX}")
    split = usable_split(
        load_split(run_dir, class_names), data_report.bad_paths, skip_bad=config.data.skip_bad, run_dir=run_dir, log=log
    )
    return split, data_report


def refuse_unbuildable_model(config: RunConfig, num_classes: int) -> None:
    """A model that cannot be built is refused before any file is written."""
    if config.kind == "scratch":
        cnn_config(config, num_classes)
    elif config.kind == "transfer":
        validate_transfer(config, num_classes)


def write_run_files(config: RunConfig, run_dir: Path, split: DatasetSplit, data_report: DataReport, *, resume: bool) -> None:
    remove_temporaries(run_dir)
    with failed_writes_as_user_errors(run_dir):
        record_in_run(data_report, run_dir)
    if not resume:
        config.model = complete_model_settings(config, len(split.class_names))
        save_split(split, run_dir)
        # Last: config.json marks the directory as holding a run that --resume can continue.
        write_json(run_dir / CONFIG_FILE, {**config.to_dict(), "class_names": split.class_names})


def fit_remaining_epochs(
    config: RunConfig,
    run_dir: Path,
    setup: TrainingSetup,
    state: dict[str, Any],
    wandb_run: WandbRun | None,
    *,
    verbose: int | str,
    log: Callable[[str], None],
) -> None:
    """Fit from the last committed epoch to the end; a Ctrl-C or running out of memory ends in one line."""
    import keras

    if state["epochs_done"] >= config.train.epochs or state["stopped"]:
        return
    callbacks: list = [
        epoch_reseeding(config.data.seed),  # first: the epoch's random layers draw from (seed, epoch)
        EpochCheckpoint(run_dir, state, config.train.early_stopping, title=config.name),
    ]
    if config.tracking.tensorboard:
        # First: an epoch's events are on disk before EpochCheckpoint commits the epoch (see training.tensorboard).
        callbacks.insert(0, tensorboard_callback(run_dir / TENSORBOARD_DIR, config.tracking, first_epoch=state["epochs_done"]))
        log(f"TensorBoard logs in {run_dir / TENSORBOARD_DIR}: view them with `tensorboard --logdir {run_dir}`")
    if config.train.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6))
    if wandb_run is not None:
        callbacks.extend(wandb_run.callbacks())
    try:
        if config.kind == "transfer":
            fit_transfer(
                setup.model,
                config,
                setup.datasets,
                state,
                callbacks,
                steps_per_epoch=setup.steps_per_epoch,
                train_from=setup.train_from,
                learning_rate=setup.learning_rate,
                verbose=verbose,
                log=log,
                class_weight=setup.class_weight,
            )
        else:
            setup.model.fit(
                setup.datasets["train"],
                validation_data=setup.datasets["validation"],
                epochs=config.train.epochs,
                initial_epoch=state["epochs_done"],
                steps_per_epoch=setup.steps_per_epoch,  # the training batches are endless: one iterator for the run
                shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
                callbacks=[*ema_callbacks(config), *callbacks],  # the averaged weights swapped in before a checkpoint
                verbose=verbose,
                class_weight=setup.class_weight,
            )
    except KeyboardInterrupt:
        again = resume_command(config, run_dir)
        raise Interrupted(f"interrupted after epoch {state['epochs_done']}: continue with `{again}`") from None
    except Exception as error:
        kept = state["epochs_done"] > 0 or (run_dir / STATE_FILE).exists()  # else a new run's folder is removed
        if is_disk_full(error):
            raise UserError(disk_full_message(config, run_dir, kept=kept)) from None
        if is_out_of_memory(error):
            raise UserError(out_of_memory_message(config, run_dir, kept=kept)) from None
        raise


def refuse_nan_loss(config: RunConfig, run_dir: Path, state: dict[str, Any]) -> None:
    if state["stopped"] not in ("nan", "diverged"):
        return
    what = "NaN or infinite" if state["stopped"] == "nan" else f"{state['history'][-1]['loss']:.3g}, diverging,"
    raise UserError(
        f"the loss became {what} in epoch {len(state['history'])}: the learning rate "
        f"({config.train.learning_rate}) is probably too high: start a new run with a lower --learning-rate"
        + (
            f" and another --name. The best model so far (epoch {state['best_epoch']}) is kept in {run_dir / BEST_MODEL}"
            if state["best_epoch"]
            else ". No epoch finished with a sane loss, so there is no best model, and the name is free again"
        )
    )


def finish_run(
    config: RunConfig,
    run_dir: Path,
    split: DatasetSplit,
    setup: TrainingSetup,
    state: dict[str, Any],
    wandb_run: WandbRun | None,
) -> RunResult:
    """Test the best model once, write metrics.json, mark the run finished and drop its last checkpoint."""
    if state["history"]:
        # Again here: a kill between an epoch's state.json and its history leaves them out of step.
        with failed_writes_as_user_errors(run_dir):
            write_history(run_dir, state["history"], config.name)
    metrics = {
        **evaluate_best(run_dir, split, config, len(split.class_names), state, setup.counts),
        "distribution": setup.scaling,
        # What "auto" became on this machine.
        "precision_policy": setup.policy,
        "jit_compile": bool(setup.model.jit_compile),
        "device": setup.device,
        "provenance": provenance(commands=state.get("commands")),
    }
    with failed_writes_as_user_errors(run_dir):
        write_json(run_dir / METRICS_FILE, metrics)
        state["finished"] = True
        write_json(run_dir / STATE_FILE, state)
    # Also an older checkpoint a kill left behind between writing state.json and deleting it.
    for checkpoint in (run_dir / CHECKPOINT_DIR).glob("epoch-*.keras"):
        checkpoint.unlink(missing_ok=True)
    messages = []
    if wandb_run is not None:
        wandb_run.log_summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        log_training_files(wandb_run, config, run_dir, metrics)
        messages.append(wandb_run.finish())
    return RunResult(run_dir, metrics, messages)


def evaluate_best(
    run_dir: Path, split: DatasetSplit, config: RunConfig, num_classes: int, state: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any]:

    best = load_model(run_dir / BEST_MODEL)
    test = make_dataset(split.test, config.data, num_classes, training=False, cache_name="test")
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
