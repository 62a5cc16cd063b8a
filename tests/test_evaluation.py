"""evaluate: metrics, confusion matrix, the 10x3 prediction grid, mistakes and TTA on tiny trained models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inat_keras.errors import UserError
from inat_keras.storage import read_csv, read_json
from trained_runs import TEST_PER_CLASS, split_test_images


@pytest.fixture(scope="module")
def evaluated(scratch_run: Path):
    from inat_keras.inspection.evaluate import evaluate
    from inat_keras.inspection.trained import load_trained

    trained = load_trained(scratch_run)
    metrics = evaluate(trained, scratch_run / "eval", tta=True)
    return trained, metrics, scratch_run / "eval"


def direct_probabilities(model, paths: list[str], *, flip: bool = False) -> np.ndarray:
    from inat_keras.data.decode import load_image

    images = np.stack([load_image(p, int(model.input_shape[1])) for p in paths]).astype(np.float32)
    return np.asarray(model(images[:, :, ::-1] if flip else images, training=False), dtype=np.float64)


def test_metrics_agree_with_a_direct_computation(evaluated, scratch_run):
    trained, metrics, _ = evaluated
    paths, labels = split_test_images(scratch_run)
    truth = np.array([trained.class_names.index(name) for name in labels])
    probabilities = direct_probabilities(trained.model, paths)
    predicted = probabilities.argmax(axis=1)
    top3 = np.argsort(-probabilities, axis=1)[:, :3]
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)

    assert metrics["num_images"] == 30
    assert metrics["accuracy"] == pytest.approx((predicted == truth).mean())
    assert metrics["top3_accuracy"] == pytest.approx((top3 == truth[:, None]).any(axis=1).mean())
    assert metrics["loss"] == pytest.approx(-np.log(probabilities[np.arange(30), truth]).mean(), rel=1e-4)
    assert metrics["confusion_matrix"] == matrix.tolist()
    first = trained.class_names[0]
    recall = matrix[0, 0] / matrix[0].sum()
    assert metrics["per_class"][first]["recall"] == pytest.approx(recall)
    assert metrics["per_class"][first]["support"] == TEST_PER_CLASS
    assert set(metrics["macro_avg"]) == {"precision", "recall", "f1", "support"}
    assert read_json(evaluated[2] / "metrics.json")["confusion_matrix"] == matrix.tolist()


def test_tta_averages_the_image_and_its_mirror_beside_the_plain_figures(evaluated, scratch_run):
    trained, metrics, _ = evaluated
    paths, labels = split_test_images(scratch_run)
    truth = np.array([trained.class_names.index(name) for name in labels])
    averaged = (direct_probabilities(trained.model, paths) + direct_probabilities(trained.model, paths, flip=True)) / 2

    assert metrics["tta"]["accuracy"] == pytest.approx((averaged.argmax(axis=1) == truth).mean())
    assert metrics["tta"]["loss"] == pytest.approx(-np.log(averaged[np.arange(30), truth]).mean(), rel=1e-4)
    assert "accuracy" in metrics and metrics["tta"]["loss"] != metrics["loss"]


def test_pictures_are_valid_pngs_of_readable_size(evaluated):
    out = evaluated[2]
    for name, min_width, min_height in (("confusion_matrix.png", 1000, 500), ("prediction_grid.png", 1200, 1000)):
        with Image.open(out / name) as picture:
            picture.verify()
        with Image.open(out / name) as picture:
            assert picture.format == "PNG"
            assert picture.width >= min_width and picture.height >= min_height, name
            assert np.asarray(picture.convert("L")).std() > 10, f"{name} is blank"


def test_the_prediction_grid_of_ten_classes_fits_a_screen_with_two_classes_a_row(evaluated):
    with Image.open(evaluated[2] / "prediction_grid.png") as picture:
        width, height = picture.size
    assert width <= 2000 and height <= 2000 and 0.7 <= width / height <= 1.5, (width, height)  # not a 1130x3973 strip


def test_prediction_grid_holds_three_images_of_each_of_the_ten_classes_with_true_labels(evaluated):
    trained, _, out = evaluated
    rows = read_csv(out / "prediction_grid.csv")
    assert len(rows) == 30
    assert {int(row["row"]) for row in rows} == {1, 2, 3, 4, 5} and {int(row["column"]) for row in rows} == set(range(1, 7))
    for row in rows:  # two classes a row, three images each, counted from 1
        assert row["true_class"] == trained.class_names[2 * (int(row["row"]) - 1) + (int(row["column"]) - 1) // 3]
        assert Path(row["path"]).parent.name == row["true_class"]
    probabilities = direct_probabilities(trained.model, [row["path"] for row in rows])
    assert [row["predicted_class"] for row in rows] == [trained.class_names[i] for i in probabilities.argmax(axis=1)]
    assert [float(row["confidence"]) for row in rows] == pytest.approx(probabilities.max(axis=1), abs=1e-5)


def test_mistakes_list_every_wrong_prediction_most_confident_first(evaluated):
    _, metrics, out = evaluated
    rows = read_csv(out / "mistakes.csv")
    assert len(rows) == round(30 * (1 - metrics["accuracy"]))
    assert all(row["true_class"] != row["predicted_class"] for row in rows)
    confidences = [float(row["confidence"]) for row in rows]
    assert confidences == sorted(confidences, reverse=True)


def test_a_data_folder_is_labelled_by_class_name_not_by_folder_order(scratch_run, tmp_path):
    import shutil

    from inat_keras.inspection.evaluate import evaluate
    from inat_keras.inspection.trained import load_trained

    trained = load_trained(scratch_run)
    paths, labels = split_test_images(scratch_run)
    # Only two classes, so sorted folder order (0, 1) differs from the model's indices.
    for path, label in zip(paths, labels, strict=True):
        if label in ("class_c", "class_j"):
            (tmp_path / "val" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "val" / label)
    metrics = evaluate(trained, tmp_path / "eval", data=str(tmp_path))

    assert metrics["num_images"] == 6
    supports = {name: values["support"] for name, values in metrics["per_class"].items()}
    assert supports["class_c"] == 3 and supports["class_j"] == 3 and supports["class_a"] == 0

    (tmp_path / "val" / "not_a_class").mkdir()
    with pytest.raises(UserError, match="not_a_class"):
        evaluate(trained, tmp_path / "eval", data=str(tmp_path))


def test_evaluate_works_on_a_mobilenetv2_transfer_model(transfer_run, scratch_run):
    from inat_keras.inspection.evaluate import evaluate
    from inat_keras.inspection.trained import load_trained

    run = transfer_run
    metrics = evaluate(load_trained(run), run / "eval")
    assert metrics["num_images"] == 30
    assert sum(map(sum, metrics["confusion_matrix"])) == 30
    assert (run / "eval" / "prediction_grid.png").stat().st_size > 10_000


def test_the_cli_reports_a_missing_run_in_one_line_with_status_2(tmp_path, capsys):
    from inat_keras.cli.main import main

    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "nope" in error and error.count("\n") == 1


def run_with_moved_dataset(scratch_run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose split.csv names images under a folder that no longer exists."""
    import shutil

    from inat_keras.storage import write_csv

    moved = tmp_path / "run"
    shutil.copytree(scratch_run, moved)
    rows = read_csv(moved / "split.csv")
    for row in rows:
        row["path"] = str(tmp_path / "gone" / Path(row["path"]).name)
    write_csv(moved / "split.csv", ("path", "label", "subset"), [(r["path"], r["label"], r["subset"]) for r in rows])
    return moved


def test_a_run_whose_dataset_moved_says_so_and_names_the_flag(scratch_run, tmp_path, capsys) -> None:
    from inat_keras.cli.main import main as inat_main

    moved = run_with_moved_dataset(scratch_run, tmp_path)
    assert inat_main(["evaluate", str(moved)]) == 2
    error = capsys.readouterr().err
    assert "test images exists (the first: " in error and "pass --data DIR with its new location" in error
    assert inat_main(["explain", str(moved)]) == 2
    error = capsys.readouterr().err
    assert "no --image given, and none of the" in error and "exists any more" in error and "pass --image FILE" in error


def test_training_curves_tick_whole_epochs_even_for_a_two_epoch_run():
    import matplotlib.pyplot as plt

    from inat_keras.plots import draw_curves

    history = [{"epoch": 1, "loss": 2.0, "val_loss": 1.0, "accuracy": 0.2, "val_accuracy": 0.6}]
    history.append({"epoch": 2, "loss": 0.8, "val_loss": 0.7, "accuracy": 0.7, "val_accuracy": 0.8})
    figure = draw_curves(history, "two epochs")
    for axis in figure.axes:
        ticks = [tick for tick in axis.get_xticks() if 1 <= tick <= 2]
        assert ticks == [1.0, 2.0], ticks
    plt.close(figure)
