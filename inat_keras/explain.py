"""What a trained CNN looks at: filters, feature maps, guided backpropagation, Grad-CAM.

``python -m inat_keras explain runs/<name> --image photo.jpg`` writes ``runs/<name>/explain/``:
``filters.png``, ``feature_maps_<layer>.png`` per conv block, ``guided_backprop.png``,
``gradcam.png`` and ``explain.json`` (what each picture shows, and its numbers).

tf-keras-vis does the gradients (``Saliency`` with its ``GuidedBackpropagation`` modifier,
``Gradcam``, ``GradcamPlusPlus``); it works with Keras 3.15 as it is. This module adds only what
it lacks: guided backpropagation through ``keras.layers.ReLU`` layers (MobileNetV2's ReLU6), which
have no ``activation`` attribute for its modifier to replace. Models must be flat (a transfer
backbone built on the model's input, as :mod:`inat_keras.transfer` does): Keras 3 cannot expose
the layers of a nested sub-model as outputs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .io import read_csv, write_json
from .runs import TrainedModel, add_model_args, default_output_dir, load_trained

NUM_NEURONS = 10
MAX_FEATURE_LAYERS = 5
MAX_CHANNELS = 64


# -- the model, flat ------------------------------------------------------------------------------


def conv_layers(model) -> list:
    """``Conv2D`` layers in graph order (a backbone's depthwise convolutions are not Conv2D)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def last_conv_layer_name(trained: TrainedModel, model) -> str:
    """A transfer backbone's last conv layer from the backbone registry; otherwise (the scratch
    CNN's ``conv<N>``, a bare ``.keras`` file) the last ``Conv2D`` of the model."""
    import keras

    config = trained.config
    if config is not None and config.kind == "transfer":
        from .transfer import get_backbone

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


def first_conv_layer(model):
    convs = conv_layers(model)
    if not convs:
        raise UserError("the model has no Conv2D layer whose filters could be shown")
    return convs[0]


def feature_layers(model, last_conv: str) -> list[tuple[str, Any]]:
    """(conv layer name, the layer whose output is shown) for each conv block, at most ``MAX_FEATURE_LAYERS``.

    The scratch CNN's blocks are ``conv<i>`` -> ``bn<i>`` -> ``act<i>``: the activation is shown.
    A backbone has dozens of convolutions: evenly spaced ones, its last included.
    """
    names = [layer.name for layer in conv_layers(model)]
    names = names[: names.index(last_conv) + 1] if last_conv in names else names
    if len(names) > MAX_FEATURE_LAYERS:
        picks = np.linspace(0, len(names) - 1, MAX_FEATURE_LAYERS).round().astype(int)
        names = [names[i] for i in sorted(set(picks))]
    chosen = []
    for name in names:
        shown = name
        if name.startswith("conv") and name[4:].isdigit() and f"act{name[4:]}" in {l.name for l in model.layers}:
            shown = f"act{name[4:]}"
        chosen.append((name, model.get_layer(shown)))
    return chosen


# -- guided backpropagation ------------------------------------------------------------------------


def guided_relu_layers():
    """A tf-keras-vis model modifier: guided gradients through ``keras.layers.ReLU`` layers too."""
    import keras
    import tensorflow as tf

    def guided(layer):
        call = layer.call
        upper = layer.max_value

        @tf.custom_gradient
        def guided_call(x):
            def grad(dy):
                passes = tf.cast(x > layer.threshold, dy.dtype)
                if upper is not None:
                    passes *= tf.cast(x < upper, dy.dtype)
                return tf.cast(dy > 0, dy.dtype) * passes * dy

            return call(x), grad

        return guided_call

    def modify(model) -> None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.ReLU):
                layer.call = guided(layer)

    return modify


def count_relu_layers(model) -> int:
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


def guided_backprop_maps(model, image: np.ndarray, layer_name: str, seed: int, count: int = NUM_NEURONS) -> dict[str, Any]:
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

    def neuron_scores(output):
        return tf.stack([output[i, y, x, c] for i, (c, (y, x)) in enumerate(zip(channels, positions))])

    seeds = np.repeat(image[None].astype(np.float32), len(channels), axis=0)
    maps = np.asarray(saliency(neuron_scores, seeds, keepdims=True, normalize_map=False))
    return {
        "layer": layer_name,
        "channels": channels,
        "positions": positions,
        "activations": [float(features[y, x, c]) for c, (y, x) in zip(channels, positions)],
        "maps": maps,
    }


def as_picture(gradient: np.ndarray) -> np.ndarray:
    """A gradient as an RGB picture: centred on grey, 0.15 per standard deviation (the usual deprocessing)."""
    centred = gradient - gradient.mean()
    return np.clip(0.5 + 0.15 * centred / (centred.std() + 1e-8), 0.0, 1.0)


# -- Grad-CAM ------------------------------------------------------------------------------------


def class_activation_maps(model, image: np.ndarray, layer_name: str, class_index: int) -> dict[str, np.ndarray]:
    """Grad-CAM and Grad-CAM++ of ``class_index`` on ``layer_name``, resized to the image, in [0, 1]."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    seed = image[None].astype(np.float32)
    maps = {}
    # Scores before the softmax: its saturation would flatten the gradients (tf-keras-vis advice).
    for name, method in (("Grad-CAM", Gradcam), ("Grad-CAM++", GradcamPlusPlus)):
        explainer = method(model, model_modifier=ReplaceToLinear(), clone=True)
        # The named layer itself (a backbone's last activation is not a Conv layer tf-keras-vis would seek).
        cam = explainer(
            CategoricalScore([class_index]), seed, penultimate_layer=layer_name, seek_penultimate_conv_layer=False
        )
        maps[name] = np.asarray(cam)[0]
    return maps


# -- pictures ------------------------------------------------------------------------------------


def grid_shape(count: int) -> tuple[int, int]:
    """8 x 8 for 64, otherwise as square as possible (rows, columns)."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def space_grid(figure, rows: int) -> None:
    """Room for panel titles and a two-line heading (constrained layout takes seconds on 64 panels)."""
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 1.0 / height, wspace=0.1, hspace=0.35)


def plot_filters(layer, path: Path, title: str) -> dict[str, Any]:
    from .plots import pyplot, save_figure

    kernel = np.asarray(layer.get_weights()[0], dtype=np.float64)  # (kh, kw, in, out)
    if kernel.shape[2] == 3:
        pictures = [kernel[..., i] for i in range(kernel.shape[3])]
        note = "RGB weights, each filter min-max scaled"
    else:
        pictures = [kernel[..., i].mean(axis=2) for i in range(kernel.shape[3])]
        note = f"mean over {kernel.shape[2]} input channels, min-max scaled"
    rows, columns = grid_shape(len(pictures))
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.8), squeeze=False)
    space_grid(figure, rows)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(pictures):
            picture = pictures[index]
            spread = picture.max() - picture.min()
            scaled = (picture - picture.min()) / (spread + 1e-12)
            axis.imshow(scaled, cmap=None if picture.ndim == 3 else "gray", interpolation="nearest")
            axis.set_title(f"filter {index + 1}", fontsize=7)
    kh, kw, c_in, c_out = kernel.shape
    figure.suptitle(f"{title}\n{layer.name}: {c_out} filters of {kh}×{kw}×{c_in} ({note})")
    save_figure(figure, path)
    return {"layer": layer.name, "shape": list(kernel.shape)}


def plot_feature_maps(maps: np.ndarray, conv_name: str, shown_name: str, path: Path, title: str) -> dict[str, Any]:
    from .plots import pyplot, save_figure

    channels = min(maps.shape[-1], MAX_CHANNELS)
    rows, columns = grid_shape(channels)
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.9), squeeze=False)
    space_grid(figure, rows)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < channels:
            axis.imshow(maps[..., index], cmap="viridis", interpolation="nearest")
            axis.set_title(f"channel {index + 1}", fontsize=7)
    after = f" (after {shown_name})" if shown_name != conv_name else ""
    figure.suptitle(
        f"{title}\nfeature maps of {conv_name}{after}: channels 1-{channels} of {maps.shape[-1]}, "
        f"{maps.shape[0]}×{maps.shape[1]} px, brighter = stronger"
    )
    save_figure(figure, path)
    return {"layer": conv_name, "shown": shown_name, "shape": list(maps.shape), "std": float(maps.std())}


def plot_guided_backprop(image: np.ndarray, result: dict[str, Any], path: Path, title: str) -> None:
    from .plots import pyplot, save_figure

    count = len(result["channels"])
    columns = min(6, count + 1)
    rows = math.ceil((count + 1) / columns)
    plt = pyplot()
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns, 2.6 * rows + 0.8), squeeze=False, layout="constrained"
    )
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("input image", fontsize=9)
    neurons = zip(result["channels"], result["positions"], result["activations"])
    for index, (channel, (y, x), activation) in enumerate(neurons):
        axis = axes.flat[index + 1]
        axis.imshow(as_picture(result["maps"][index]))
        axis.set_title(f"{result['layer']} channel {channel}\nat ({y}, {x}), activation {activation:.2f}", fontsize=8)
    figure.suptitle(f"{title}\nguided backpropagation: the input pattern exciting each neuron (grey = no effect)")
    save_figure(figure, path)


def plot_gradcam(image: np.ndarray, maps: dict[str, np.ndarray], layer: str, path: Path, title: str) -> None:
    from .plots import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(4.2 * (1 + len(maps)), 4.6), layout="constrained")
    axes[0].imshow(image)
    axes[0].set_title("input image")
    axes[0].axis("off")
    for axis, (name, cam) in zip(axes[1:], maps.items()):
        axis.imshow(image)
        shown = axis.imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        axis.set_title(f"{name} on {layer}")
        axis.axis("off")
    figure.colorbar(shown, ax=list(axes[1:]), fraction=0.03, label="importance for the predicted class (0-1)")
    figure.suptitle(title)
    save_figure(figure, path)


# -- the command --------------------------------------------------------------------------------


def default_image(trained: TrainedModel) -> str:
    """The run's first test image that still exists (the dataset may have moved since training)."""
    if trained.run_dir is not None and (trained.run_dir / "split.csv").is_file():
        tests = [row["path"] for row in read_csv(trained.run_dir / "split.csv") if row["subset"] == "test"]
        for path in tests:
            if Path(path).is_file():
                return path
        if tests:
            raise UserError(
                f"no --image given, and none of the {len(tests)} test images in {trained.run_dir / 'split.csv'} exists "
                f"any more (the first: {tests[0]}): pass --image FILE"
            )
    raise UserError(
        f"no --image given and {trained.model_path} has no run split.csv to take a test image from: pass --image FILE"
    )


def load_explained_image(path: str, size: int) -> np.ndarray:
    from .data import load_image

    if not Path(path).is_file():
        raise UserError(f"--image {path} does not exist")
    try:
        return load_image(path, size)
    except Exception as error:
        raise UserError(f"--image {path} is not a readable image ({str(error).splitlines()[0]})") from None


def write_feature_maps(model, image: np.ndarray, last_conv: str, out_dir: Path, title: str) -> list[dict[str, Any]]:
    import keras

    chosen = feature_layers(model, last_conv)
    # Direct calls, not predict(): each throwaway model would trace a new predict function.
    extractor = keras.Model(model.input, [layer.output for _, layer in chosen])
    activations = extractor(image[None].astype(np.float32), training=False)
    activations = activations if isinstance(activations, list | tuple) else [activations]
    written = []
    for (conv_name, shown), maps in zip(chosen, activations):
        path = out_dir / f"feature_maps_{conv_name}.png"
        written.append({**plot_feature_maps(np.asarray(maps)[0], conv_name, shown.name, path, title), "file": path.name})
    return written


def write_guided_backprop(model, image: np.ndarray, last_conv: str, out_dir: Path, title: str, seed: int) -> dict[str, Any]:
    guided = guided_backprop_maps(model, image, last_conv, seed)
    relu_layers = count_relu_layers(model)
    # Guided backpropagation is defined through ReLUs; a swish network (EfficientNet) gets plain gradients.
    method = "" if relu_layers else " (no ReLU layers to guide: plain gradients)"
    heading = f"{title}; {len(guided['channels'])} random neurons of {last_conv} (seed {seed}){method}"
    plot_guided_backprop(image, guided, out_dir / "guided_backprop.png", heading)
    return {
        **{key: guided[key] for key in ("layer", "channels", "positions", "activations")},
        "map_std": [float(m.std()) for m in guided["maps"]],
        "guided_relu_layers": relu_layers,
    }


def write_gradcam(model, image: np.ndarray, last_conv: str, predicted: int, out_dir: Path, title: str) -> dict[str, Any]:
    cams = class_activation_maps(model, image, last_conv, predicted)
    plot_gradcam(image, cams, last_conv, out_dir / "gradcam.png", f"{title}: where the model looked")
    peak = lambda cam: [int(v) for v in np.unravel_index(cam.argmax(), cam.shape)]
    return {name: {"std": float(cam.std()), "max_at": peak(cam)} for name, cam in cams.items()}


def gradcam_warnings(model, last_conv: str, image_size: int) -> list[str]:
    """Grad-CAM on a 1x1 map has one cell: a uniform picture that shows nothing, said so instead of left blank."""
    height, width = (int(side) for side in model.get_layer(last_conv).output.shape[1:3])
    if height * width > 1:
        return []
    return [
        f"{last_conv} is 1x1 at {image_size} px, so Grad-CAM has a single cell and cannot show where the model "
        f"looked: train at a larger --image-size"
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
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "image": image_path,
        "predicted_class": trained.class_names[predicted],
        "probability": float(probabilities[predicted]),
        "last_conv_layer": last_conv,
        "filters": plot_filters(first_conv_layer(model), out_dir / "filters.png", f"{run}: first convolution layer"),
        "feature_maps": write_feature_maps(model, image, last_conv, out_dir, title),
        "guided_backprop": write_guided_backprop(model, image, last_conv, out_dir, title, seed),
        "gradcam": write_gradcam(model, image, last_conv, predicted, out_dir, title),
        "warnings": gradcam_warnings(model, last_conv, trained.image_size),
    }
    write_json(out_dir / "explain.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_keras explain",
        description="Filters, feature maps, guided backpropagation and Grad-CAM of a trained CNN.",
    )
    add_model_args(parser)
    parser.add_argument("--image", help="image to explain (default: the run's first test image)")
    parser.add_argument("--out", help="output folder (default: <run>/explain)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the guided-backpropagation neurons")
    args = parser.parse_args(argv)
    trained = load_trained(args.model, args.classes)
    out_dir = default_output_dir(trained, args.out, "explain")
    summary = explain(trained, out_dir, image_path=args.image, seed=args.seed)
    maps = ", ".join(item["file"] for item in summary["feature_maps"])
    print(f"{summary['image']}: predicted {summary['predicted_class']} ({summary['probability']:.1%})")
    print(f"written to {out_dir}: filters.png, {maps}, guided_backprop.png, gradcam.png, explain.json")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    return 0
