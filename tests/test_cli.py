"""What a user meets at the command line: help texts, early errors, quiet start-up, interrupts, the demos' settings."""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import REPO
from inat_keras.cli import finetune as finetune_cli
from inat_keras.cli import run as cli_run
from inat_keras.cli.defaults import shown
from inat_keras.cli.main import COMMANDS
from inat_keras.cli.run import run_main, typed_command
from inat_keras.config import RunConfig
from inat_keras.runs import MODEL_SUMMARY_FILE
from inat_keras.training.faults import Interrupted

# A line of TensorFlow's C++ log (glog format: severity, date, time, thread, file:line]) or of its start-up.
TENSORFLOW_LOG_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|cudart_stub|cpu_feature_guard|oneDNN", re.M)


class StopAtParse(Exception):
    pass


def parser_of(module_name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The command's parser from its make_parser(), or by stopping its main() where it parses the flags."""
    module = importlib.import_module(module_name)
    if hasattr(module, "make_parser"):
        return module.make_parser()
    captured: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        captured.append(self)
        raise StopAtParse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(StopAtParse):
        module.main([])
    monkeypatch.undo()
    return captured[0]


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue  # positionals are not options; -h is argparse's
        flag = "/".join(action.option_strings)
        text = action.help % {**vars(action), "prog": parser.prog} if action.help else ""
        if not text.strip() or action.help is argparse.SUPPRESS:
            problems.append(f"{flag}: no help")
        elif isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction) or action.required:
            continue  # a switch is off unless given; a required option has no default
        elif action.default is None:
            if "default" not in text:
                problems.append(f"{flag}: the help does not say what happens without it: {text!r}")
        elif shown(action.default) not in text and str(action.default) not in text:
            problems.append(f"{flag}: the help does not show the default {action.default!r}: {text!r}")
    return problems


def test_every_option_of_every_command_has_a_help_that_names_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = []
    for name, (module_name, _) in COMMANDS.items():
        problems += [f"{name} {problem}" for problem in help_problems(parser_of(module_name, monkeypatch))]
    assert not problems, "\n".join(problems)


def test_the_help_shows_each_commands_own_defaults_and_the_demos() -> None:
    scratch = finetune_help = ""
    for module_name in ("inat_keras.cli.train_scratch", "inat_keras.cli.finetune"):
        text = " ".join(importlib.import_module(module_name).make_parser().format_help().split())
        if module_name.endswith("train_scratch"):
            scratch = text
        else:
            finetune_help = text
    assert "(default: 10; --demo: 10)" not in scratch, "a --demo value equal to the default is not repeated"
    assert "initial learning rate (of the head, in finetune.py) (default: 0.001; --demo: 0.002)" in scratch
    assert "(default: 20; --demo: 6)" in finetune_help  # --epochs
    assert "(default: imagenet; --demo: none)" in finetune_help  # --weights
    assert "(default: the backbone's native size; --demo: 32)" in finetune_help  # --image-size
    download = importlib.import_module("inat_keras.cli.download").make_parser().format_help()
    url = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
    assert any(word.startswith(url) for word in download.split()), f"the URL in one piece:\n{download}"


def test_a_bad_data_path_fails_before_tensorflow_is_imported(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from inat_keras.cli.run import run_main\n"
        "from inat_keras.cli.{module} import main\n"
        "status = run_main(main, ['--data', sys.argv[1], '--out', sys.argv[2]])\n"
        "print(status, 'tensorflow' in sys.modules)\n"
    )
    missing = tmp_path / "no-such-folder"
    no_val = tmp_path / "data"
    (no_val / "train" / "a").mkdir(parents=True)
    for module, data, message in (
        ("train_scratch", missing, f"data directory {missing} does not exist"),
        ("finetune", no_val, f"{no_val / 'val'} is missing"),
    ):
        command = [sys.executable, "-c", probe.format(module=module), str(data), str(tmp_path / "runs")]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
        assert f"error: {message}" in result.stderr


def test_an_out_folder_inside_a_file_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inat_keras.cli.train_scratch import main

    (tmp_path / "file").write_text("not a folder")
    assert run_main(main, ["--demo", "--out", str(tmp_path / "file" / "runs"), "--wandb", "off"]) == 2
    assert f"({tmp_path / 'file'} is not a folder): choose a writable --out directory" in capsys.readouterr().err


@pytest.mark.slow
def test_a_demo_run_starts_without_tensorflows_log_lines_and_keeps_its_model_summary(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # as a user starts it
    out = tmp_path / "runs"
    train = [sys.executable, "train_scratch.py", "--demo", "--epochs", "1", "--quiet", "--wandb", "off", "--no-report"]
    train += ["--out", str(out), "--name", "d"]
    result = subprocess.run(train, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not TENSORFLOW_LOG_LINE.search(result.stderr), result.stderr
    summary = (out / "d" / MODEL_SUMMARY_FILE).read_text(encoding="utf-8")
    assert "Total params" in summary and "conv2d" in summary.lower()

    image = next((out / "d").glob("split.csv")).read_text().splitlines()[1].split(",")[0]
    predict = [sys.executable, "-m", "inat_keras", "predict", str(out / "d"), image]
    result = subprocess.run(predict, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not TENSORFLOW_LOG_LINE.search(result.stderr), result.stderr


def test_start_up_noise_is_dropped_and_every_other_line_kept(capfd: pytest.CaptureFixture[str]) -> None:
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796174693.276145   15039 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796174693.282210   15039 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
        "compiler flags.",
        "E0000 00:00:1796174733.655547   16128 cuda_platform.cc:52] failed call to cuInit: INTERNAL: UNKNOWN ERROR (303)",
    ]
    kept = ["E0000 00:00:1796174733.655547   16128 some_op.cc:12] a real error", "UserWarning: a Python warning"]
    with cli_run.startup_lines_dropped():
        os.write(2, ("\n".join([*noise, *kept]) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == kept


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_interrupt_message_starts_on_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def interrupted(argv: Any) -> int:
        print("12/36 ━━━━━━━ 1s - accuracy: 0.9991", end="")  # Keras's progress bar, its line still open
        raise Interrupted("interrupted after epoch 2: continue with `python train_scratch.py --resume runs/x`")

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert run_main(interrupted, []) == 2
    assert terminal.getvalue().endswith("0.9991\n")
    assert capsys.readouterr().err.startswith("error: interrupted after epoch 2")


def test_the_command_to_continue_is_the_one_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["finetune.py", "--demo", "--tuner", "random", "--name", "my search"])
    assert typed_command("finetune.py", None) == "python finetune.py --demo --tuner random --name 'my search'"
    monkeypatch.setattr(sys, "argv", ["/x/inat_keras/__main__.py", "finetune", "--demo"])
    assert typed_command("finetune.py", ["--demo"]) == "python -m inat_keras finetune --demo"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/inat-keras", "train", "--demo"])
    assert typed_command("train_scratch.py", ["--demo"]) == "inat-keras train --demo"


def test_an_interrupted_search_names_its_trial_and_the_command_to_continue(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inat_keras.search.run as search_run
    from inat_keras.cli.train_scratch import main

    class InterruptedTuner:
        def __init__(self) -> None:
            self.trials_run = ["0", "1"]  # KerasTuner's ids: its trials #1 and #2

        def search(self, verbose: Any) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(search_run, "make_tuner", lambda *args: InterruptedTuner())
    monkeypatch.setattr(sys, "argv", ["pytest"])
    argv = ["--data", str(tiny_dataset), "--tuner", "random", "--image-size", "32", "--out", str(tmp_path / "runs")]
    argv += ["--wandb", "off", "--quiet"]
    with pytest.raises(Interrupted) as caught:
        main(argv)
    message = str(caught.value)
    assert message.startswith("interrupted during trial 2: the finished trials are kept in ")
    assert message.endswith(f"continue the search with `python train_scratch.py {' '.join(argv)}`")


def test_the_phase_header_names_the_phase_and_the_epoch_of_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    from inat_keras.training.finetune import Phase, PhaseProgress

    progress = PhaseProgress([Phase("head", 0, 1, 0, 1e-3), Phase("fine-tune", 1, 6, "all", 5e-4)])
    progress.set_params({"verbose": 1, "epochs": 1, "steps": 2})  # the head phase: a one-epoch fit
    progress.on_epoch_begin(0)
    progress.set_params({"verbose": 1, "epochs": 6, "steps": 2})
    progress.on_epoch_begin(1)
    assert capsys.readouterr().out.splitlines() == ["phase 1/2 (head), epoch 1/6", "phase 2/2 (fine-tune), epoch 2/6"]
    assert progress.epochs == 6, "Keras's epoch count is left as fit set it"


def fake_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Stand-ins for the training and the search the commands start: they record what they were given."""
    import inat_keras.search.run as search_run
    import inat_keras.training.loop as loop

    calls: list[dict[str, Any]] = []
    metrics = {"test_accuracy": 0.5}

    def train_run(config: RunConfig, **kwargs: Any) -> Any:
        calls.append({"config": config, **kwargs})
        return SimpleNamespace(run_dir=tmp_path / "runs" / config.name, metrics=metrics, messages=[])

    def run_search(config: RunConfig, settings: Any, **kwargs: Any) -> Any:
        calls.append({"config": config, "settings": settings, **kwargs})
        return SimpleNamespace(role="chief", messages=[], run=None, search_dir=tmp_path)

    monkeypatch.setattr(loop, "train_run", train_run)
    monkeypatch.setattr(search_run, "run_search", run_search)
    return calls


def test_the_finetune_demo_runs_offline_and_says_so_first(monkeypatch, tmp_path: Path, capsys) -> None:
    calls = fake_training(monkeypatch, tmp_path)
    assert finetune_cli.main(["--demo", "--out", str(tmp_path / "runs"), "--no-report", "--wandb", "off"]) == 0
    assert calls[0]["config"].model["weights"] is None
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("Demo: fine-tuning from random weights (--demo implies --weights none")

    assert finetune_cli.main(["--demo", "--weights", "imagenet", "--out", str(tmp_path / "runs"), "--no-report"]) == 0
    assert calls[1]["config"].model["weights"] == "imagenet"  # a --weights given is kept


def test_a_finetune_demo_search_keeps_the_demos_backbone(monkeypatch, tmp_path: Path, capsys) -> None:
    calls = fake_training(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    argv = ["--demo", "--tuner", "hyperband", "--max-trials", "3", "--out", str(tmp_path / "runs"), "--no-report"]
    argv += ["--wandb", "off"]
    assert finetune_cli.main(argv) == 0
    assert "backbone" not in calls[0]["settings"].space
    assert calls[0]["config"].model["backbone"] == "mobilenetv2"
    assert calls[0]["command"] == f"python finetune.py {' '.join(argv)}"
    assert "fixed by flags: backbone" in capsys.readouterr().out


def test_verbose_shows_the_model_summary_and_resume_accepts_it(monkeypatch, tmp_path: Path) -> None:
    from inat_keras.cli.train_scratch import main
    from inat_keras.storage import write_json

    calls = fake_training(monkeypatch, tmp_path)
    for flags in (["--verbose"], []):
        assert main(["--demo", *flags, "--name", "v", "--out", str(tmp_path / "runs"), "--no-report"]) == 0
    assert calls[0]["show_summary"] is True and calls[1]["show_summary"] is False
    assert calls[0]["config"].to_dict() == calls[1]["config"].to_dict(), "--verbose changes nothing the run records"

    run_dir = tmp_path / "runs" / "r"
    write_json(run_dir / "config.json", RunConfig(name="r", out=str(tmp_path / "runs"), demo=True).to_dict())
    assert main(["--resume", str(run_dir), "--verbose", "--no-report"]) == 0
    assert calls[2]["resume"] is True and calls[2]["show_summary"] is True


def test_a_run_directory_keeps_its_model_summary(scratch_run: Path) -> None:
    summary = (scratch_run / MODEL_SUMMARY_FILE).read_text(encoding="utf-8")
    assert "Total params" in summary and "Trainable params" in summary


def test_the_model_summary_keeps_long_layer_names_and_every_column(monkeypatch) -> None:
    import keras

    from inat_keras.training.setup import model_summary

    monkeypatch.delenv("COLUMNS", raising=False)  # as in a run whose output is not a terminal
    image = keras.Input((8, 8, 3), name="image")
    branch = keras.layers.Conv2D(2, 3, name="block7a_expansion_convolution")(image)
    pooled, flat = keras.layers.GlobalAveragePooling2D()(branch), keras.layers.Flatten()(image)
    merged = keras.layers.Concatenate(name="joined")([pooled, flat])
    summary = model_summary(keras.Model(image, keras.layers.Dense(3)(merged)))
    assert "│ block7a_expansion_convolution " in summary  # whole in its row (Keras still shortens it where it is an input)
    assert "Param #" in summary and "Connected to" in summary
    assert "COLUMNS" not in os.environ  # set for the summary only
