"""The registry of ``keras.applications`` backbones: how to build each, feed it and fetch its weights."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inat_keras.errors import UserError, brief

# Layers added around a backbone; every other layer of a transfer model is the backbone's. Explain,
# export and the feature cache find a model's parts by these names.
INPUT_NAME = "image"
PREPROCESS_NAME = "preprocess"
FEATURES_NAME = "pooled_features"
HEAD_PREFIX = "head_"
PREDICTIONS_NAME = "predictions"

# Mean of ImageNet in RGB order, subtracted by the "caffe" preprocessing of ResNet50 and VGG16.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


@dataclass(frozen=True)
class Backbone:
    """How to build one ``keras.applications`` backbone and feed it."""

    name: str
    module: str  # keras.applications.<module>
    constructor: str  # keras.applications.<Constructor>
    input_size: int  # the resolution its ImageNet weights were trained at
    min_size: int  # the smallest input keras.applications accepts
    # "caffe" (RGB->BGR, minus the ImageNet mean), "tf" (to [-1, 1]) or "inside" (the backbone rescales).
    preprocessing: str
    last_conv_layer: str  # the layer Grad-CAM reads
    extra_kwargs: tuple[tuple[str, Any], ...] = ()
    # Keras ends a no-top ConvNeXt with a LayerNormalization named by a process-wide counter
    # ("layer_normalization_3"): the build names it ``last_conv_layer``, so Grad-CAM finds it in every model.
    names_last_layer: bool = False

    @property
    def preprocess_input(self) -> Callable:
        """The backbone's own ``preprocess_input`` (the model reproduces it with built-in layers)."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    def build(self, **kwargs: Any) -> Any:
        import keras

        model = getattr(keras.applications, self.constructor)(include_top=False, **dict(self.extra_kwargs), **kwargs)
        if self.names_last_layer:
            # Before the model is saved or cloned: both read the layer's name then (its weights' paths never).
            model.layers[-1].name = self.last_conv_layer
        return model


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet50", "resnet50", "ResNet50", 224, 32, "caffe", "conv5_block3_out"),
        Backbone("vgg16", "vgg16", "VGG16", 224, 32, "caffe", "block5_conv3"),
        Backbone("mobilenetv2", "mobilenet_v2", "MobileNetV2", 224, 32, "tf", "out_relu"),
        Backbone("inceptionv3", "inception_v3", "InceptionV3", 299, 75, "tf", "mixed10"),
        Backbone("xception", "xception", "Xception", 299, 71, "tf", "block14_sepconv2_act"),
        Backbone("efficientnetb0", "efficientnet", "EfficientNetB0", 224, 32, "inside", "top_activation"),
        # Keras's EfficientNetV2-S weights were trained and evaluated at 384 px.
        Backbone(
            "efficientnetv2s",
            "efficientnet_v2",
            "EfficientNetV2S",
            384,
            32,
            "inside",
            "top_activation",
            (("include_preprocessing", True),),
        ),
        # Keras's EfficientNetV2-M and -L weights: ImageNet-1k, evaluated at 480 px.
        *(
            Backbone(
                f"efficientnetv2{size}",
                "efficientnet_v2",
                f"EfficientNetV2{size.upper()}",
                480,
                32,
                "inside",
                "top_activation",
                (("include_preprocessing", True),),
            )
            for size in ("m", "l")
        ),
        # ConvNeXt normalises its 0-255 input itself (a Normalization layer) and uses LayerNormalization, which
        # keeps no running statistics (see transfer.set_trainable). Tiny and Small: ImageNet-1k weights; Base:
        # ImageNet-21k, fine-tuned on ImageNet-1k; all at 224 px.
        *(
            Backbone(
                f"convnext_{size}",
                "convnext",
                f"ConvNeXt{size.title()}",
                224,
                32,
                "inside",
                f"convnext_{size}_layernorm",
                names_last_layer=True,
            )
            for size in ("tiny", "small", "base")
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise UserError(f"--backbone {name}: choose one of {', '.join(BACKBONES)}") from None


# -- weights ------------------------------------------------------------------------------


def resolve_weights(weights: str | os.PathLike | None) -> str | None:
    """``"imagenet"``, ``None`` (also spelt "none") or an existing local weights file."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {weights}: no such file; pass a local no-top weights file, 'imagenet' or 'none'")
    if not path.name.endswith((".h5", ".hdf5")):
        raise UserError(f"--weights {weights}: expected a Keras weights file ending in .h5 or .weights.h5")
    return str(path)


def is_download_failure(error: Exception) -> bool:
    # keras.utils.get_file turns URLError/HTTPError into a plain Exception("URL fetch failure on ...").
    return isinstance(error, OSError) or "URL fetch failure" in str(error)


def download_failure_message(backbone: Backbone, error: Exception) -> str:
    """One line naming the weights file Keras tried to fetch (read from ``keras.utils.get_file``'s message) and the fixes."""
    fetch = re.search(r"URL fetch failure on (\S+?): (.*)", " ".join(str(error).split()))
    if fetch is None:
        return (
            f"could not download the ImageNet weights of {backbone.name} ({brief(error)}): pass --weights PATH to a "
            f"local no-top weights file (Keras caches them in ~/.keras/models on a machine with internet), or --weights none"
        )
    url, reason = fetch.groups()
    file = url.rsplit("/", 1)[-1]
    return (
        f"could not download {file}, the ImageNet weights of {backbone.name} ({brief(Exception(reason), 120)}): "
        f"on a machine with internet, get {url} (Keras keeps it as ~/.keras/models/{file}) and pass "
        f"--weights PATH to that file, or pass --weights none"
    )


def build_backbone_on(backbone: Backbone, tensor: Any, weights: str | None) -> Any:
    """The backbone built on ``tensor`` (so its layers join the caller's graph), with its weights loaded."""
    try:
        return backbone.build(weights=weights, input_tensor=tensor)
    except UserError:
        raise
    except Exception as error:
        if weights == "imagenet" and is_download_failure(error):
            raise UserError(download_failure_message(backbone, error)) from None
        if weights not in (None, "imagenet"):
            reason = brief(error)
            raise UserError(
                f"--weights {weights} does not fit {backbone.name} ({reason}): pass the no-top weights file "
                f"of this backbone, 'imagenet' or 'none'"
            ) from None
        raise


# -- the model -------------------------------------------------------------------------------


def preprocess(backbone: Backbone, images: Any) -> Any:
    """The backbone's ``preprocess_input`` with built-in, weightless operations (so saved models load anywhere)."""
    import keras

    if backbone.preprocessing == "caffe":
        # preprocess_input flips RGB to BGR, then subtracts the mean; subtracting first in RGB is the same.
        centred = keras.layers.Rescaling(1.0, offset=[-m for m in CAFFE_MEAN_RGB], name=PREPROCESS_NAME)(images)
        return keras.ops.flip(centred, axis=-1)
    if backbone.preprocessing == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_NAME)(images)
    return images


def fetch_imagenet_weights(backbone: Backbone, size: int) -> None:
    """Download (or find in Keras's cache) the ImageNet weights, so no network failure leaves half a run behind."""
    import keras

    build_backbone_on(backbone, keras.Input(shape=(size, size, 3)), "imagenet")


def parse_unfreeze(value: int | str) -> int | str:
    """0, a positive layer count, or "all"."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        try:
            value = int(value)
        except ValueError:
            raise UserError(f"--unfreeze {value}: give a number of top backbone layers, 0 or 'all'") from None
    if value < 0:
        raise UserError(f"--unfreeze {value}: give a number of top backbone layers, 0 or 'all'")
    return value
