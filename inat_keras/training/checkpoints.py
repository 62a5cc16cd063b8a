"""Per-epoch checkpoints and the state that names them, so a run resumes after a crash, kill -9 or Ctrl-C.

``checkpoint/state.json`` is the commit point: it is written after the epoch's checkpoint and before
``best.keras`` is published, so a kill at any moment leaves a state pointing at complete files.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inat_keras.errors import UserError, brief
from inat_keras.models.augment import load_model
from inat_keras.plots import plot_curves
from inat_keras.runs import BEST_MODEL, CHECKPOINT_DIR, CURVES_FILE, HISTORY_FILE, STATE_FILE, damaged_model_file, read_run_json
from inat_keras.storage import atomic_write, write_csv, write_json
from inat_keras.training.faults import failed_writes_as_user_errors, sigint_deferred

# -- checkpoints -----------------------------------------------------------------------------


def _keras_callback_base() -> Any:
    import keras

    return keras.callbacks.Callback


def save_model_atomically(model: Any, path: Path) -> None:
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
        checkpoint = run_dir / CHECKPOINT_DIR / state["checkpoint"]
        if checkpoint.is_file():
            publish_best(run_dir, checkpoint)


if TYPE_CHECKING:
    from keras.callbacks import Callback as KerasCallback
else:
    # At run time the base comes from a function, keeping keras out of this module's imports; mypy reads it from keras.
    KerasCallback = _keras_callback_base()


class EpochCheckpoint(KerasCallback):
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
        self.saved_model: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Ctrl-C waits until the epoch is saved, so an interrupt never loses a finished epoch.
        with sigint_deferred(), failed_writes_as_user_errors(self.run_dir):
            self.save_epoch(epoch, logs)

    def save_epoch(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
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
        loss = logs.get("loss", float("nan"))
        if not math.isfinite(loss) or diverging(loss, state["history"], self.model.output_shape[-1]):
            # Nothing of this epoch is saved: best.keras and the checkpoint stay at the last sane epoch.
            self.model.stop_training = True
            state["stopped"] = "nan" if not math.isfinite(loss) else "diverged"
            return
        improved = val_accuracy > state["best_val_accuracy"]
        if improved:
            state["best_val_accuracy"], state["best_epoch"] = val_accuracy, epoch + 1
        checkpoint = self.run_dir / CHECKPOINT_DIR / f"epoch-{epoch + 1:03d}.keras"
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
            (self.run_dir / CHECKPOINT_DIR / previous).unlink(missing_ok=True)
        write_history(self.run_dir, state["history"], self.title)


# A training loss this many times that of uniform guessing (ln of the class count) is not learning:
# a model that puts e^-230 on the true class (10 classes, x100) has diverged. Weight decay and label
# smoothing add little to a loss; a normal run's training loss starts near ln(classes) and falls.
DIVERGED_ONCE = 1e4  # in any single epoch (a learning rate of 1e6 gives 4e19 in epoch 1)
DIVERGED_TWICE = 100.0  # in two epochs in a row
DIVERGED_GROWTH = 1e3  # or this many times the first epoch's loss


def diverging(loss: float, history: list[dict[str, float]], num_classes: Any) -> bool:
    """Whether a finite training loss shows divergence; ``history`` ends with this epoch's row."""
    uniform = math.log(max(int(num_classes or 2), 2))
    if loss > DIVERGED_ONCE * uniform:
        return True
    earlier = [row.get("loss", float("nan")) for row in history[:-1]]
    if earlier and earlier[-1] > DIVERGED_TWICE * uniform and loss > DIVERGED_TWICE * uniform:
        return True
    first = earlier[0] if earlier else float("nan")
    return math.isfinite(first) and loss > uniform and loss > DIVERGED_GROWTH * max(first, 0.0)


def remove_temporaries(run_dir: Path) -> None:
    """Half-written temporary files a killed process left behind (never the files they were for)."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        for stale in folder.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)


def load_state(run_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The resumed run's state; a fresh one, said aloud, when no epoch was committed yet."""
    path = run_dir / STATE_FILE
    if not path.exists():
        log(f"{run_dir} has no finished epoch ({STATE_FILE} is absent): training starts at epoch 1")
        return new_state()
    fix = f"delete it to train {run_dir} again from epoch 1"
    state = read_run_json(path, fix=fix)
    problem = state_problem(state)
    if problem:
        raise UserError(f"{path} is damaged ({problem}): {fix}")
    return state


# The keys a resume reads from state.json, and the JSON values each may hold.
STATE_SHAPE: dict[str, tuple[type, ...]] = {
    "epochs_done": (int,),
    "checkpoint": (str, type(None)),
    "best_val_accuracy": (int, float),
    "best_epoch": (int,),
    "train_seconds": (int, float),
    "history": (list,),
    "stopped": (str, type(None)),
    "finished": (bool,),
}


def state_problem(state: Any) -> str | None:
    """What makes a parsed ``state.json`` unusable for a resume (a missing key, a wrong type), or None."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__} where an object belongs"
    for key, allowed in STATE_SHAPE.items():
        if key not in state:
            return f'"{key}" is missing'
        if not isinstance(state[key], allowed) or (bool not in allowed and isinstance(state[key], bool)):
            return f'"{key}" is {state[key]!r}'
    if not all(isinstance(row, dict) for row in state["history"]):
        return '"history" is not a list of epochs'
    if state["epochs_done"] < 0 or (state["epochs_done"] > 0 and not state["checkpoint"]):
        return f'"epochs_done" is {state["epochs_done"]} with checkpoint {state["checkpoint"]!r}'
    return None


def load_checkpoint(run_dir: Path, name: str) -> Any:

    path = run_dir / CHECKPOINT_DIR / name
    if not path.is_file():
        raise UserError(f"{path}, named in {run_dir / STATE_FILE}, is missing: delete {STATE_FILE} to train again from epoch 1")
    damage = damaged_model_file(path)
    if damage:
        raise UserError(f"{path} is {damage}: delete {run_dir / STATE_FILE} to train again from epoch 1")
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

    # One column order whether or not the run was resumed (state.json stores rows with sorted keys).
    keys = {key for row in history for key in row}
    last = [key for key in ("seconds", "learning_rate") if key in keys]
    columns = ["epoch", *sorted(keys - {"epoch", *last}), *last]
    write_csv(run_dir / HISTORY_FILE, columns, ([row.get(c, "") for c in columns] for row in history))
    plot_curves(history, run_dir / CURVES_FILE, title=title)
