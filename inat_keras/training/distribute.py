"""Training on several devices or machines with TensorFlow's own distribution strategies.

``none``: the default device. ``mirrored``: every local GPU (``tf.distribute.MirroredStrategy``).
``multiworker``: every worker in ``TF_CONFIG`` (``tf.distribute.MultiWorkerMirroredStrategy``),
each with its local GPUs (or its CPU).

Batch size and learning rate scale explicitly: ``--batch-size`` is per replica, so the global
batch of one step is ``batch_size x replicas``; the learning rate follows the rule in
``--lr-scaling`` (linear by default: Goyal et al. 2017, "Accurate, Large Minibatch SGD").
Both are printed and recorded in ``metrics.json``.

Only the chief writes the run directory. Every worker runs the same code, callbacks and saves
included, so that no worker waits in a collective operation another one skips; the others write
to a temporary directory deleted when the process exits, as TensorFlow's multi-worker guide recommends.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inat_keras.config import DISTRIBUTE_MODES, LR_SCALINGS, RunConfig
from inat_keras.errors import UserError

TF_CONFIG_HELP = (
    'set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a ``TF_CONFIG`` cluster."""

    task_type: str
    task_index: int
    num_workers: int
    is_chief: bool


@dataclass
class Distribution:
    """The strategy a run trains under, and who this process is in it."""

    mode: str
    num_replicas: int = 1
    task: ClusterTask = ClusterTask("worker", 0, 1, True)
    strategy: Any = None  # a tf.distribute.Strategy, or None for the default device

    @property
    def is_chief(self) -> bool:
        return self.task.is_chief

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Build, load and compile models inside this: their variables are then mirrored."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def global_batch_size(self, per_replica: int) -> int:
        return per_replica * self.num_replicas

    def describe(self) -> str:
        where = f"{self.task.num_workers} worker(s), this is {self.task.task_type} {self.task.task_index}"
        chief = " (chief)" if self.is_chief else " (writes to a temporary directory)"
        return f"{self.mode}: {self.num_replicas} replica(s) on {where}{chief}"


def scaled_learning_rate(base: float, num_replicas: int, rule: str) -> float:
    """The learning rate for a global batch ``num_replicas`` times the per-replica batch."""
    if rule == "linear":
        return base * num_replicas
    if rule == "sqrt":
        return base * num_replicas**0.5
    if rule == "none":
        return base
    raise UserError(f"--lr-scaling {rule}: choose one of {', '.join(LR_SCALINGS)}")


def read_tf_config(environ: Mapping[str, str] = os.environ) -> ClusterTask:
    """Parse ``TF_CONFIG``: the chief is the ``chief`` task if there is one, else worker 0 (as in TensorFlow)."""
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise UserError(f"--distribute multiworker needs TF_CONFIG: {TF_CONFIG_HELP}")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not valid ({error!r}): {TF_CONFIG_HELP}") from None
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported or task_type not in ("chief", "worker"):
        raise UserError(
            f"TF_CONFIG has task type(s) {unsupported or [task_type]}: MultiWorkerMirroredStrategy takes only "
            "'chief' and 'worker' tasks"
        )
    members = cluster.get(task_type, [])
    if not 0 <= task_index < len(members):
        raise UserError(f"TF_CONFIG task {task_type} {task_index} is not in its cluster ({len(members)} {task_type} task(s))")
    num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    is_chief = task_type == "chief" or (task_index == 0 and "chief" not in cluster)
    return ClusterTask(task_type, task_index, num_workers, is_chief)


def make_distribution(mode: str, environ: Mapping[str, str] = os.environ) -> Distribution:
    """The strategy for ``mode``. Call it before any other TensorFlow operation (multi-worker needs that)."""
    if mode not in DISTRIBUTE_MODES:
        raise UserError(f"--distribute {mode}: choose one of {', '.join(DISTRIBUTE_MODES)}")
    if mode == "none":
        return Distribution(mode)
    import tensorflow as tf

    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(mode, strategy.num_replicas_in_sync, strategy=strategy)
    task = read_tf_config(environ)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:  # e.g. "Collective ops must be configured at program startup"
        raise UserError(f"cannot start MultiWorkerMirroredStrategy ({error}): start one process per worker") from None
    return Distribution(mode, strategy.num_replicas_in_sync, task, strategy)


def shard_by_data(dataset: Any, distribution: Distribution) -> Any:
    """Tell TensorFlow to split the pipeline's batches by element across workers.

    The pipeline starts from a list of paths, not from files TensorFlow reads itself, so
    sharding by file cannot apply; saying DATA outright avoids the fallback warning. Each worker
    runs the whole pipeline, so it decodes and holds every image of the split (one uint8 array,
    ``size * size * 3`` bytes an image) and keeps every k-th global batch of the epoch's order:
    the same permutation on every worker, since it depends only on (seed, epoch).
    """
    if distribution.mode != "multiworker":
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def config_for_worker(config: RunConfig, distribution: Distribution, *, resume: bool) -> RunConfig:
    """The chief's config unchanged; for another worker, a copy writing to a temporary folder, without W&B."""
    if distribution.is_chief:
        return config
    scratch = Path(tempfile.mkdtemp(prefix=f"inat-keras-{distribution.task.task_type}{distribution.task.task_index}-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if resume:
        chief_run = Path(config.out) / config.name
        if not chief_run.is_dir():
            raise UserError(
                f"{chief_run} is not visible on this worker: resuming a multi-worker run needs the run directory "
                "on storage every worker shares"
            )
        shutil.copytree(chief_run, scratch / config.name)
    tracking = dataclasses.replace(config.tracking, wandb="off")
    return dataclasses.replace(config, out=str(scratch), tracking=tracking)


def distribution_report(distribution: Distribution, config: RunConfig, learning_rate: float) -> dict[str, Any]:
    """What ``metrics.json`` records about the scaling of a run."""
    per_replica = config.data.batch_size
    return {
        "mode": distribution.mode,
        "num_workers": distribution.task.num_workers,
        "num_replicas": distribution.num_replicas,
        "per_replica_batch_size": per_replica,
        "global_batch_size": distribution.global_batch_size(per_replica),
        "lr_scaling": config.train.lr_scaling,
        "base_learning_rate": config.train.learning_rate,
        "learning_rate": learning_rate,
    }


def describe_scaling(report: dict[str, Any]) -> str:
    return (
        f"global batch {report['global_batch_size']} = {report['per_replica_batch_size']} per replica x "
        f"{report['num_replicas']}; learning rate {report['learning_rate']:g} = {report['base_learning_rate']:g} "
        f"with {report['lr_scaling']} scaling"
    )


def adapt_model_to_multiworker(model: Any, distribution: Distribution) -> None:
    """Work around two Keras 3 bugs that stop ``fit`` under MultiWorkerMirroredStrategy.

    Keras reduces the first (images, labels) batch as one tuple to build the model, which the
    multi-worker strategy cannot reduce, and it reduces each step's scalar metrics along axis 0,
    which scalars lack (keras-team/keras#20585). So the model is built from this worker's own
    batch, and each step returns its metrics with a leading axis of one. Without multi-worker
    training the model is left as it is.
    """
    if distribution.mode != "multiworker":
        return
    import keras
    import tensorflow as tf

    strategy = distribution.strategy
    build = model._maybe_symbolic_build

    def build_from_local_batch(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(batches))
                break
        build(data_batch=data_batch)

    def with_leading_axis(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda data: keras.tree.map_structure(lambda value: tf.reshape(value, [1]), step(data))

    model._maybe_symbolic_build = build_from_local_batch
    model.train_step = with_leading_axis(model.train_step)
    model.test_step = with_leading_axis(model.test_step)
