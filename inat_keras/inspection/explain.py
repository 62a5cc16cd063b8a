"""What a trained CNN looks at: filters, feature maps, guided backpropagation, Grad-CAM.

``python -m inat_keras explain runs/<name> --image photo.jpg`` writes ``runs/<name>/explain/``:
``filters.png``, ``feature_maps_<layer>.png`` for up to five conv layers whose maps are at least
4x4 (the smaller ones, listed in ``explain.json``, would be a few flat tiles), ``guided_backprop.png``,
``gradcam.png`` and ``explain.json`` (what each picture shows, and its numbers). Pictures number
channels, filters and positions from 1.

tf-keras-vis does the gradients (``Saliency`` with its ``GuidedBackpropagation`` modifier,
``Gradcam``, ``GradcamPlusPlus``); it works with Keras 3.15 as it is. This module adds only what
it lacks: guided backpropagation through ``keras.layers.ReLU`` layers (MobileNetV2's ReLU6), which
have no ``activation`` attribute for its modifier to replace. Models must be flat (a transfer
backbone built on the model's input, as :mod:`inat_keras.transfer` does): Keras 3 cannot expose
the layers of a nested sub-model as outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.data.decode import load_image
from inat_keras.errors import UserError
from inat_keras.inspection.explain_plots import plot_feature_maps, plot_filters, plot_gradcam, plot_guided_backprop
from inat_keras.inspection.trained import TrainedModel
from inat_keras.models.backbones import get_backbone
from inat_keras.runs import SPLIT_FILE, split_test_rows
from inat_keras.storage import make_dir, write_json

NUM_NEURONS = 10
MAX_FEATURE_LAYERS = 5
# Maps smaller than this on a side are a few flat tiles as feature maps, and a few coarse blocks as a
# Grad-CAM (a 2x2 map can only point at a quarter of the image): the same rule for every model.
MIN_MAP_SIDE = 4


# -- the model, flat ------------------------------------------------------------------------------


def conv_layers(model: Any) -> list[Any]:
    """``Conv2D`` layers in graph order (a backbone's depthwise convolutions are not Conv2D)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def last_conv_layer_name(trained: TrainedModel, model: Any) -> str:
    """A transfer backbone's last conv layer from the backbone registry; otherwise (the scratch
    CNN's ``conv<N>``, a bare ``.keras`` file) the last ``Conv2D`` of the model."""
    import keras

    config = trained.config
    if config is not None and config.kind == "transfer":
        name = get_backbone(config.model.get("backbone", "")).last_conv_layer
        if name not in {layer.name for layer in model.layers}:
            raise UserError(f"{trained.model_path} has no layer {name!r}, the registry's last conv layer of its backbone")
        return name
    convs = conv_layers(model)
    if convs:
        return convs[-1].name
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise UserError(
            f"{trained.model_path} nests its convolutions in sub-model {nested[0]!r}: explain needs a flat model "
            "(build the backbone on the model's input tensor, as inat_keras.transfer does)"
        )
    raise UserError(f"{trained.model_path} has no Conv2D layer to explain")


def first_conv_layer(model: Any) -> Any:
    convs = conv_layers(model)
    if not convs:
        raise UserError("the model has no Conv2D layer whose filters could be shown")
    return convs[0]


def map_size(layer: Any) -> tuple[int, int]:
    """(height, width) of a layer's output feature map."""
    height, width = (int(side) for side in layer.output.shape[1:3])
    return height, width


def feature_layers(model: Any, last_conv: str) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """(conv layer name, the layer whose output is shown) for at most ``MAX_FEATURE_LAYERS`` conv layers,
    and the layers skipped because their maps are smaller than ``MIN_MAP_SIDE`` (name and size).

    The scratch CNN's blocks are ``conv<i>`` -> ``bn<i>`` -> ``act<i>``: the activation is shown.
    A backbone has dozens of convolutions: evenly spaced ones, the deepest one large enough included.
    With no map large enough (a tiny input), the first layer is shown all the same.
    """
    names = [layer.name for layer in conv_layers(model)]
    names = names[: names.index(last_conv) + 1] if last_conv in names else names
    layer_names = {layer.name for layer in model.layers}
    shown = {}
    for name in names:
        block = name[4:]
        activation = f"act{block}" if name.startswith("conv") and block.isdigit() else ""
        shown[name] = model.get_layer(activation if activation in layer_names else name)
    large = [name for name in names if min(map_size(shown[name])) >= MIN_MAP_SIDE] or names[:1]
    skipped = [{"layer": name, "size": "x".join(map(str, map_size(shown[name])))} for name in names if name not in large]
    if len(large) > MAX_FEATURE_LAYERS:
        picks = np.linspace(0, len(large) - 1, MAX_FEATURE_LAYERS).round().astype(int)
        large = [large[i] for i in sorted(set(picks))]
    return [(name, shown[name]) for name in large], skipped


# -- guided backpropagation ------------------------------------------------------------------------


def guided_relu_layers() -> Callable[[Any], None]:
    """A tf-keras-vis model modifier: guided gradients through ``keras.layers.ReLU`` layers too."""
    import keras
    import tensorflow as tf

    def guided(layer: Any) -> Callable[[Any], Any]:
        call = layer.call
        upper = layer.max_value

        @tf.custom_gradient
        def guided_call(x: Any) -> tuple[Any, Callable[[Any], Any]]:
            def grad(dy: Any) -> Any:
                passes = tf.cast(x > layer.threshold, dy.dtype)
                if upper is not None:
                    passes *= tf.cast(x < upper, dy.dtype)
                return tf.cast(dy > 0, dy.dtype) * passes * dy

            return call(x), grad

        return guided_call

    def modify(model: Any) -> None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.ReLU):
                layer.call = guided(layer)

    return modify


def count_relu_layers(model: Any) -> int:
    import keras

    return sum(
        isinstance(layer, keras.layers.ReLU) or getattr(layer, "activation", None) is keras.activations.relu
        for layer in model.layers
    )


def strongest_positions(feature_map: np.ndarray, channels: Sequence[int]) -> list[tuple[int, int]]:
    """For each channel, the spatial position where it responds most to the image."""
    positions = []
    for channel in channels:
        y, x = np.unravel_index(int(np.argmax(feature_map[..., channel])), feature_map.shape[:2])
        positions.append((int(y), int(x)))
    return positions


def pick_neurons(features: np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` seeded random channels among those the image excites (a silent channel has no pattern to show)."""
    active = np.flatnonzero(features.reshape(-1, features.shape[-1]).max(axis=0) > 0)
    pool = active if len(active) >= count else np.arange(features.shape[-1])
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(pool, size=min(count, len(pool)), replace=False))


def guided_backprop_maps(model: Any, image: np.ndarray, layer_name: str, seed: int, count: int = NUM_NEURONS) -> dict[str, Any]:
    """Guided backpropagation of ``count`` seeded random neurons of ``layer_name`` down to the input.

    A neuron is one channel at the position where it responds most to the image; its map is the
    input pattern that excites it.
    """
    import keras
    import tensorflow as tf
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayer, GuidedBackpropagation

    extractor = keras.Model(model.input, model.get_layer(layer_name).output)
    features = np.asarray(extractor(image[None].astype(np.float32), training=False))[0]
    channels = pick_neurons(features, count, seed)
    positions = strongest_positions(features, channels)
    saliency = Saliency(
        model,
        model_modifier=[ExtractIntermediateLayer(layer_name), GuidedBackpropagation(), guided_relu_layers()],
        clone=True,
    )

    def neuron_scores(output: Any) -> Any:
        return tf.stack([output[i, y, x, c] for i, (c, (y, x)) in enumerate(zip(channels, positions, strict=True))])

    seeds = np.repeat(image[None].astype(np.float32), len(channels), axis=0)
    maps = np.asarray(saliency(neuron_scores, seeds, keepdims=True, normalize_map=False))
    return {
        "layer": layer_name,
        "channels": channels,
        "positions": positions,
        "activations": [float(features[y, x, c]) for c, (y, x) in zip(channels, positions, strict=True)],
        "maps": maps,
    }


# -- Grad-CAM ------------------------------------------------------------------------------------


def class_activation_maps(model: Any, image: np.ndarray, layer_name: str, class_index: int) -> dict[str, np.ndarray]:
    """Grad-CAM and Grad-CAM++ of ``class_index`` on ``layer_name``, resized to the image, in [0, 1]."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    seed = image[None].astype(np.float32)
    maps: dict[str, np.ndarray] = {}
    # Scores before the softmax: its saturation would flatten the gradients (tf-keras-vis advice).
    for name, method in (("Grad-CAM", Gradcam), ("Grad-CAM++", GradcamPlusPlus)):
        explainer = method(model, model_modifier=ReplaceToLinear(), clone=True)
        # The named layer itself (a backbone's last activation is not a Conv layer tf-keras-vis would seek).
        cam = explainer(CategoricalScore([class_index]), seed, penultimate_layer=layer_name, seek_penultimate_conv_layer=False)
        maps[name] = np.asarray(cam)[0]
    return maps


# -- the command --------------------------------------------------------------------------------


def default_image(trained: TrainedModel) -> str:
    """The run's first test image that still exists (the dataset may have moved since training)."""
    run_dir = trained.run_dir
    rows = split_test_rows(run_dir)
    if run_dir is not None and rows is not None:  # rows is None without a run_dir; testing both lets mypy see a Path
        tests = [row["path"] for row in rows]
        for path in tests:
            if Path(path).is_file():
                return path
        if tests:
            raise UserError(
                f"no --image given, and none of the {len(tests)} test images in {run_dir / SPLIT_FILE} exists "
                f"any more (the first: {tests[0]}): pass --image FILE"
            )
    raise UserError(
        f"no --image given and {trained.model_path} has no run split.csv to take a test image from: pass --image FILE"
    )


def load_explained_image(path: str, size: int) -> np.ndarray:

    if not Path(path).is_file():
        raise UserError(f"--image {path} does not exist")
    try:
        return load_image(path, size)
    except Exception as error:
        raise UserError(f"--image {path} is not a readable image ({str(error).splitlines()[0]})") from None


def write_feature_maps(
    model: Any, image: np.ndarray, last_conv: str, out_dir: Path, title: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """feature_maps_<layer>.png for each layer ``feature_layers`` picks; returns their summaries and the skipped layers."""
    import keras

    chosen, skipped = feature_layers(model, last_conv)
    # Direct calls, not predict(): each throwaway model would trace a new predict function.
    extractor = keras.Model(model.input, [layer.output for _, layer in chosen])
    activations = extractor(image[None].astype(np.float32), training=False)
    activations = activations if isinstance(activations, list | tuple) else [activations]
    written = []
    for (conv_name, shown), maps in zip(chosen, activations, strict=True):
        path = out_dir / f"feature_maps_{conv_name}.png"
        written.append({**plot_feature_maps(np.asarray(maps)[0], conv_name, shown.name, path, title), "file": path.name})
    return written, skipped


def write_guided_backprop(model: Any, image: np.ndarray, last_conv: str, out_dir: Path, title: str, seed: int) -> dict[str, Any]:
    guided = guided_backprop_maps(model, image, last_conv, seed)
    relu_layers = count_relu_layers(model)
    # Guided backpropagation is defined through ReLUs; a swish network (EfficientNet) gets plain gradients.
    method = "" if relu_layers else " (no ReLU layers to guide: plain gradients)"
    heading = f"{title}; {len(guided['channels'])} random neurons of {last_conv} (seed {seed}){method}"
    plot_guided_backprop(image, guided, out_dir / "guided_backprop.png", heading)
    return {
        **{key: guided[key] for key in ("layer", "channels", "positions", "activations")},
        # "channels" and "positions" index the layer's output (from 0); the picture numbers them from 1, as these.
        "channel_numbers": [channel + 1 for channel in guided["channels"]],
        "map_std": [float(m.std()) for m in guided["maps"]],
        "guided_relu_layers": relu_layers,
    }


def write_gradcam(
    model: Any, image: np.ndarray, last_conv: str, predicted: int, out_dir: Path, title: str, warnings: list[str]
) -> tuple[dict[str, Any], str]:
    """gradcam.png, with ``warnings`` in its title; returns each map's spread and peak, and the title drawn."""
    cams = class_activation_maps(model, image, last_conv, predicted)
    size = "x".join(map(str, map_size(model.get_layer(last_conv))))
    heading = plot_gradcam(
        image, cams, f"{last_conv} ({size} map)", out_dir / "gradcam.png", f"{title}: where the model looked", warnings
    )
    peak = lambda cam: [int(v) for v in np.unravel_index(cam.argmax(), cam.shape)]
    return {name: {"std": float(cam.std()), "max_at": peak(cam)} for name, cam in cams.items()}, heading


def gradcam_warnings(model: Any, last_conv: str, image_size: int) -> list[str]:
    """Grad-CAM is upsampled from the last conv layer's map: below ``MIN_MAP_SIDE`` cells a side it is a few
    blocks that can light up background, so it says so (for the scratch CNN and a backbone alike)."""
    height, width = map_size(model.get_layer(last_conv))
    if min(height, width) >= MIN_MAP_SIDE:
        return []
    fix = f"train at a larger --image-size for a map of at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE}"
    if height * width == 1:
        return [
            f"{last_conv} is 1x1 at {image_size} px, so Grad-CAM has a single cell and cannot show where the model looked: {fix}"
        ]
    return [
        f"{last_conv} is {height}x{width} at {image_size} px, so Grad-CAM has only {height * width} cells "
        f"(each 1/{height * width} of the image) and its highlight may fall on background: {fix}"
    ]


def explain(trained: TrainedModel, out_dir: Path, *, image_path: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Write filters.png, feature_maps_<layer>.png, guided_backprop.png, gradcam.png and explain.json."""
    image_path = image_path or default_image(trained)
    image = load_explained_image(image_path, trained.image_size)
    model = trained.model
    last_conv = last_conv_layer_name(trained, model)
    probabilities = np.asarray(model(image[None].astype(np.float32), training=False))[0]
    predicted = int(probabilities.argmax())
    run = trained.run_dir.name if trained.run_dir else trained.model_path.stem
    label = f"{trained.class_names[predicted]} ({probabilities[predicted]:.0%})"
    title = f"{run}: image {Path(image_path).name}, predicted {label}"
    make_dir(out_dir)
    warnings = gradcam_warnings(model, last_conv, trained.image_size)
    feature_maps, skipped = write_feature_maps(model, image, last_conv, out_dir, title)
    gradcam, gradcam_title = write_gradcam(model, image, last_conv, predicted, out_dir, title, warnings)
    summary: dict[str, Any] = {
        "image": image_path,
        "predicted_class": trained.class_names[predicted],
        "probability": float(probabilities[predicted]),
        "last_conv_layer": last_conv,
        "filters": plot_filters(first_conv_layer(model), out_dir / "filters.png", f"{run}: first convolution layer"),
        "feature_maps": feature_maps,
        "feature_maps_skipped": skipped,  # conv layers whose maps are smaller than MIN_MAP_SIDE, with their size
        "guided_backprop": write_guided_backprop(model, image, last_conv, out_dir, title, seed),
        "gradcam": gradcam,
        "gradcam_title": gradcam_title,  # the warnings are in the picture too
        "warnings": warnings,
    }
    write_json(out_dir / "explain.json", summary)
    return summary
