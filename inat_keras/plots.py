"""Training curves. matplotlib is used headless (Agg) and only when a plot is made."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from inat_keras.storage import atomic_write


def pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike) -> None:

    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    pyplot().close(figure)


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy per epoch, training and validation, side by side."""
    save_figure(draw_curves(history, title), Path(path))


def draw_curves(history: list[dict[str, float]], title: str = "") -> Any:
    """The figure of ``plot_curves``; epochs ticked at whole numbers (a 2-epoch run got 1.2, 1.4, ...)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric, label in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for prefix, style, name in (("", "-o", "train"), ("val_", "-s", "validation")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, label=name, markersize=3)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
