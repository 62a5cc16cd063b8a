"""compare: a table and chart of finished runs, ranked within each dataset, on hand-written run files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from inat_keras.cli.compare import main as compare_main
from inat_keras.cli.run import run_main

DIGITS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]


def fake_run(runs: Path, name: str, config: dict, metrics: dict | None) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": name, **config}))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def scratch_and_transfer_runs(runs: Path) -> None:
    """Two 10-class runs on one dataset, a 3-class run on another (the best accuracy), an unfinished run."""
    common = {"epochs_run": 10, "train_seconds": 120.5, "val_accuracy": 0.5}
    digits = {"data_dir": "/data/digits", "image_size": 32}
    fake_run(
        runs,
        "scratch-a",
        {"kind": "scratch", "model": {"num_blocks": 5}, "data": digits, "class_names": DIGITS},
        {**common, "test_accuracy": 0.41, "trainable_params": 1_000, "num_params": 1_100},
    )
    fake_run(
        runs,
        "effnet",
        {"kind": "transfer", "model": {"backbone": "efficientnetv2s", "unfreeze": "all"}, "data": digits, "class_names": DIGITS},
        {**common, "test_accuracy": 0.86, "trainable_params": 20_000_000, "num_params": 20_300_000},
    )
    fake_run(
        runs,
        "three-birds",
        {"kind": "scratch", "model": {"num_blocks": 4}, "data": {"data_dir": "/data/birds", "image_size": 64}},
        {**common, "test_accuracy": 0.93, "trainable_params": 5_000, "num_params": 5_000, "class_names": ["a", "b", "c"]},
    )
    fake_run(runs, "unfinished", {"kind": "scratch"}, None)


def test_compare_ranks_runs_within_their_dataset_and_names_it_in_every_row(tmp_path: Path, capsys) -> None:
    runs, out = tmp_path / "runs", tmp_path / "cmp"
    scratch_and_transfer_runs(runs)
    assert run_main(compare_main, [str(runs / "*"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "unfinished" in printed
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    # The digits runs first (named first by the glob's order), best first; the 3-class run apart, though its accuracy is higher.
    assert [(row["run"], row["dataset"], row["classes"]) for row in rows] == [
        ("effnet", "/data/digits", "10"),
        ("scratch-a", "/data/digits", "10"),
        ("three-birds", "/data/birds", "3"),
    ]
    assert rows[0]["model"] == "efficientnetv2s (imagenet)" and rows[0]["training"] == "unfreeze all, two-phase"
    assert rows[1]["trainable_params"] == "1000" and rows[1]["kind"] == "scratch"
    table = (out / "comparison.md").read_text()
    assert "2 datasets: each is ranked on its own" in table
    digits, birds = table.split("## /data/digits (10 classes)")[1].split("## /data/birds (3 classes)")
    assert "| effnet | /data/digits | 10 | transfer |" in digits and "scratch-a" in digits and "three-birds" not in digits
    assert "| three-birds | /data/birds | 3 | scratch |" in birds and "effnet" not in birds
    assert "## /data/digits (10 classes)" in printed
    assert Image.open(out / "comparison.png").size[0] > 600
    assert run_main(compare_main, [str(runs / "unfinished")]) == 2


def test_runs_of_one_dataset_get_one_table_without_dataset_headings(tmp_path: Path) -> None:
    from inat_keras.inspection.compare import collect_rows, markdown_table

    runs = tmp_path / "runs"
    scratch_and_transfer_runs(runs)
    rows, _ = collect_rows([runs / "scratch-a", runs / "effnet"])
    table = markdown_table(rows)
    assert "##" not in table and table.index("| effnet |") < table.index("| scratch-a |")


def test_the_chart_gives_each_kind_one_colour_and_parameters_a_log_range_around_the_counts(tmp_path: Path) -> None:
    import matplotlib.colors
    import matplotlib.pyplot as plt

    from inat_keras.inspection.compare import KIND_COLOURS, collect_rows, draw_comparison, ranked_rows

    runs = tmp_path / "runs"
    scratch_and_transfer_runs(runs)
    rows, _ = collect_rows([runs / "scratch-a", runs / "effnet", runs / "three-birds"])
    figure = draw_comparison(ranked_rows(rows))
    accuracy, parameters = figure.axes[0], figure.axes[1]
    assert parameters.get_yscale() == "log"
    assert parameters.get_ylim() == (1e2, 1e8)  # decades around 1,000 (its bar visible) and 20,300,000, not from 10^0
    solid = accuracy.patches[:3]  # test accuracy: effnet, scratch-a, three-birds
    colours = [matplotlib.colors.to_hex(bar.get_facecolor(), keep_alpha=False) for bar in solid]
    scratch, transfer = (matplotlib.colors.to_hex(KIND_COLOURS[kind]) for kind in ("scratch", "transfer"))
    assert colours == [transfer, scratch, scratch]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["trained from scratch", "fine-tuned"]
    ticks = [label.get_text() for label in accuracy.get_xticklabels()]
    assert ticks[0].startswith("effnet\ndigits, 10") and ticks[2].startswith("three-birds\nbirds, 3")
    assert "grouped by dataset" in figure.get_suptitle()
    plt.close(figure)
