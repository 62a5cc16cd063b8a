"""A whole search: check the data and the space, search (or continue), analyse, retrain the best trial."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inat_keras.config import RunConfig
from inat_keras.data.files import discover_dataset, make_split
from inat_keras.data.gate import check_before_training
from inat_keras.devices import configure_devices, unused_gpu_warning
from inat_keras.errors import UserError
from inat_keras.locks import exclusive_lock
from inat_keras.models.factory import cnn_config
from inat_keras.runs import CONFIG_FILE, RETRAINED_FILE, SEARCH_DIR, run_dir_of, trial_number
from inat_keras.search.analysis import write_analysis
from inat_keras.search.chief import serve_oracle, tuner_role
from inat_keras.search.hypermodel import TrialModels
from inat_keras.search.record import SearchSettings, check_search_files, record_or_check, search_record
from inat_keras.search.space import most_blocks, trial_config
from inat_keras.search.tuners import make_tuner
from inat_keras.storage import make_dir, read_json, write_json
from inat_keras.training.determinism import enable_determinism
from inat_keras.training.faults import Interrupted
from inat_keras.training.finetune import validate_transfer
from inat_keras.training.loop import resolve_data_dir, train_run

# -- the search --------------------------------------------------------------------------------


@dataclass
class SearchResult:
    search_dir: Path
    role: str
    trials_run: list[int]  # the trials this process ran, by KerasTuner's numbers (#1, #2, ...)
    best: dict[str, Any] | None = None
    run: Any = None  # the RunResult of the retrained best configuration
    messages: list[str] = field(default_factory=list)


def run_search(
    base: RunConfig,
    settings: SearchSettings,
    *,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
    command: str | None = None,
    show_summary: bool = False,
) -> SearchResult:
    """Search (or continue searching), analyse the trials, and retrain the best configuration.

    ``command``: the command that continues this search after an interrupt (the same one, as typed);
    ``show_summary``: log the retrained model's summary (``train_run``).
    One process per search folder: a second search command with the same name is refused while this one
    runs. KerasTuner's workers share the chief's folder, so only the chief (or a single process) locks it.
    """
    import keras

    with search_folder_lock(base):
        settings.validate()
        base.train.validate()
        base.data.validate()
        if base.train.distribute != "none":
            raise UserError(
                f"--distribute {base.train.distribute} with --tuner: trials run on one device each; spread a search over "
                f"devices or machines with KerasTuner's distributed mode (see README, 'Distributed search')"
            )
        role = tuner_role()
        configure_devices()
        warning = unused_gpu_warning()
        if warning:
            log(warning)
        data_dir = resolve_data_dir(base)
        discover_dataset(data_dir)  # the folder layout first: it costs no decoding
        data_report = check_before_training(data_dir, skip_bad=base.data.skip_bad, log=log)
        split = make_split(base.data, exclude=data_report.bad_paths)
        check_space_fits(base, settings.space, len(split.class_names))
        search_dir = run_dir_of(base) / SEARCH_DIR
        make_dir(search_dir)
        if role != "worker":
            record_or_check(search_dir, search_record(base, settings))

        check_search_files(search_dir)
        keras.utils.set_random_seed(base.data.seed)
        enable_determinism(base.train.deterministic)
        hypermodel = TrialModels(base, settings.space, split, search_dir)
        tuner = make_tuner(base, settings, hypermodel, search_dir)
        if role == "chief":
            tuner.oracle.verbose = verbose
            tuner.save()
            log(f"chief: serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}")
            serve_oracle(tuner.oracle)
        else:
            try:
                tuner.search(verbose=verbose)
            except KeyboardInterrupt:
                during = f" during trial {trial_number(tuner.trials_run[-1])}" if tuner.trials_run else ""
                again = f"`{command}`" if command else "the same command"
                raise Interrupted(
                    f"interrupted{during}: the finished trials are kept in {search_dir}; continue the search with {again}"
                ) from None
        result = SearchResult(search_dir, role, [trial_number(trial_id) for trial_id in tuner.trials_run])
        if role == "worker":
            return result

        analysis = write_analysis(search_dir)
        result.best = analysis.best
        result.messages.append(analysis.headline)
        if settings.retrain and analysis.best is not None:
            config = trial_config(base, analysis.best["hyperparameters"])
            config.tracking = dataclasses.replace(config.tracking, group=config.tracking.group or base.name)
            run_dir = run_dir_of(config)
            best_id = str(analysis.best["trial_id"])
            set_aside_other_retrain(run_dir, search_dir, best_id, log)
            log(f"retraining the best configuration (trial {trial_number(best_id)}, search/trial_{best_id}) into {run_dir}")
            write_json(search_dir / RETRAINED_FILE, {"trial_id": best_id})
            result.run = train_run(
                config, resume=(run_dir / CONFIG_FILE).exists(), verbose=verbose, log=log, show_summary=show_summary
            )
        return result


def search_folder_lock(base: RunConfig) -> contextlib.AbstractContextManager[Any]:
    """The search folder's lock for the chief or a single process; none for a worker, which shares the chief's folder."""
    if tuner_role() == "worker":
        return contextlib.nullcontext()
    return exclusive_lock(make_dir(run_dir_of(base) / SEARCH_DIR), "search")


def set_aside_other_retrain(run_dir: Path, search_dir: Path, best_id: str, log: Callable[[str], None]) -> None:
    """Move a retrain of another trial into ``retrain-trial-<number>/`` so the new best gets a run of its own.

    A larger --max-trials can find a better trial after the best one was retrained; resuming that
    run would report the old trial's model under the new trial's name. A search recorded before
    RETRAINED_FILE existed names no trial, and its retrain is resumed as before.
    """
    marker = search_dir / RETRAINED_FILE
    if not (run_dir / CONFIG_FILE).exists() or not marker.exists():
        return
    previous_id = str(read_json(marker).get("trial_id"))
    if previous_id == best_id:
        return
    archive = run_dir / f"retrain-trial-{trial_number(previous_id)}"
    archive.mkdir(exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.name != SEARCH_DIR and not entry.name.startswith("retrain-trial-"):
            entry.rename(archive / entry.name)
    log(
        f"the best configuration is now trial {trial_number(best_id)}, no longer trial {trial_number(previous_id)}: "
        f"its retrain moved to {archive}"
    )


def check_space_fits(base: RunConfig, space: dict[str, Any], num_classes: int) -> None:
    """Refuse, before any trial, a space that cannot be built: too deep for the images, a bad backbone."""
    if base.kind == "transfer":
        backbones = space.get("backbone", [base.model.get("backbone")])
        for backbone in backbones if isinstance(backbones, list) else [backbones]:
            config = trial_config(base, {"backbone": backbone} if backbone else {})
            try:
                validate_transfer(config, num_classes)  # also fetches ImageNet weights once, before any trial
            except UserError as error:
                raise UserError(f"search space (backbone {backbone}): {error}") from None
        return

    deepest = trial_config(base, {"num_blocks": most_blocks(space, base.model.get("num_blocks", 5))})
    if "kernel_size_per_block" in space:
        deepest.model.pop("kernel_size", None)
    try:
        cnn_config(deepest, num_classes)
    except UserError as error:
        raise UserError(f"search space: {error}") from None
