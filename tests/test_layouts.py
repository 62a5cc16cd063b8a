"""A folder of class folders (no train/ + val/) split three ways, and --class-weight balanced."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset_root, write_class_images
from inat_keras.cli.main import main as inat_main
from inat_keras.config import DataConfig, RunConfig, TrackingConfig, TrainConfig
from inat_keras.data.files import (
    CLASS_FOLDERS_LAYOUT,
    TRAIN_VAL_LAYOUT,
    balanced_class_weights,
    dataset_layout,
    discover_dataset,
    make_split,
)
from inat_keras.errors import UserError
from inat_keras.storage import read_csv, read_json


def make_class_folders(root: Path, counts: dict[str, int], *, size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    """``root/<class>/img_*.png`` with ``counts[class]`` images each."""
    rng = np.random.default_rng(seed)
    for label, (name, count) in enumerate(counts.items()):
        write_class_images(root / name, label, count, size, rng)
    return root


# -- the layout and the split ---------------------------------------------------------------------


def test_a_folder_of_class_folders_is_split_stratified_into_train_validation_and_test(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "photos", {"ant": 40, "bee": 20, "cat": 10})
    assert dataset_layout(root) == CLASS_FOLDERS_LAYOUT
    assert dataset_layout(make_dataset_root(tmp_path / "inat")) == TRAIN_VAL_LAYOUT
    classes, everything, no_test = discover_dataset(root)
    assert classes == ["ant", "bee", "cat"] and len(everything) == 70 and len(no_test) == 0

    split = make_split(DataConfig(data_dir=str(root), test_split=0.1, val_split=0.2, seed=3))
    assert Counter(split.test.labels) == {0: 4, 1: 2, 2: 1}  # 10% of each class
    assert Counter(split.validation.labels) == {0: 7, 1: 4, 2: 2}  # 20% of the remaining 63
    subsets = [set(split.train.paths), set(split.validation.paths), set(split.test.paths)]
    assert sum(map(len, subsets)) == 70 and set.union(*subsets) == set(everything.paths)
    assert not (subsets[0] & subsets[1] or subsets[0] & subsets[2] or subsets[1] & subsets[2])


def test_the_three_way_split_is_the_same_for_a_seed_and_differs_for_another(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "photos", {"ant": 20, "bee": 20})
    first, again, other = (make_split(DataConfig(data_dir=str(root), seed=seed)) for seed in (1, 1, 2))
    assert first.test.paths == again.test.paths and first.validation.paths == again.validation.paths
    assert first.test.paths != other.test.paths


def test_a_class_too_small_for_three_subsets_and_a_bad_test_split_are_one_line_errors(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "photos", {"ant": 20, "bee": 2})
    with pytest.raises(UserError, match=r"class 'bee' .* has only 2 image.*at least 3 to split into train, validation and test"):
        make_split(DataConfig(data_dir=str(root)))
    (root / "bee" / "img_002.png").write_bytes((root / "bee" / "img_000.png").read_bytes())
    with pytest.raises(UserError, match=r"--test-split 1.5: must be between 0 and 1"):
        make_split(DataConfig(data_dir=str(root), test_split=1.5))


@pytest.mark.parametrize(
    "arrange, message",
    [
        # The train/ folder of a dataset root, passed by mistake: still named, not read as class folders.
        (lambda data: data / "train", "looks like one of them, so pass its parent: --data {data}$"),
        # The parent of a dataset root: its one "class" holds train/ and val/.
        (lambda data: data.parent, "{data} holds train/ and val/, so it is the dataset root: pass --data {data}$"),
        # A class folder itself: its images sit at the top, with no class folders.
        (lambda data: data / "train" / "class_a", "has no class folders"),
    ],
)
def test_a_folder_one_level_off_is_named_as_before(tmp_path: Path, arrange, message: str) -> None:
    data = make_dataset_root(tmp_path / "parent" / "data")
    with pytest.raises(UserError, match=message.format(data=data)):
        discover_dataset(arrange(data))


def test_a_single_class_folder_is_refused_with_the_folder_to_pass_instead(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "photos", {"birds": 5})
    with pytest.raises(UserError, match=f"holds one class folder \\(birds\\).*pass --data {root / 'birds'}$"):
        discover_dataset(root)


def test_check_data_names_the_layout_a_stray_file_and_suggests_class_weights(tmp_path: Path, capsys) -> None:
    root = make_class_folders(tmp_path / "photos", {"ant": 16, "bee": 4})
    (root / "stray.png").write_bytes((root / "ant" / "img_000.png").read_bytes())
    assert inat_main(["check-data", str(root), "--quiet", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "layout: one folder of class folders" in out
    assert "stray.png: outside the class folders" in out
    assert "class imbalance in all (largest / smallest): 4.00" in out and "--class-weight balanced" in out

    balanced = make_class_folders(tmp_path / "even", {"ant": 6, "bee": 6})
    assert inat_main(["check-data", str(balanced), "--quiet", "--no-cache"]) == 0
    assert "--class-weight" not in capsys.readouterr().out


def test_check_data_refuses_the_train_folder_of_a_dataset_as_training_would(tmp_path: Path, capsys) -> None:
    data = make_dataset_root(tmp_path / "data")
    assert inat_main(["check-data", str(data / "train"), "--quiet", "--no-cache"]) == 1
    assert f"pass its parent: --data {data}" in capsys.readouterr().out


# -- class weights --------------------------------------------------------------------------------


def test_balanced_class_weights_make_every_class_weigh_the_same_in_total() -> None:
    weights = balanced_class_weights([0] * 24 + [1] * 3, 2)
    assert weights == pytest.approx({0: 27 / 48, 1: 27 / 6})
    assert 24 * weights[0] == pytest.approx(3 * weights[1])
    assert balanced_class_weights([0, 0, 1, 1], 3)[2] == 1.0  # a class with no training image


def test_keras_fit_with_balanced_weights_pulls_the_minority_class_equal_in_the_loss() -> None:
    """One SGD step of a zero-initialised softmax on one-hot labels from tf.data, as the pipeline gives them.

    Unweighted, the majority class's bias grows; balanced, the two classes' gradients cancel exactly.
    """
    import keras
    import tensorflow as tf

    labels = np.array([0] * 24 + [1] * 3)
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((27, 1), np.float32), np.eye(2, dtype=np.float32)[labels])).batch(27)

    def bias_after_one_step(class_weight: dict[int, float] | None) -> np.ndarray:
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="categorical_crossentropy")
        model.fit(dataset, epochs=1, verbose=0, class_weight=class_weight)
        return np.asarray(model.layers[-1].bias)

    plain = bias_after_one_step(None)
    assert plain[0] > 0.1 > -0.1 > plain[1]
    assert bias_after_one_step(balanced_class_weights(labels, 2)) == pytest.approx([0.0, 0.0], abs=1e-6)


def overlapping_images(rng: np.random.Generator, counts: tuple[int, int], side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Grey images whose brightness tells the class only roughly (means 0.4 and 0.6, spread 0.1)."""
    labels = np.repeat([0, 1], counts)
    brightness = np.where(labels == 0, 0.4, 0.6) + rng.normal(0, 0.1, len(labels))
    images = brightness[:, None, None, None] + rng.normal(0, 0.05, (len(labels), side, side, 1))
    return images.astype(np.float32), labels


def minority_recall(class_weight: dict[int, float] | None, seed: int) -> float:
    import keras

    rng = np.random.default_rng(seed)
    train_x, train_y = overlapping_images(rng, (24, 3))
    test_x, test_y = overlapping_images(rng, (100, 100))
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(train_x, train_y, epochs=20, batch_size=27, verbose=0, class_weight=class_weight)
    predicted = np.asarray(model(test_x)).argmax(axis=1)
    return float((predicted[test_y == 1] == 1).mean())


def test_balanced_class_weights_raise_the_recall_of_a_rare_class() -> None:
    """24 vs 3 training images, a balanced test set: unweighted, the tiny CNN predicts the majority class.

    Measured (seeds 0-5): recall of the rare class 0.66-1.0 with balanced weights, 0.0 without.
    """
    weights = balanced_class_weights([0] * 24 + [1] * 3, 2)
    for seed in (0, 2):
        assert minority_recall(weights, seed) > minority_recall(None, seed) + 0.3


# -- a run on a folder of class folders -----------------------------------------------------------


def test_a_run_on_class_folders_says_how_it_split_records_class_weights_and_evaluates_its_own_test_set(
    tmp_path: Path,
) -> None:
    from inat_keras.inspection.evaluate import evaluate
    from inat_keras.inspection.predict import predict_paths
    from inat_keras.inspection.trained import load_trained
    from inat_keras.training.loop import train_run

    root = make_class_folders(tmp_path / "photos", {"ant": 24, "bee": 6}, size=(20, 20))
    config = RunConfig(
        name="folders",
        out=str(tmp_path / "runs"),
        data=DataConfig(data_dir=str(root), image_size=16, batch_size=8, test_split=0.2, val_split=0.25),
        model={"num_blocks": 1, "first_filters": 4, "dense_units": [4]},
        train=TrainConfig(epochs=1, class_weight="balanced"),
        tracking=TrackingConfig(wandb="off"),
    )
    logged: list[str] = []
    result = train_run(config, verbose=0, log=logged.append)

    layout = next(line for line in logged[:3] if line.startswith("data: "))
    assert layout.startswith(f"data: {root} is one folder of 2 class folders (no train/ + val/)"), logged[:3]
    assert "20% test set (--test-split)" in layout and "18 train / 6 validation / 6 test images" in layout
    assert any(line.startswith("class weights (--class-weight balanced") and "bee 2.25" in line for line in logged), logged
    saved = read_json(result.run_dir / "config.json")
    assert saved["train"]["class_weight"] == "balanced" and saved["data"]["test_split"] == 0.2
    rows = read_csv(result.run_dir / "split.csv")
    assert Counter(row["subset"] for row in rows) == {"train": 18, "validation": 6, "test": 6}
    test_rows = [row["path"] for row in rows if row["subset"] == "test"]

    trained = load_trained(result.run_dir)
    metrics = evaluate(trained, tmp_path / "eval", data=str(root))  # the folder it was split from: its test subset only
    assert metrics["num_images"] == 6
    assert {row["path"] for row in read_csv(tmp_path / "eval" / "mistakes.csv")} <= set(test_rows)
    report = predict_paths(trained, [str(root)], k=1)
    assert len(report.results) == 30 and not report.failures


def test_older_config_files_without_the_new_settings_still_load() -> None:
    config = RunConfig.from_dict({"name": "old", "data": {"val_split": 0.2}, "train": {"epochs": 3}})
    assert config.data.test_split == 0.1 and config.train.class_weight == "none"
