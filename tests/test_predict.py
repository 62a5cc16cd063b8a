"""predict: top-k for files, folders (recursively) and bad files, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inat_keras.errors import UserError
from trained_runs import split_test_images


@pytest.fixture
def mixed_inputs(scratch_run: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Two good images (one in a nested folder), a text file named .jpg, a zero-byte .png, a missing path."""
    paths, _ = split_test_images(scratch_run)
    photos = tmp_path / "photos"
    (photos / "deeper").mkdir(parents=True)
    good = [shutil.copy(paths[0], photos / "first.jpg"), shutil.copy(paths[5], photos / "deeper" / "second.jpg")]
    (photos / "page.jpg").write_text("<html>not found</html>")
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.txt").write_text("ignored: not an image name")
    return {
        "inputs": [str(photos), str(tmp_path / "missing.jpg")],
        "good": sorted(map(str, good)),
        "bad": [str(photos / "page.jpg"), str(photos / "empty.png"), str(tmp_path / "missing.jpg")],
    }


def direct_top(run: Path, path: str) -> list[tuple[str, float]]:
    from inat_keras.data.decode import load_image
    from inat_keras.inspection.trained import load_trained

    trained = load_trained(run)
    image = load_image(path, trained.image_size)[None].astype(np.float32)
    probabilities = np.asarray(trained.model(image, training=False))[0]
    order = np.argsort(-probabilities)
    return [(trained.class_names[i], float(probabilities[i])) for i in order]


def test_json_gives_top_k_of_good_files_and_one_error_line_per_bad_file(scratch_run, mixed_inputs, capsys):
    from inat_keras.cli.main import main

    status = main(["predict", str(scratch_run), *mixed_inputs["inputs"], "--top-k", "2", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)

    assert status == 1
    assert sorted(result["path"] for result in report["results"]) == mixed_inputs["good"]
    for result in report["results"]:
        expected = direct_top(scratch_run, result["path"])[:2]
        assert [p["class"] for p in result["predictions"]] == [name for name, _ in expected]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx([p for _, p in expected], abs=1e-5)
    error_lines = captured.err.strip().splitlines()
    assert len(error_lines) == 3
    for bad in mixed_inputs["bad"]:
        assert sum(line.startswith(f"error: {bad}:") for line in error_lines) == 1
    assert sorted(e["path"] for e in report["errors"]) == sorted(mixed_inputs["bad"])
    assert any(line.endswith("empty.png: not a readable image (zero bytes)") for line in error_lines), error_lines


def test_the_table_lists_each_image_with_its_top_three(scratch_run, mixed_inputs, capsys):
    from inat_keras.cli.main import main

    good = mixed_inputs["good"]
    assert main(["predict", str(scratch_run), *good]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "top", "1", "top", "2", "top", "3"]
    first_class, first_probability = direct_top(scratch_run, good[0])[0]
    assert lines[1].startswith(good[0]) and f"{first_class} ({first_probability:.1%})" in lines[1]
    assert len(lines) == 3


def test_csv_has_one_row_per_image_and_rank(scratch_run, mixed_inputs, capsys):
    from inat_keras.cli.main import main

    assert main(["predict", str(scratch_run), *mixed_inputs["good"], "--csv", "--top-k", "4"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8
    assert [int(row["rank"]) for row in rows[:4]] == [1, 2, 3, 4]
    probabilities = [float(row["probability"]) for row in rows[:4]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_a_bare_keras_file_needs_class_names_and_uses_the_given_ones(scratch_run, mixed_inputs, tmp_path):
    from inat_keras.cli.values import parse_classes
    from inat_keras.inspection.predict import predict_paths
    from inat_keras.inspection.trained import load_trained

    bare = tmp_path / "elsewhere" / "model.keras"
    bare.parent.mkdir()
    shutil.copy(scratch_run / "best.keras", bare)
    with pytest.raises(UserError, match="--classes"):
        load_trained(bare)
    with pytest.raises(UserError, match="10 outputs but 3 class names"):
        load_trained(bare, ["x", "y", "z"])

    names = [f"species {i}" for i in range(10)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")

    report = predict_paths(load_trained(bare, parse_classes(str(tmp_path / "classes.txt"))), mixed_inputs["good"], k=1)
    run_names = load_trained(scratch_run).class_names
    expected_index = run_names.index(direct_top(scratch_run, mixed_inputs["good"][0])[0][0])
    assert report.results[0]["predictions"][0]["class"] == names[expected_index]


def test_a_file_named_and_inside_a_named_folder_is_predicted_once(scratch_run, mixed_inputs, capsys):
    from inat_keras.cli.predict import main

    photos = mixed_inputs["inputs"][0]
    again = [*mixed_inputs["good"], f"{photos}/page.jpg", photos, f"{photos}/deeper"]
    assert main([str(scratch_run), *again, "--csv"]) == 1
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert sorted({row["path"] for row in rows}) == mixed_inputs["good"] and len(rows) == 3 * len(mixed_inputs["good"])
    assert sum("page.jpg" in line for line in captured.err.splitlines()) == 1


def test_a_transfer_run_predicts_what_its_model_computes_at_its_own_size(scratch_run, mixed_inputs, transfer_run, capsys):
    from inat_keras.cli.predict import main

    assert main([str(transfer_run), *mixed_inputs["inputs"], "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert sorted(r["path"] for r in report["results"]) == mixed_inputs["good"]
    assert sorted(e["path"] for e in report["errors"]) == sorted(mixed_inputs["bad"])
    for result in report["results"]:
        expected = direct_top(transfer_run, result["path"])[:3]
        assert [p["class"] for p in result["predictions"]] == [name for name, _ in expected]
        np.testing.assert_allclose(
            [p["probability"] for p in result["predictions"]], [p for _, p in expected], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("name", ["demoo", "best.h5", "model.keras"])
def test_a_mistyped_model_path_is_said_not_to_exist(tmp_path, name):
    from inat_keras.inspection.trained import locate_model

    with pytest.raises(UserError, match=f"^{tmp_path / name} does not exist: pass a run directory"):
        locate_model(tmp_path / name)
