"""The image array pipeline: per-epoch permutations, the memmap cache, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset_root
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.data import files, pipeline
from inat_keras.data.decode import load_image


def labelled_pngs(folder: Path, count: int) -> files.LabelledFiles:
    """``count`` PNGs, image i filled with the value i, labelled i % 3: pixels tell which file a row came from."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(np.full((12, 12, 3), 5 * i, np.uint8)).save(path)
        paths.append(str(path))
    return files.LabelledFiles(paths, [i % 3 for i in range(count)])


def epoch_rows(batches) -> tuple[np.ndarray, np.ndarray]:
    """The file index (from the pixel value) and the label of every image in ``batches`` (a dataset, or a list)."""
    batches = list(batches)
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches]).argmax(axis=1)
    return (images[:, 0, 0, 0] / 5).astype(int), labels


def epochs_of(dataset, epochs: int, batches: int) -> list[list]:
    """``epochs`` epochs of an endless training dataset from one iterator, as ``fit(steps_per_epoch=batches)`` takes them."""
    iterator = iter(dataset)
    return [[next(iterator) for _ in range(batches)] for _ in range(epochs)]


def test_each_epoch_is_a_permutation_that_a_resumed_pipeline_repeats(tmp_path: Path) -> None:
    data = labelled_pngs(tmp_path / "imgs", 11)
    config = DataConfig(data_dir="unused", image_size=8, batch_size=4, seed=3)
    batches = pipeline.epoch_batches(11, 4)
    assert batches == 3
    fresh = pipeline.make_dataset(data, config, 3, training=True)
    orders = []
    for epoch, epoch_batches in enumerate(epochs_of(fresh, 3, batches)):
        assert [len(batch[0]) for batch in epoch_batches] == [4, 4, 3]  # an epoch ends with its short batch
        order, labels = epoch_rows(epoch_batches)
        assert sorted(order) == list(range(11))  # every image exactly once
        np.testing.assert_array_equal(labels, order % 3)  # labels stay with their images
        np.testing.assert_array_equal(order, pipeline.epoch_order(3, epoch, 11))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # a new shuffle every epoch
    for epoch in (1, 2):
        resumed = pipeline.make_dataset(data, config, 3, training=True, first_epoch=epoch)
        np.testing.assert_array_equal(epoch_rows(epochs_of(resumed, 1, batches)[0])[0], orders[epoch])
    validation = pipeline.make_dataset(data, config, 3, training=False)
    assert list(epoch_rows(validation)[0]) == list(range(11)) == list(epoch_rows(validation)[0])


def test_the_first_epoch_decodes_each_image_once_and_later_epochs_only_gather(tmp_path: Path, monkeypatch) -> None:
    data = labelled_pngs(tmp_path / "imgs", 11)
    decoded: list[str] = []
    monkeypatch.setattr(pipeline, "decode_with_pillow", lambda path, size: decoded.append(path) or load_image(path, size))
    config = DataConfig(data_dir="unused", image_size=8, batch_size=4, seed=3)
    epochs = epochs_of(pipeline.make_dataset(data, config, 3, training=True), 3, pipeline.epoch_batches(11, 4))
    assert sorted(decoded) == sorted(data.paths)  # once each, none again where the epochs meet or later
    for epoch in epochs:
        assert sorted(epoch_rows(epoch)[0]) == list(range(11))  # the gathered pixels are the decoded ones
        assert {batch[0].dtype.name for batch in epoch} == {"uint8"}
    uncached = DataConfig(**{**config.__dict__, "cache": "none"})
    decoded.clear()
    epochs_of(pipeline.make_dataset(data, uncached, 3, training=True), 2, pipeline.epoch_batches(11, 4))
    assert all(decoded.count(path) >= 2 for path in data.paths)  # --cache none decodes every epoch (and reads ahead)


def test_the_memmap_cache_is_reused_for_its_key_and_a_truncated_one_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    data = labelled_pngs(tmp_path / "imgs", 6)
    config = DataConfig(data_dir="unused", image_size=8, batch_size=4, cache=str(tmp_path / "cache" / "c"))
    first = pipeline.cached_images(data, config, 3, cache_name="train")
    assert not first.complete
    epochs_of(pipeline.batched(first, config, 6, training=True), 1, 2)
    assert first.complete
    (cache,) = (tmp_path / "cache").glob("*.u8")
    assert (cache.parent / (cache.name + ".done")).exists()

    decoded = []
    monkeypatch.setattr(pipeline, "decode_with_pillow", lambda path, size: decoded.append(path) or load_image(path, size))
    again = pipeline.cached_images(data, config, 3, cache_name="train")
    assert again.complete  # the same key: read back, nothing decoded
    order, labels = epoch_rows(pipeline.batched(again, config, 6, training=False))
    assert list(order) == list(range(6)) and list(labels) == [0, 1, 2, 0, 1, 2] and decoded == []

    # Another size, seed (its split) or dataset: another file.
    for other, other_data in [({"image_size": 10}, data), ({}, files.LabelledFiles(data.paths[:5], data.labels[:5]))]:
        other_config = DataConfig(**{**config.__dict__, **other})
        assert not pipeline.cached_images(other_data, other_config, 3, cache_name="train").complete
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3

    # A kill while the file was written: truncated, or its marker never written. Never read; decoded again.
    with open(cache, "r+b") as handle:
        handle.truncate(cache.stat().st_size // 2)
    rebuilt = pipeline.cached_images(data, config, 3, cache_name="train")
    assert not rebuilt.complete
    assert list(epoch_rows(pipeline.batched(rebuilt, config, 6, training=False))[0]) == list(range(6))
    assert len(decoded) == 6 and rebuilt.complete and cache.stat().st_size == 6 * 8 * 8 * 3


def test_mixed_formats_land_in_the_array_in_file_order_with_load_images_pixels(tmp_path: Path) -> None:
    from test_data import write_router_images

    kinds = write_router_images(tmp_path)
    paths = [str(tmp_path / name) for name in kinds if name != "notes.jpg"]
    data = files.LabelledFiles(paths, [i % 3 for i in range(len(paths))])
    config = DataConfig(data_dir="unused", image_size=20, batch_size=3, seed=5)
    array = pipeline.cached_images(data, config, 3)
    epochs_of(pipeline.batched(array, config, len(paths), training=True), 1, pipeline.epoch_batches(len(paths), 3))
    assert array.complete
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(array.pixels()[i], load_image(path, 20), err_msg=path)


def tiny_run(data: Path, out: Path, epochs: int) -> RunConfig:
    return RunConfig(
        name="run",
        out=str(out),
        data=DataConfig(data_dir=str(data), image_size=32, batch_size=8, augment=True),
        model={"num_blocks": 2, "first_filters": 4, "dense_units": [8], "dense_dropout": 0.3},
        train=TrainConfig(epochs=epochs, deterministic=True),
        tracking=TrackingConfig(wandb="off"),
    )


def run_results(run: Path) -> tuple[list[np.ndarray], list[dict[str, str]], dict]:
    from inat_keras.models.augment import load_model

    weights = load_model(run / "best.keras").get_weights()
    with open(run / "history.csv") as handle:
        history = [{k: v for k, v in row.items() if "second" not in k and "time" not in k} for row in csv.DictReader(handle)]
    metrics = json.loads((run / "metrics.json").read_text())
    for timing in ("train_seconds", "train_images_per_second", "provenance"):
        metrics.pop(timing)
    return weights, history, metrics


@pytest.mark.slow
def test_a_run_killed_anywhere_and_resumed_ends_bit_identical_to_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    from tensorflow.python.framework.config import disable_op_determinism

    from inat_keras.training import checkpoints, loop

    class Killed(Exception):
        pass

    data = make_dataset_root(tmp_path / "data", train_per_class=6, val_per_class=3, size=(32, 32))
    try:
        loop.train_run(tiny_run(data, tmp_path / "whole", 3), verbose=0, log=lambda message: None)
        expected = run_results(tmp_path / "whole" / "run")
        original = checkpoints.EpochCheckpoint.save_epoch
        # Two kill points: just after epoch 1 is committed, and in epoch 3 before it is (epoch 3 is trained again).
        for kill_epoch, after_commit in [(0, True), (2, False)]:
            out = tmp_path / f"killed-{kill_epoch}"

            def save_then_die(checkpoint, epoch, logs=None, kill_epoch=kill_epoch, after_commit=after_commit):
                if epoch == kill_epoch and not after_commit:
                    raise Killed()
                original(checkpoint, epoch, logs)
                if epoch == kill_epoch:
                    raise Killed()

            monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", save_then_die)
            with pytest.raises(Killed):
                loop.train_run(tiny_run(data, out, 3), verbose=0, log=lambda message: None)
            monkeypatch.setattr(checkpoints.EpochCheckpoint, "save_epoch", original)
            loop.train_run(tiny_run(data, out, 3), resume=True, verbose=0, log=lambda message: None)
            weights, history, metrics = run_results(out / "run")
            assert len(weights) == len(expected[0])
            for got, want in zip(weights, expected[0], strict=True):
                np.testing.assert_array_equal(got, want)
            assert history == expected[1] and metrics == expected[2]
    finally:
        disable_op_determinism()


@pytest.mark.slow
def test_two_identical_deterministic_searches_give_the_same_trials_with_the_same_scores(tmp_path: Path) -> None:
    from tensorflow.python.framework.config import disable_op_determinism

    from inat_keras.cli.train_scratch import main as train_scratch_main
    from test_search import read_rows, search_args

    data = make_dataset_root(tmp_path / "data", train_per_class=6, val_per_class=3)
    scores = []
    try:
        for attempt in ("first", "second"):
            (tmp_path / attempt).mkdir()
            assert (
                train_scratch_main(search_args(tmp_path / attempt, data, "random", "--max-trials", "2", "--deterministic")) == 0
            )
            rows = read_rows(tmp_path / attempt / "runs" / "s" / "search" / "trials.csv")
            kept = [name for name in rows[0] if name.startswith("val_") or name in ("trial_id", "learning_rate")]
            scores.append([{name: row[name] for name in kept} for row in rows])
    finally:
        disable_op_determinism()
    assert len(scores[0]) == 2 and scores[0] == scores[1]
