"""export: SavedModel, TFLite and ONNX, each reloaded by its own runtime and compared with Keras."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from inat_keras.errors import UserError
from inat_keras.storage import read_json
from trained_runs import split_test_images


@pytest.fixture(scope="module")
def batch(scratch_run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test images and the Keras model's probabilities for them."""
    from inat_keras.data.decode import load_image
    from inat_keras.inspection.trained import load_trained

    images = np.stack([load_image(p, 32) for p in split_test_images(scratch_run)[0][:5]]).astype(np.float32)
    return images, np.asarray(load_trained(scratch_run).model(images, training=False))


def reload_savedmodel(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive: serve() needs its variables
    return np.asarray(loaded.serve(images))


def reload_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of ai_edge_litert, which is not installed
        interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def reload_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.mark.parametrize(("fmt", "reload"), [("savedmodel", reload_savedmodel), ("tflite", reload_tflite), ("onnx", reload_onnx)])
def test_each_export_round_trips_within_tolerance(scratch_run, batch, tmp_path, fmt, reload):
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained

    result = export_model(load_trained(scratch_run), fmt, tmp_path)
    path = Path(result["path"])
    assert path.exists() and result["bytes"] > 10_000
    assert result["max_abs_difference"] < 1e-4 and result["same_top1"]
    images, expected = batch
    assert np.abs(reload(path, images) - expected).max() < 1e-4
    assert read_json(tmp_path / "export.json")[fmt]["max_abs_difference"] == result["max_abs_difference"]
    assert read_json(tmp_path / "export.json")[fmt]["accepted"] is True
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_a_transfer_model_exports_and_round_trips_too(transfer_run, tmp_path, fmt) -> None:
    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained

    trained = load_trained(transfer_run)
    result = export_model(trained, fmt, tmp_path)
    assert result["checked_images"] > 1 and result["input"].startswith("float32 [batch, 64, 64, 3]")
    assert result["max_abs_difference"] < 1e-4 and result["same_top1"]


def test_the_cli_prints_the_file_its_size_and_the_difference(scratch_run, tmp_path, capsys):
    from inat_keras.cli.main import main

    assert main(["export", str(scratch_run), "--format", "tflite", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    size_kb = (tmp_path / "model.tflite").stat().st_size / 1024
    assert line.startswith(f"tflite: {tmp_path / 'model.tflite'} ({size_kb:.1f} KB)")
    assert "max difference from Keras" in line


def test_an_export_that_disagrees_beyond_the_tolerance_is_refused(scratch_run, tmp_path, monkeypatch):
    from inat_keras.inspection import export
    from inat_keras.inspection.trained import load_trained

    reload = export.RUNNERS["savedmodel"]
    monkeypatch.setitem(export.RUNNERS, "savedmodel", lambda path: lambda images: reload(path)(images) + 0.01)
    with pytest.raises(UserError, match=r"differs from the Keras model by 1.00e-02"):
        export.export_model(load_trained(scratch_run), "savedmodel", tmp_path)
    record = read_json(tmp_path / "export.json")["savedmodel"]
    assert record["max_abs_difference"] == pytest.approx(0.01, abs=1e-6) and record["accepted"] is False
    assert record["path"] == str(tmp_path / "refused-savedmodel") and (tmp_path / "refused-savedmodel").is_dir()
    assert not (tmp_path / "savedmodel").exists(), "nothing refused sits under the usual name"


def test_a_mixed_precision_model_is_exported_in_float32_so_tflite_can_run_it(tmp_path):
    import keras

    from inat_keras.inspection.export import export_model
    from inat_keras.inspection.trained import load_trained
    from inat_keras.models.cnn import build_cnn

    # What a GPU run saves; its float16 ops would need TFLite's Flex delegate.
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_cnn(num_classes=3, input_size=32, num_blocks=2, first_filters=4, dense_units=[8])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(tmp_path / "mixed.keras")

    result = export_model(load_trained(tmp_path / "mixed.keras", ["a", "b", "c"]), "tflite", tmp_path / "export")
    assert result["max_abs_difference"] < 1e-4
    assert 0 < result["float32_vs_mixed_precision_difference"] < 1e-2
