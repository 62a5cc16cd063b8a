"""The local sweep analysis, on trial.json files written by KerasTuner's own Trial class."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras_tuner as kt
import pytest
from keras_tuner.engine.trial import Trial

from inat_keras.cli.sweep_analysis import main
from inat_keras.errors import UserError
from inat_keras.search.analysis import ANALYSIS_FILES, write_analysis


def save_trial(search_dir: Path, trial_id: str, values: dict, status: str, metrics: dict | None = None) -> None:
    hp = kt.HyperParameters()
    hp.Choice("activation", ["relu", "gelu"])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Boolean("batch_norm")
    hp.Fixed("num_blocks", 5)
    hp.values.update(values)
    trial = Trial(hp, trial_id=trial_id, status=status)
    for name, value in (metrics or {}).items():
        trial.metrics.register(name, direction="max" if "accuracy" in name else "min")
        trial.metrics.update(name, value)
    folder = search_dir / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    trial.save(str(folder / "trial.json"))


@pytest.fixture
def search_dir(tmp_path: Path) -> Path:
    """Ten trials where gelu and a higher learning rate go with higher accuracy; batch norm is noise."""
    folder = tmp_path / "runs" / "sweep" / "search"
    for i in range(10):
        activation = "gelu" if i % 2 else "relu"
        learning_rate = 1e-4 * 10 ** (2 * i / 9)
        accuracy = 0.4 + 0.25 * (activation == "gelu") + 0.05 * math.log10(learning_rate / 1e-4) + 0.01 * (i % 3)
        values = {"activation": activation, "learning_rate": learning_rate, "batch_norm": i % 3 == 0, "num_blocks": 5}
        metrics = {
            "val_accuracy": accuracy,
            "val_loss": 2 - accuracy,
            "trial_start": 1.8e9 + 60 * i,
            "trial_seconds": 30 + i,
            "epochs_run": 4,
        }
        save_trial(folder, f"{i:02d}", values, "COMPLETED", metrics)
    save_trial(folder, "10", {"activation": "relu", "learning_rate": 1e-3, "batch_norm": True, "num_blocks": 5}, "FAILED")
    save_trial(folder, "11", {"activation": "gelu", "learning_rate": 2e-3, "batch_norm": False, "num_blocks": 5}, "RUNNING")
    return folder


def test_the_analysis_writes_every_file_with_one_row_per_trial(search_dir: Path) -> None:
    analysis = write_analysis(search_dir)
    for name in ANALYSIS_FILES:
        assert (search_dir / name).stat().st_size > 0, name
    with open(search_dir / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial_id"] for row in rows] == [f"{i:02d}" for i in range(12)]
    assert list(rows[0])[:4] == ["trial_id", "start_time", "duration_s", "status"]
    assert {"activation", "learning_rate", "batch_norm", "num_blocks", "val_accuracy", "val_loss"} <= set(rows[0])
    assert rows[10]["status"] == "FAILED" and rows[10]["val_accuracy"] == ""
    assert float(rows[3]["duration_s"]) == 33 and rows[3]["start_time"].startswith("2027-")
    assert analysis.best["trial_id"] == "09"  # gelu and the highest learning rate
    assert analysis.best["hyperparameters"]["activation"] == "gelu"


def test_importance_and_correlation_point_at_the_hyperparameters_that_matter(search_dir: Path) -> None:
    analysis = write_analysis(search_dir)
    rows = {row["parameter"]: row for row in analysis.importance}
    assert set(rows) == {"activation=gelu", "activation=relu", "learning_rate", "batch_norm"}  # num_blocks never varied
    assert rows["activation=gelu"]["correlation"] > 0.5 > -0.5 > rows["activation=relu"]["correlation"]
    assert rows["learning_rate"]["correlation"] > 0.3
    noise = rows["batch_norm"]["importance"]
    assert rows["learning_rate"]["importance"] > noise
    assert max(rows["activation=gelu"]["importance"], rows["activation=relu"]["importance"]) > noise


def test_the_summary_is_written_from_the_numbers(search_dir: Path) -> None:
    write_analysis(search_dir)
    summary = (search_dir / "summary.md").read_text()
    assert "12 trials: 10 completed, 1 failed, 1 unfinished" in summary
    assert "trial 09" in summary
    assert "gelu went with the highest" in summary
    assert "**learning_rate**" in summary and "higher values went with higher accuracy" in summary
    assert "num_blocks" not in summary  # a fixed value explains nothing
    best_trials = summary.split("## Best trials")[1].split("##")[0]
    assert best_trials.index("| 09 |") < best_trials.index("| 07 |")


def test_the_summary_gives_the_median_of_an_even_number_of_trials(search_dir: Path) -> None:
    analysis = write_analysis(search_dir)
    accuracy = sorted(t.accuracy for t in analysis.trials if t.completed)
    median = (accuracy[4] + accuracy[5]) / 2  # ten completed trials: between the fifth and the sixth
    assert f"the median of the completed trials is {median:.4f}" in (search_dir / "summary.md").read_text()


def test_the_summary_follows_the_numbers_when_they_point_the_other_way(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    for i in range(6):  # relu and a lower learning rate win this time
        activation = "relu" if i % 2 else "gelu"
        learning_rate = 1e-2 / 10 ** (2 * i / 5)
        accuracy = 0.4 + 0.2 * (activation == "relu") + 0.05 * i
        values = {"activation": activation, "learning_rate": learning_rate, "batch_norm": True, "num_blocks": 5}
        save_trial(folder, f"{i:02d}", values, "COMPLETED", {"val_accuracy": accuracy, "trial_start": 1.8e9 + i})
    write_analysis(folder)
    summary = (folder / "summary.md").read_text()
    assert "relu went with the highest" in summary and "gelu went with the highest" not in summary
    assert "**learning_rate**" in summary and "lower values went with higher accuracy" in summary
    assert "6 trials: 6 completed" in summary and "trial 05" in summary and "hints, not conclusions" in summary


def test_a_search_without_completed_trials_still_gets_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    save_trial(folder, "0", {"activation": "relu", "learning_rate": 1e-3, "batch_norm": True, "num_blocks": 5}, "RUNNING")
    analysis = write_analysis(folder)
    assert analysis.best is None and analysis.importance == []
    assert "No trial has completed yet" in (folder / "summary.md").read_text()
    assert (folder / "parallel_coordinates.png").exists()


def test_the_command_redoes_the_analysis_and_refuses_a_folder_without_trials(search_dir: Path, tmp_path: Path, capsys) -> None:
    assert main([str(search_dir)]) == 0
    assert "best val accuracy" in capsys.readouterr().out
    with pytest.raises(UserError, match="holds no trial_"):
        main([str(tmp_path)])
    with pytest.raises(UserError, match="does not exist"):
        main([str(tmp_path / "missing")])


def test_the_command_takes_the_search_run_as_well_as_its_search_folder(search_dir: Path, capsys) -> None:
    (search_dir / "summary.md").unlink(missing_ok=True)
    assert main([str(search_dir.parent)]) == 0
    assert str(search_dir) in capsys.readouterr().out
    assert (search_dir / "summary.md").exists()
