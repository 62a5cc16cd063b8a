"""Export a trained model for serving, and check the export gives the same answers.

``python -m inat_keras export runs/<name> --format savedmodel|tflite|onnx`` writes
``runs/<name>/export/`` (``savedmodel/``, ``model.tflite``, ``model.onnx``). Each export is
reloaded with its own runtime (TensorFlow, the TFLite interpreter, ONNX Runtime) and run on a
batch of images; the largest difference from the Keras model's probabilities is reported and
kept in ``export.json``. All exports take raw 0-255 RGB float32 images, like the Keras model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.errors import UserError
from inat_keras.inspection.formats import CHECK_IMAGES, FILE_NAMES, FORMATS, TOLERANCE
from inat_keras.inspection.trained import TrainedModel, image_batches
from inat_keras.models.augment import is_augmentation_layer
from inat_keras.runs import split_test_rows
from inat_keras.storage import make_dir, read_json, write_json


def export_savedmodel(model: Any, path: Path) -> None:
    model.export(str(path), format="tf_saved_model", verbose=False)


def export_tflite(model: Any, path: Path) -> None:
    model.export(str(path), format="litert", verbose=False)


def export_onnx(model: Any, path: Path) -> None:
    try:
        import onnxruntime  # noqa: F401  (checked here: Keras would only fail after the conversion)
        import tf2onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs tf2onnx and onnxruntime: pip install -r requirements.txt") from None
    # Keras's ONNX exporter refuses a model never called since loading ("has never called").
    model(np.zeros((1, *model.input_shape[1:]), dtype=np.float32), training=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's numpy-2 deprecation chatter
        model.export(str(path), format="onnx", verbose=False)


def run_savedmodel(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return lambda images: np.asarray(loaded.serve(images))


def run_tflite(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own interpreter: deprecated in favour of ai_edge_litert, same API
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter

    def predict(images: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = Interpreter(model_path=str(path))
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))

    return predict


def run_onnx(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: np.asarray(session.run(None, {name: images})[0])


EXPORTERS = {"savedmodel": export_savedmodel, "tflite": export_tflite, "onnx": export_onnx}
RUNNERS = {"savedmodel": run_savedmodel, "tflite": run_tflite, "onnx": run_onnx}


def is_mixed_precision(model: Any) -> bool:
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in model.layers)


def is_exact_gelu(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.gelu


def gelu_by_erf(x: Any) -> Any:
    """Keras's exact GELU, x/2 (1 + erf(x/sqrt 2)), with ``erf``: TensorFlow's writes it with ``erfc``, which ONNX lacks."""
    from keras import ops

    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


def serving_model(model: Any) -> Any:
    """The model as a serving runtime should see it: float32 compute, no augmentation layers.

    A run trained on a GPU computes in mixed float16; TFLite's built-in interpreter cannot run
    its float16 ops (they become "Flex" TensorFlow ops), and serving runtimes expect float32.
    The variables are float32 either way, so the weights copy unchanged. Augmentation layers
    (``--augment-placement model``) pass images through at inference, but their random ops stay
    in the traced graph, and tf2onnx has no converter for them: the copy leaves them out. The
    exact GELU (ConvNeXt's, ``--activation gelu``) traces to TensorFlow's ``Erfc``, which ONNX lacks:
    the copy computes it with ``erf`` (``gelu_by_erf``).
    """
    import keras

    mixed = is_mixed_precision(model)
    augmented = any(is_augmentation_layer(layer) for layer in model.layers)
    gelu = any(is_exact_gelu(layer) for layer in model.layers)
    if not (mixed or augmented or gelu):
        return model

    def as_float32(layer: Any) -> Any:
        if is_exact_gelu(layer):
            return keras.layers.Activation(gelu_by_erf, name=layer.name, dtype="float32" if mixed else layer.dtype_policy)
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"}) if mixed else layer

    def skip_augmentation(layer: Any, *args: Any, **kwargs: Any) -> Any:
        return args[0] if is_augmentation_layer(layer) else layer(*args, **kwargs)

    # Without a dtype change the layers themselves are reused: same weights, nothing to copy.
    copy = keras.models.clone_model(model, clone_function=as_float32, call_function=skip_augmentation)
    if mixed:
        copy.set_weights(model.get_weights())
    return copy


def check_images(trained: TrainedModel, count: int = CHECK_IMAGES) -> np.ndarray:
    """Test images of the run when there are some, else seeded random pixels: float32, 0-255."""
    size = trained.image_size
    rows = split_test_rows(trained.run_dir)
    if rows is not None:
        paths = [row["path"] for row in rows][:count]
        decoded = [batch.images for batch in image_batches(paths, size, count)]
        images = np.concatenate(decoded) if decoded else np.zeros((0, size, size, 3), np.uint8)
        if len(images):
            return images.astype(np.float32)
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def replace_existing(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def export_model(trained: TrainedModel, fmt: str, out_dir: Path, *, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export, reload, compare on a batch of images; raise if the export disagrees beyond ``tolerance``."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    make_dir(out_dir)
    path = out_dir / FILE_NAMES[fmt]
    # Written beside the target and renamed, so a failed export never leaves half an artifact.
    staging = out_dir / f".partial-{path.name}"  # keeps the suffix Keras checks
    replace_existing(staging)
    model = serving_model(trained.model)
    EXPORTERS[fmt](model, staging)

    # Checked before it takes the file's name: a refused export must never sit where scripts look.
    images = check_images(trained)
    expected = np.asarray(model(images, training=False), dtype=np.float32)
    actual = RUNNERS[fmt](staging)(images)
    difference = float(np.abs(actual - expected).max())
    accepted = difference <= tolerance
    if not accepted:
        path = out_dir / f"refused-{path.name}"  # kept for inspection; the usual name is removed
        replace_existing(out_dir / FILE_NAMES[fmt])
    replace_existing(path)
    os.replace(staging, path)
    result = {
        "format": fmt,
        "accepted": accepted,
        "tolerance": tolerance,
        "path": str(path),
        "bytes": size_of(path),
        "max_abs_difference": difference,
        "checked_images": len(images),
        "same_top1": bool((actual.argmax(axis=1) == expected.argmax(axis=1)).all()),
        "class_names": trained.class_names,
        "input": f"float32 [batch, {trained.image_size}, {trained.image_size}, 3], raw 0-255 RGB",
    }
    if is_mixed_precision(trained.model):
        trained_outputs = np.asarray(trained.model(images, training=False), dtype=np.float32)
        result["float32_vs_mixed_precision_difference"] = float(np.abs(expected - trained_outputs).max())
    record_export(out_dir, result)
    if not accepted:
        raise UserError(
            f"the {fmt} export differs from the Keras model by {difference:.2e} (more than {tolerance:g}) "
            f"on the check images: refused, kept as {path} for inspection and marked in {out_dir / 'export.json'}"
        )
    return result


def record_export(out_dir: Path, result: dict[str, Any]) -> None:
    """``export.json``: one entry per format, the latest check of each."""
    record = out_dir / "export.json"
    exports = read_json(record) if record.is_file() else {}
    exports[result["format"]] = result
    write_json(record, exports)
