"""The speed benchmarks run end to end at toy sizes and end with their summary line; GPU defaults."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import augment
import finetune_cache
import pipeline
import train_step


@pytest.mark.slow
def test_the_pipeline_benchmark_ends_with_both_speedups(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "jpegs"
    args = [
        "--images",
        "12",
        "--classes",
        "3",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--rounds",
        "2",
        "--memory-images",
        "8,12",
        "--folder",
        str(folder),
    ]
    assert pipeline.main(args) == 0
    output = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("round ") for line in output) == 2
    probe = re.search(r"header check \(Python, holds the GIL\) +(\d+\.\d{3})$", "\n".join(output), re.MULTILINE)
    assert probe and float(probe.group(1)) < 5
    ceiling = re.search(r"any pipeline that decodes these JPEGs with libjpeg-turbo: (\d+\.\d\d)x", "\n".join(output))
    assert ceiling and float(ceiling.group(1)) > 0
    quality = re.search(r"PSNR .*: baseline (\d+\.\d) dB, ours (\d+\.\d) dB", "\n".join(output))
    assert quality and min(float(quality.group(1)), float(quality.group(2))) > 15
    last = output[-1]
    assert re.fullmatch(
        r"pipeline_speedup_first_epoch=\d+\.\d\d pipeline_speedup_later_epochs=\d+\.\d\d later_vs_strong_recipe=\d+\.\d\d "
        r"bytes_per_image=-?\d+ first_batch_seconds=\d+\.\d{3}",
        last,
    ), last
    sides = [max(Image.open(path).size) for path in folder.glob("*/*.jpg")]
    assert len(sides) == 12 and min(sides) >= 500 and max(sides) <= 800


@pytest.mark.parametrize("augment", [[], ["--augment", "--augment-placement", "model"]], ids=["plain", "augment-in-model"])
def test_the_train_step_benchmark_reports_both_feeds_and_the_pipeline_cost(tmp_path: Path, capsys, augment) -> None:
    args = [
        "--models",
        "scratch",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--images",
        "8",
        "--folder",
        str(tmp_path / "jpegs"),
        *augment,
    ]
    assert train_step.main(args) == 0
    output = capsys.readouterr().out.strip().splitlines()
    assert ("augment=True in the model" in "\n".join(output)) == bool(augment)
    last = output[-1]
    assert re.fullmatch(r"scratch_pipeline=[\d.]+ scratch_memory=[\d.]+ scratch_pipeline_cost_pct=-?[\d.]+", last), last


def test_augmentation_stays_float32_under_mixed_precision() -> None:
    import keras
    import numpy as np

    from inat_keras.models.augment import make_augmentation

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        augmented = make_augmentation(seed=0)(np.full((2, 16, 16, 3), 200.0, "float32"), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert augmented.dtype == "float32"


@pytest.mark.slow
def test_the_feature_cache_benchmark_times_both_runs_and_ends_with_their_ratio(tiny_dataset: Path, capsys) -> None:
    args = ["--data", str(tiny_dataset), "--image-size", "32", "--batch-size", "8", "--epochs", "2"]
    assert finetune_cache.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"cached_seconds=([\d.]+) every_epoch_seconds=([\d.]+) speedup=([\d.]+)", last)
    assert match, last
    cached, every_epoch, speedup = map(float, match.groups())
    assert cached > 0 and every_epoch > 0 and speedup == pytest.approx(every_epoch / cached, abs=0.02 * speedup + 0.01)


def test_the_augmentation_benchmark_compares_both_stacks_and_ends_with_the_speedups(capsys) -> None:
    assert augment.main(["--image-size", "24", "--batch-size", "4", "--batches", "2", "--rounds", "2"]) == 0
    output = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("round ") for line in output) == 2
    rows = {tuple(line.split()[:2]) for line in output if line.startswith(("ours ", "Keras "))}
    assert rows == {("ours", "tf.data"), ("ours", "compiled"), ("Keras", "tf.data"), ("Keras", "compiled")}
    assert sum(line.startswith("ours    compiled + XLA") for line in output) == 1
    assert re.fullmatch(r"augment_speedup_pipeline=\d+\.\d\d augment_speedup_compiled_xla=\d+\.\d\d", output[-1]), output[-1]


@pytest.mark.slow
def test_the_train_step_benchmark_prints_the_gpu_table_of_precisions_and_xla(tmp_path: Path, capsys) -> None:
    args = [
        "--models",
        "scratch",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--images",
        "8",
        "--folder",
        str(tmp_path / "jpegs"),
        "--table",
    ]
    assert train_step.main(args) == 0
    output = capsys.readouterr().out.strip().splitlines()
    header = output.index("| model (native size) | float32 | float32 + XLA | mixed_float16 | mixed_float16 + XLA |")
    row = output[header + 2]
    assert re.fullmatch(r"\| scratch CNN \(32\)( \| [\d,]+ \([\d,]+\)){4} \|", row), row
    keys = ["float32", "float32_xla", "mixed_float16", "mixed_float16_xla"]
    assert re.fullmatch(" ".join(rf"scratch_{key}=\d+\.\d" for key in keys), output[-1]), output[-1]
