"""``--tensorboard``: Keras's TensorBoard callback, writing ``<run>/tensorboard/`` so that a resumed run
continues the same curves.

Every summary is written per epoch, at fit's epoch index, so a resumed fit (``initial_epoch``)
carries on the same steps. Two things make that exact after a kill:

- The callback runs before ``EpochCheckpoint`` and flushes its files at the end of each epoch, so
  an epoch's events are on disk before ``state.json`` commits the epoch.
- An epoch the killed process wrote but never committed is trained again on resume, so its events
  (and a record the kill cut short) are dropped from the files before training continues.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inat_keras.config import TrackingConfig
from inat_keras.storage import atomic_write

TENSORBOARD_DIR = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"


def _keras_tensorboard_base() -> Any:
    import keras

    return keras.callbacks.TensorBoard


if TYPE_CHECKING:
    from keras.callbacks import TensorBoard as KerasTensorBoard
else:
    # At run time the base comes from a function, keeping keras out of this module's imports.
    KerasTensorBoard = _keras_tensorboard_base()


class EpochTensorBoard(KerasTensorBoard):
    """Keras's TensorBoard callback with every summary at an epoch step, flushed at each epoch's end.

    The graphs are written here, at the fit's first epoch: the model's config (TensorBoard's
    conceptual graph; Keras writes it at step 0 even when a resumed fit starts later) and the
    traced first training step (the op graph, which Keras 3 no longer writes: its check for a
    ``tf.function`` never holds for Keras 3's train function). Keras's
    ``evaluation_*_vs_iterations`` scalars are left out: they repeat the validation curves against
    optimizer steps, which ``drop_events_from`` could not keep exact after a kill.
    """

    def __init__(self, log_dir: Path, *, histograms: bool = False) -> None:
        super().__init__(log_dir=str(log_dir), histogram_freq=1 if histograms else 0, write_graph=False)
        self._first_epoch: int | None = None
        self._trace_step = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self._first_epoch, self._trace_step = None, True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        if self._first_epoch is None:
            self._first_epoch = epoch
            with self._train_writer.as_default():
                write_model_config(self.model, step=epoch)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_begin(batch, logs)
        if self._trace_step:
            self.summary.trace_on(graph=True, profiler=False)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        if self._trace_step:
            self._trace_step = False
            with self._train_writer.as_default():
                self.summary.trace_export(name="train_step", step=self._first_epoch or 0)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._pop_writer()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():
            writer.flush()


def write_model_config(model: Any, *, step: int) -> None:
    """The model's config as TensorBoard's Graphs tab reads it (what Keras's own callback writes)."""
    import tensorflow as tf

    try:
        config = model.to_json()
    except (NotImplementedError, TypeError, ValueError):  # a model Keras cannot serialise has no conceptual graph
        return
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = "graph_keras_model"
    metadata.plugin_data.content = b"1"
    tf.summary.write(tag="keras", tensor=tf.constant(config), step=step, metadata=metadata)


def tensorboard_callback(log_dir: Path, tracking: TrackingConfig, *, first_epoch: int) -> EpochTensorBoard:
    """The callback writing ``log_dir``, after dropping what an earlier process wrote from ``first_epoch`` on."""
    drop_events_from(log_dir, first_epoch)
    return EpochTensorBoard(log_dir, histograms=tracking.tensorboard_histograms)


def trial_log_dir(run_dir: Path, trial_id: str, execution: int = 1) -> Path:
    """A search trial's curves: ``<run>/tensorboard/trial_<id>/`` (``trial_<id>-<n>`` for its n-th execution),
    beside the retrained run's own, so ``tensorboard --logdir <run>`` compares them all."""
    return run_dir / TENSORBOARD_DIR / (f"trial_{trial_id}" + (f"-{execution}" if execution > 1 else ""))


def drop_events_from(log_dir: Path, first_step: int) -> None:
    """Remove the events at steps ``first_step`` and later from the event files the callback writes in ``log_dir``.

    They belong to epochs a killed process wrote but never committed, which are about to be trained
    again. A record the kill cut short is dropped too, and temporary files of an interrupted rewrite.
    Only ``train/`` and ``validation/`` are read: a search's trials keep their own folders beside them.
    """
    for folder in (log_dir / "train", log_dir / "validation"):
        if not folder.is_dir():
            continue
        for stale in folder.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
        for path in sorted(folder.glob(EVENT_FILES)):
            records, complete = read_records(path)
            kept = [record for record in records if keeps(record, first_step)]
            if complete and len(kept) == len(records):
                continue
            if len(kept) <= 1:  # at most the file-version header: nothing left to show
                path.unlink()
            else:
                atomic_write(path, functools.partial(write_records, records=kept))


def read_records(path: Path) -> tuple[list[bytes], bool]:
    """The serialized events of one file, and whether it ended cleanly (not cut short by a kill)."""
    import tensorflow as tf

    records: list[bytes] = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        return records, False
    return records, True


def keeps(record: bytes, first_step: int) -> bool:
    import tensorflow as tf

    event = tf.compat.v1.Event.FromString(record)
    return event.HasField("file_version") or event.step < first_step


def write_records(path: Path, *, records: list[bytes]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
