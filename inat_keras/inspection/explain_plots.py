"""The pictures of ``explain``: filters, feature maps, guided backpropagation and Grad-CAM."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from inat_keras.plots import pyplot, save_figure

MAX_CHANNELS = 64  # feature-map tiles drawn per layer


def as_picture(gradient: np.ndarray) -> np.ndarray:
    """A gradient as an RGB picture: centred on grey, 0.15 per standard deviation (the usual deprocessing)."""
    centred = gradient - gradient.mean()
    return np.clip(0.5 + 0.15 * centred / (centred.std() + 1e-8), 0.0, 1.0)


# -- pictures ------------------------------------------------------------------------------------


def grid_shape(count: int) -> tuple[int, int]:
    """8 x 8 for 64, otherwise as square as possible (rows, columns)."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def space_grid(figure: Any, rows: int) -> None:
    """Room for panel titles and a two-line heading (constrained layout takes seconds on 64 panels)."""
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 1.0 / height, wspace=0.1, hspace=0.35)


def plot_filters(layer: Any, path: Path, title: str) -> dict[str, Any]:

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

    count = len(result["channels"])
    columns = min(6, count + 1)
    rows = math.ceil((count + 1) / columns)
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows + 0.8), squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("input image", fontsize=9)
    neurons = zip(result["channels"], result["positions"], result["activations"], strict=True)
    for index, (channel, (y, x), activation) in enumerate(neurons):
        axis = axes.flat[index + 1]
        gradient = result["maps"][index]
        axis.imshow(as_picture(gradient))
        # A ReLU6 saturated at 6 (or a dead ReLU) passes no gradient: a flat grey tile, said so.
        flat = "\nno gradient reaches the input" if np.ptp(gradient) == 0 else ""
        # Counted from 1, as the feature maps' channels and the filters are.
        axis.set_title(
            f"{result['layer']} channel {channel + 1}\nat ({y + 1}, {x + 1}), activation {activation:.2f}{flat}", fontsize=8
        )
    figure.suptitle(
        f"{title}\nguided backpropagation: the input pattern exciting each neuron (grey = no effect); "
        "channel and (row, column) counted from 1"
    )
    save_figure(figure, path)


def plot_gradcam(
    image: np.ndarray, maps: dict[str, np.ndarray], layer: str, path: Path, title: str, warnings: list[str] | None = None
) -> str:
    """The image and each class activation map over it; ``warnings`` join the title. Returns the title drawn."""

    plt = pyplot()
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(4.2 * (1 + len(maps)), 4.6), layout="constrained")
    axes[0].imshow(image)
    axes[0].set_title("input image")
    axes[0].axis("off")
    for axis, (name, cam) in zip(axes[1:], maps.items(), strict=True):
        axis.imshow(image)
        shown = axis.imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        axis.set_title(f"{name} on {layer}")
        axis.axis("off")
    figure.colorbar(shown, ax=list(axes[1:]), fraction=0.03, label="importance for the predicted class (0-1)")
    width = 40 * (1 + len(maps))  # characters of title per line, about the figure's width
    heading = "\n".join(
        [title, *(textwrap.fill(f"warning: {warning}", width, break_on_hyphens=False) for warning in warnings or [])]
    )
    figure.suptitle(heading, color="darkred" if warnings else "black")
    save_figure(figure, path)
    return heading
