"""Bad input a user can give: out-of-range flags, run files that parse but are wrong, a full or read-only disk,
a second process on the same run, Ctrl-C before the first epoch, a diverging loss, odd datasets.

Each ends as one line naming the problem and the fix, exit status 2, and nothing written is lost or half-done.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import inat_keras.cli
from conftest import REPO
from inat_keras import locks, runs, storage
from inat_keras.cli.run import run_main
from inat_keras.cli.values import Number, Parser, cache_target, positive_int_list
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.errors import UserError
from inat_keras.training import faults

# -- every numeric flag of every command has a range, checked at parsing ------------------------------


def command_modules() -> list[Any]:
    names = sorted(info.name for info in pkgutil.iter_modules(inat_keras.cli.__path__))
    modules = [importlib.import_module(f"inat_keras.cli.{name}") for name in names]
    return [module for module in modules if hasattr(module, "make_parser")]


def typed_flags() -> list[tuple[str, str, Any]]:
    """(command module, option, type) of every flag whose value is converted."""
    found = []
    for module in command_modules():
        for action in module.make_parser()._actions:
            if action.option_strings and action.type is not None:
                found.append((module.__name__, action.option_strings[-1], action.type))
    return found


def out_of_range(kind: Number) -> list[str]:
    """Values just outside ``kind``'s range, the non-finite numbers, and text that is no number."""
    values = ["abc", "nan", "inf", "-inf", "1e999"]
    step = 1 if kind.kind is int else 1e-9
    if kind.kind is int:
        values.append("1.5")
    if kind.low is not None:
        values.append(repr(kind.kind(kind.low - step)) if kind.kind is int else f"{kind.low - 1:g}")
    if kind.above is not None:
        values.append(f"{kind.above:g}")
    if kind.high is not None:
        values.append(f"{kind.high + 1:g}")
    if kind.below is not None:
        values.append(f"{kind.below:.15g}")
    return values


BAD_VALUES = {positive_int_list: ["0", "-3", "a,b", "4,0"], cache_target: ["/no/such/dir/prefix"]}


def bad_values(kind: Any) -> list[str]:
    return out_of_range(kind) if isinstance(kind, Number) else BAD_VALUES.get(kind, [])


def test_every_numeric_flag_of_every_command_has_a_range() -> None:
    plain = [(module, option) for module, option, kind in typed_flags() if kind in (int, float)]
    assert not plain, f"give these a range (inat_keras.cli.values.Number): {plain}"
    assert len(typed_flags()) > 40  # the walk found the commands' flags


@pytest.mark.parametrize(
    ("module", "option", "kind"),
    typed_flags(),
    ids=[f"{module.rsplit('.', 1)[-1]}{option}" for module, option, _ in typed_flags()],
)
def test_an_out_of_range_or_non_numeric_flag_is_one_line_and_exit_2(module: str, option: str, kind: Any, capsys) -> None:
    main = importlib.import_module(module).main
    values = bad_values(kind)
    for value in values:
        with pytest.raises(SystemExit) as stopped:
            run_main(main, [f"{option}={value}"])
        err = capsys.readouterr().err
        assert stopped.value.code == 2, (option, value)
        assert err.count("\n") == 1 and err.startswith(f"error: argument {option}"), (option, value, err)
        assert "see " in err and "--help" in err and "Traceback" not in err and "usage:" not in err


def test_the_reported_values_are_refused_with_their_range(capsys) -> None:
    from inat_keras.cli import train_scratch

    for flag, value, words in [
        ("--seed", "-1", "an integer >= 0 and < 4294967296"),
        ("--seed", str(2**32), "< 4294967296"),
        ("--early-stopping", "-1", ">= 1"),
        ("--learning-rate", "0", "> 0"),
        ("--learning-rate", "nan", "a finite number > 0"),
    ]:
        with pytest.raises(SystemExit):
            train_scratch.main([flag, value])
        assert words in capsys.readouterr().err


def test_every_command_parser_prints_one_error_line_and_not_the_usage(capsys) -> None:
    for module in command_modules():
        parser = module.make_parser()
        assert isinstance(parser, Parser), module.__name__
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(["--no-such-flag"])
        err = capsys.readouterr().err
        assert stopped.value.code == 2
        assert err == f"error: unrecognized arguments: --no-such-flag (see {parser.prog} --help)\n" or (
            err.count("\n") == 1 and "(see " in err  # a command whose positional argument is missing says that first
        ), err


def test_a_cache_prefix_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        cache_target(str(tmp_path / "no" / "such" / "prefix"))
    assert cache_target(str(tmp_path / "prefix")) == str(tmp_path / "prefix")
    assert cache_target("memory") == "memory"


def test_unfreezing_more_layers_than_the_backbone_has_is_refused_naming_how_many() -> None:
    from inat_keras.training.finetune import refuse_unfreeze_beyond_backbone

    with pytest.raises(UserError, match=r"--unfreeze 100000: mobilenetv2 has \d+ layers; give at most \d+, or 'all'"):
        refuse_unfreeze_beyond_backbone("mobilenetv2", 100000, 32)
    refuse_unfreeze_beyond_backbone("mobilenetv2", "all", 32)  # nothing to count


# -- writes: a full or read-only disk is one line, for every command -------------------------------


def failing(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_write_on_a_full_or_read_only_disk_is_one_line_naming_the_path(tmp_path: Path, monkeypatch, code: int) -> None:
    monkeypatch.setattr(storage.tempfile, "mkstemp", failing(code))
    with pytest.raises(storage.WriteError) as caught:
        storage.write_json(tmp_path / "out" / "metrics.json", {"a": 1})
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'out' / 'metrics.json'} ({os.strerror(code)}): "
        f"{storage.DISK_FAULTS[code]}, then run the command again"
    )


def test_an_output_folder_on_a_read_only_file_system_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Path, "mkdir", failing(errno.EROFS))
    with pytest.raises(UserError, match=r"cannot write .*export \(Read-only file system\): choose a folder on a writable"):
        storage.make_dir(tmp_path / "export")


def test_any_command_that_meets_a_full_disk_ends_in_one_line(capsys) -> None:
    def command(argv: Any) -> int:
        print("partial output")
        raise OSError(errno.ENOSPC, "No space left on device")

    assert run_main(command, []) == 2
    fix = "free some disk space, then run the command again"
    assert capsys.readouterr().err == f"error: cannot write the output (No space left on device): {fix}\n"


def test_evaluate_into_a_read_only_folder_is_one_line_not_a_traceback(
    scratch_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from inat_keras.cli import evaluate

    monkeypatch.setattr(Path, "mkdir", failing(errno.EROFS))
    assert run_main(evaluate.main, [str(scratch_run), "--out", str(tmp_path / "eval"), "--wandb", "off"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmp_path / 'eval'} (Read-only file system)") and err.count("\n") == 1


def tiny_config(data: Path, out: Path, name: str = "run", **train: Any) -> RunConfig:
    return RunConfig(
        name=name,
        out=str(out),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=8),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8]},
        train=TrainConfig(**{"epochs": 1, **train}),
        tracking=TrackingConfig(wandb="off"),
    )


def test_a_full_disk_when_a_run_starts_is_one_line_and_frees_the_name(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from inat_keras.training import loop

    mkstemp, run_dir = storage.tempfile.mkstemp, tmp_path / "runs" / "run"

    def full_disk_at(first: str) -> Any:
        """mkstemp failing from the file named ``first`` on (the data check's cache in the home still writes)."""

        def make(*args: Any, dir: str, prefix: str, **kwargs: Any) -> Any:
            if Path(dir).is_relative_to(tmp_path / "runs") and prefix >= first:
                raise OSError(errno.ENOSPC, "No space left on device")
            return mkstemp(*args, dir=dir, prefix=prefix, **kwargs)

        return make

    monkeypatch.setattr(storage.tempfile, "mkstemp", full_disk_at(".split."))  # the traceback of the report
    with pytest.raises(UserError) as caught:
        loop.train_run(tiny_config(tiny_dataset, tmp_path / "runs"), verbose=0, log=lambda message: None)
    assert str(caught.value) == f"cannot write {run_dir / runs.SPLIT_FILE} (No space left on device): " + (
        "free some disk space, then run the command again"
    )
    assert not run_dir.exists()

    monkeypatch.setattr(storage.tempfile, "mkstemp", full_disk_at(""))  # data-check.json, the run's first file
    with pytest.raises(UserError) as caught:
        loop.train_run(tiny_config(tiny_dataset, tmp_path / "runs"), verbose=0, log=lambda message: None)
    assert str(caught.value) == (
        f"cannot write {run_dir / runs.DATA_CHECK_FILE} (No space left on device): "
        "free disk space or choose a writable --out, then run the command again"
    )
    assert not run_dir.exists()  # and the removed folder is not named for --resume


def test_a_full_disk_is_not_reported_as_out_of_memory_and_a_removed_run_is_not_named(tmp_path: Path) -> None:
    ResourceExhaustedError = type("ResourceExhaustedError", (Exception,), {})
    disk = ResourceExhaustedError("cache/train_0.data: No space left on device [Op:IteratorGetNext]")
    memory = ResourceExhaustedError("OOM when allocating tensor with shape[64,32,224,224]")
    assert faults.is_disk_full(disk) and not faults.is_out_of_memory(disk)
    assert faults.is_out_of_memory(memory) and not faults.is_disk_full(memory)
    config = RunConfig(name="r", data=DataConfig(batch_size=64, cache=str(tmp_path / "cache")))
    run_dir = tmp_path / "runs" / "r"
    assert str(tmp_path / "cache") in faults.disk_full_message(config, run_dir, kept=False)
    assert str(run_dir) not in faults.disk_full_message(config, run_dir, kept=False)
    assert str(run_dir) not in faults.out_of_memory_message(config, run_dir, kept=False)
    assert f"--resume {run_dir}" in faults.disk_full_message(config, run_dir, kept=True)


# -- run files that parse but are wrong ---------------------------------------------------------------


def test_a_state_json_missing_keys_names_the_file_and_what_to_delete(tmp_path: Path) -> None:
    from inat_keras.training import checkpoints

    (tmp_path / "checkpoint").mkdir()
    for state, problem in [
        ({"epochs_done": 2}, '"checkpoint" is missing'),
        ([1, 2], "a JSON list where an object belongs"),
        ({**checkpoints.new_state(), "epochs_done": "2"}, "\"epochs_done\" is '2'"),
        ({**checkpoints.new_state(), "history": [1]}, '"history" is not a list of epochs'),
    ]:
        (tmp_path / runs.STATE_FILE).write_text(json.dumps(state))
        with pytest.raises(UserError) as caught:
            checkpoints.load_state(tmp_path, print)
        assert str(caught.value) == (
            f"{tmp_path / runs.STATE_FILE} is damaged ({problem}): delete it to train {tmp_path} again from epoch 1"
        )


def test_a_split_csv_with_a_label_that_is_not_a_class_names_the_file_and_line(tmp_path: Path) -> None:
    from inat_keras.data.files import load_split

    (tmp_path / runs.SPLIT_FILE).write_text("path,label,subset\na.png,cat,train\nb.png,zebra,test\n")
    with pytest.raises(UserError, match=r"split\.csv line 3 has label 'zebra' \(the run's classes: cat, dog\): restore it"):
        load_split(tmp_path, ["cat", "dog"])
    (tmp_path / runs.SPLIT_FILE).write_text("path,label,subset\na.png,cat,holdout\n")
    with pytest.raises(UserError, match=r"line 2 has subset 'holdout'"):
        load_split(tmp_path, ["cat", "dog"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([1, 2], "a JSON list where an object of settings belongs"),
        ("run", "a JSON str where an object of settings belongs"),
        ({"name": "r", "train": "fast"}, "\"train\" is 'fast' where a section of settings belongs"),
        ({"data": {}}, '"name" is missing or not a string'),
        ({"name": "r", "train": {"epochs": "ten"}}, "TrainConfig setting epochs is 'ten', not of type int"),
    ],
)
def test_a_config_json_of_the_wrong_shape_is_refused_by_resume_in_one_line(
    tmp_path: Path, capsys, content: Any, problem: str
) -> None:
    from inat_keras.cli import train_scratch

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / runs.CONFIG_FILE).write_text(json.dumps(content))
    assert run_main(train_scratch.main, ["--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err == f"error: {run_dir / runs.CONFIG_FILE} is damaged ({problem}): {runs.CONFIG_FIX}\n"


def truncated_copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def test_a_truncated_checkpoint_or_best_model_is_called_damaged_not_missing(scratch_run: Path, tmp_path: Path) -> None:
    from inat_keras.inspection.trained import load_trained
    from inat_keras.training.checkpoints import load_checkpoint

    (tmp_path / "checkpoint").mkdir()
    truncated_copy(scratch_run / runs.BEST_MODEL, tmp_path / "checkpoint" / "epoch-002.keras")
    with pytest.raises(UserError, match=r"epoch-002\.keras is damaged: truncated or not a \.keras archive .*: delete "):
        load_checkpoint(tmp_path, "epoch-002.keras")
    model = truncated_copy(scratch_run / runs.BEST_MODEL, tmp_path / "best.keras")
    with pytest.raises(UserError, match=r"best\.keras is damaged: truncated") as caught:
        load_trained(model, classes=["a", "b"])
    assert "not found" not in str(caught.value)


# -- one process per run directory --------------------------------------------------------------------


def test_a_second_holder_of_a_run_directory_is_refused_naming_the_pid(tmp_path: Path) -> None:
    refused = pytest.raises(UserError, match=rf"{tmp_path} is in use by another run \(PID {os.getpid()}\): wait")
    # flock locks belong to an open file: a second open of the same file is a second holder.
    with locks.exclusive_lock(tmp_path), refused, locks.exclusive_lock(tmp_path):
        pass
    with locks.exclusive_lock(tmp_path):  # released at the end of the block
        pass


def test_a_new_run_whose_name_was_taken_while_it_waited_is_refused_under_the_lock(tmp_path: Path) -> None:
    (tmp_path / runs.CONFIG_FILE).write_text("{}")
    with pytest.raises(UserError, match="already holds a run"), runs.run_dir_locked(tmp_path, resume=False):
        pass
    with runs.run_dir_locked(tmp_path, resume=True):
        pass


def test_the_lock_of_a_killed_process_is_gone_with_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from inat_keras.locks import exclusive_lock\n"
            f"with exclusive_lock(Path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match=rf"\(PID {holder.pid}\)"), locks.exclusive_lock(tmp_path, "training process"):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with locks.exclusive_lock(tmp_path):
        pass


# -- Ctrl-C before the first epoch -------------------------------------------------------------------


def test_ctrl_c_before_the_first_epoch_names_the_resume_command_or_frees_the_name(
    tiny_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from inat_keras.training import loop

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "set_up_training", interrupt)  # building the model and the pipeline: config.json is written
    with pytest.raises(faults.Interrupted) as caught:
        loop.train_run(tiny_config(tiny_dataset, tmp_path / "runs"), verbose=0, log=lambda message: None)
    again = f"python train_scratch.py --resume {tmp_path / 'runs' / 'run'}"
    assert str(caught.value) == f"interrupted before epoch 1 finished: continue with `{again}`"
    assert (tmp_path / "runs" / "run" / runs.CONFIG_FILE).is_file()

    monkeypatch.setattr(loop, "save_split", interrupt)  # before config.json: nothing a resume could continue
    with pytest.raises(faults.Interrupted, match="interrupted before the run was set up: nothing was kept"):
        loop.train_run(tiny_config(tiny_dataset, tmp_path / "runs", "other"), verbose=0, log=lambda message: None)
    assert not (tmp_path / "runs" / "other").exists()


def test_ctrl_c_outside_a_run_is_exit_2_with_a_line(capsys) -> None:
    def command(argv: Any) -> int:
        raise KeyboardInterrupt

    assert run_main(command, []) == 2
    assert capsys.readouterr().err.startswith("error: interrupted: ")


# -- a loss that diverges but stays finite -----------------------------------------------------------


def test_divergence_is_a_loss_far_above_uniform_guessing_never_a_normal_one() -> None:
    from inat_keras.training.checkpoints import diverging

    def rows(*losses: float) -> list[dict[str, float]]:
        return [{"loss": loss} for loss in losses]

    assert diverging(4e19, rows(4e19), 10)  # --learning-rate 1e6, epoch 1
    assert diverging(3000.0, rows(2.3, 3000.0), 10)  # a thousand times the first epoch's
    assert diverging(250.0, rows(240.0, 250.0), 10)  # two epochs a hundred times ln(10)
    assert not diverging(240.0, rows(240.0), 10)
    assert not diverging(2.5, rows(2.3, 2.1, 2.5), 10)  # a normal bump
    assert not diverging(1.0, rows(0.0005, 1.0), 10)  # a jump from a tiny loss, still below uniform guessing
    assert not diverging(math.log(10) * 3, rows(math.log(10) * 3), 10)  # label smoothing, mixup, weight decay


def test_a_diverging_run_stops_like_a_nan_one_naming_the_learning_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    from inat_keras.training import loop

    config = tiny_config(tiny_dataset, tmp_path / "runs", epochs=2, learning_rate=1e6, optimizer="sgd", momentum=0.0)
    with pytest.raises(UserError) as caught:
        loop.train_run(config, verbose=0, log=lambda message: None)
    message = str(caught.value)
    assert "the learning rate (1000000.0) is probably too high" in message and "in epoch 1" in message
    assert not (tmp_path / "runs" / "run").exists()  # no sane epoch: no best model, and the name is free


def test_a_diverged_epoch_is_not_saved_and_the_last_sane_one_stays_the_best(tmp_path: Path) -> None:
    import keras

    from inat_keras.training.checkpoints import EpochCheckpoint, new_state

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    state = new_state()
    callback = EpochCheckpoint(tmp_path, state, None, title="t")
    callback.set_model(model)
    for epoch, loss in enumerate([2.3, 1.9, 5e7]):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": loss, "accuracy": 0.5, "val_loss": loss, "val_accuracy": 0.4 + epoch / 10})
    assert state["stopped"] == "diverged" and model.stop_training
    assert state["epochs_done"] == 2 and state["best_epoch"] == 2 and state["checkpoint"] == "epoch-002.keras"
    assert json.loads((tmp_path / runs.STATE_FILE).read_text())["epochs_done"] == 2
    assert os.path.samefile(tmp_path / runs.BEST_MODEL, tmp_path / "checkpoint" / "epoch-002.keras")


# -- the data check ------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, side: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (side, side), (index * 40, 20, 30)).save(folder / f"{index}.png")


def test_the_check_names_different_classes_in_train_and_val(tmp_path: Path, capsys) -> None:
    from inat_keras.cli import check_data

    for split, classes in (("train", "ab"), ("val", "ac")):
        for name in classes:
            write_images(tmp_path / split / name, 2)
    assert check_data.main([str(tmp_path), "--quiet", "--no-cache"]) == 1
    assert "problem: train/ and val/" in capsys.readouterr().out


def test_the_check_names_a_class_without_images_as_the_worst_imbalance_and_lists_linked_folders(tmp_path: Path) -> None:
    from inat_keras.data.check import check_dataset
    from inat_keras.data.report import format_report

    write_images(tmp_path / "train" / "astronaut", 4)
    (tmp_path / "train" / "empty").mkdir()
    write_images(tmp_path / "val" / "astronaut", 2)
    write_images(tmp_path / "val" / "empty", 2)
    os.symlink(tmp_path / "val" / "astronaut", tmp_path / "train" / "astronaut" / "more")
    report = check_dataset(tmp_path, use_cache=False)
    assert report.imbalance["train"]["smallest"] == ["empty", 0]
    text = format_report(report)
    assert "class imbalance in train (largest / smallest): a class has no usable image (astronaut 4, empty 0)" in text
    assert {"path": str(tmp_path / "train" / "astronaut" / "more"), "reason": "link to a folder (not followed)"} in report.ignored


def test_a_huge_image_is_too_large_for_the_check_and_pillow_never_warns(tmp_path: Path, monkeypatch) -> None:
    from inat_keras.data.check import inspect_file
    from inat_keras.data.decode import decode_with_pillow

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow warns above this, and refuses above twice it
    Image.new("RGB", (12, 12)).save(tmp_path / "big.png")  # 144 pixels: the warning's range
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        verdict = inspect_file(str(tmp_path / "big.png"))
        decode_with_pillow(tmp_path / "big.png", 8)
    assert verdict.status == "too_large" and "12x12 pixels" in verdict.detail
    assert not [warning for warning in caught if issubclass(warning.category, Image.DecompressionBombWarning)]
