"""The local sweep analysis, on trial.json files written by KerasTuner's own Trial class."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras_tuner as kt
import pytest
from keras_tuner.engine.trial import Trial

from conftest import make_dataset_root
from inat_keras.cli.sweep_analysis import main
from inat_keras.errors import UserError
from inat_keras.search.analysis import ANALYSIS_FILES, write_analysis
from inat_keras.storage import write_json


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
    assert list(rows[0])[:5] == ["trial", "trial_id", "start_time", "duration_s", "status"]
    assert [int(row["trial"]) for row in rows] == list(range(1, 13))  # KerasTuner's "Running Trial #N"
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
    assert "trial 10" in summary  # trial_id 09 is KerasTuner's Running Trial #10
    assert "gelu went with the highest" in summary
    assert "**learning_rate**" in summary and "higher values went with higher accuracy" in summary
    assert "num_blocks" not in summary  # a fixed value explains nothing
    best_trials = summary.split("## Best trials")[1].split("##")[0]
    assert best_trials.index("| 10 |") < best_trials.index("| 8 |")  # trial ids 09 and 07


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
    assert "6 trials: 6 completed" in summary and "trial 6" in summary and "hints, not conclusions" in summary


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


def chance_search(folder: Path, accuracies: list[float]) -> Path:
    for i, accuracy in enumerate(accuracies):
        values = {"activation": "gelu" if i % 2 else "relu", "learning_rate": 1e-3 * (i + 1), "batch_norm": True, "num_blocks": 5}
        save_trial(folder, f"{i:02d}", values, "COMPLETED", {"val_accuracy": accuracy, "trial_start": 1.8e9 + i})
    return folder


def test_a_search_whose_every_trial_ended_at_chance_says_so_in_its_headline_and_summary(tmp_path: Path) -> None:
    folder = chance_search(tmp_path / "search", [0.094, 0.112, 0.131])  # 10 classes: guessing scores 0.1
    analysis = write_analysis(folder, num_classes=10)
    assert analysis.near_chance
    assert "warning: every completed trial ended near chance (0.1000 with 10 classes)" in analysis.headline
    summary = (folder / "summary.md").read_text()
    assert "**Warning: every completed trial ended near chance: the best validation accuracy 0.1310" in summary
    assert "guessing among 10 classes" in summary and "these differences are noise" in summary
    assert "hints, not conclusions" not in summary


def test_one_trial_clearly_above_chance_is_no_chance_search(tmp_path: Path) -> None:
    folder = chance_search(tmp_path / "search", [0.094, 0.112, 0.21])
    analysis = write_analysis(folder, num_classes=10)
    assert not analysis.near_chance and "chance" not in analysis.headline
    assert "chance" not in (folder / "summary.md").read_text()


def test_the_class_count_comes_from_the_dataset_that_search_json_names(tmp_path: Path) -> None:
    data = make_dataset_root(tmp_path / "data", num_classes=3, train_per_class=1, val_per_class=1)
    folder = chance_search(tmp_path / "runs" / "sweep" / "search", [0.30, 0.36])  # 3 classes: guessing scores 0.333
    write_json(folder / "search.json", {"tuner": "random", "base": {"data": {"data_dir": str(data)}}})
    analysis = write_analysis(folder)
    assert analysis.num_classes == 3 and analysis.near_chance
    assert "(0.3333 with 3 classes)" in analysis.headline
    # Once the best trial is retrained, its config.json beside search/ names the classes.
    write_json(folder.parent / "config.json", {"class_names": [str(i) for i in range(10)]})
    analysis = write_analysis(folder)
    assert analysis.num_classes == 10 and not analysis.near_chance


def hand_trials() -> list:
    from inat_keras.search.trials import TrialRecord

    trials = []
    for i, (blocks, activation, accuracy) in enumerate(
        [(4, "relu", 0.31), (5, "gelu", 0.62), (5, "relu", 0.55), (4, "gelu", 0.48)]
    ):
        metrics = {"val_accuracy": accuracy, "trial_start": 1.8e9 + 60 * i}
        trials.append(TrialRecord(f"{i:02d}", "COMPLETED", {"num_blocks": blocks, "activation": activation}, metrics))
    return trials


def test_the_legend_of_accuracy_by_start_time_sits_outside_the_axes_where_it_hides_no_trial() -> None:
    import matplotlib.pyplot as plt

    from inat_keras.search.analysis_plots import draw_accuracy_vs_created

    figure = draw_accuracy_vs_created(hand_trials(), "sweep")
    axis = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    legend, frame = axis.get_legend().get_window_extent(renderer), axis.get_window_extent(renderer)
    assert legend.x0 >= frame.x1  # right of the axes, so the lowest point (0.31, first trial) stays visible
    assert sorted(text.get_text() for text in axis.texts) == ["1", "2", "3", "4"]  # trial ids 00-03 as KerasTuner numbers them
    plt.close(figure)


def test_parallel_coordinates_tick_an_integer_hyperparameter_at_whole_numbers_in_readable_boxes() -> None:
    import matplotlib.pyplot as plt

    from inat_keras.search.analysis_plots import draw_parallel_coordinates

    figure = draw_parallel_coordinates(hand_trials(), ["num_blocks", "activation"], {}, "sweep")
    axis = figure.axes[0]
    labels = {round(text.get_position()[0]): [] for text in axis.texts}
    for text in axis.texts:
        labels[round(text.get_position()[0])].append(text.get_text())
    assert labels[0] == ["4", "5"]  # not 4, 4.5, 5
    assert labels[1] == ["gelu", "relu"]
    lines = max(line.get_zorder() for line in axis.get_lines())
    for text in axis.texts:  # drawn over the trial lines, on white
        assert text.get_zorder() > lines and text.get_bbox_patch().get_facecolor()[:3] == (1.0, 1.0, 1.0)
    plt.close(figure)


def test_integer_axes_tick_the_values_taken_or_about_five_whole_numbers() -> None:
    from inat_keras.search.analysis_plots import axis_positions

    _, ticks = axis_positions("filters", [16, 64, 32], categorical=False, log=False)
    assert [label for _, label in ticks] == ["16", "32", "64"]
    _, ticks = axis_positions("units", list(range(10, 101, 10)), categorical=False, log=False)
    assert all(label.isdigit() for _, label in ticks) and 4 <= len(ticks) <= 7
    _, ticks = axis_positions("dropout", [0.1, 0.2], categorical=False, log=False)
    assert [label for _, label in ticks] == ["0.1", "0.15", "0.2"]
    # A numeric Choice: its values evenly spaced and each labelled, 0 included (no log axis could hold it).
    positions, ticks = axis_positions("l2", [1e-4, 0.0], categorical=False, log=False, choices=[0.0, 1e-5, 1e-4, 1e-3])
    assert positions == [2 / 3, 0.0] and [label for _, label in ticks] == ["0", "1e-05", "0.0001", "0.001"]
