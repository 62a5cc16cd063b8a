"""Fine-tuning ImageNet backbones from ``keras.applications`` with a new classification head.

The model is one flat functional graph: raw 0-255 RGB image -> the backbone's own preprocessing
-> the backbone's layers (built on the model's input tensor, not nested, so Grad-CAM and guided
backpropagation can reach every layer) -> global average pooling -> dropout -> [dense] -> a
float32 softmax. BatchNormalization layers stay frozen (inference mode) in every strategy, as the
Keras transfer-learning guide advises: unfreezing them wrecks the pretrained statistics on
small batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, TransferConfig, from_dict
from .data import is_augmentation_layer
from .errors import UserError, brief

# Layers this module adds around a backbone; every other layer of a transfer model is the backbone's.
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

    @property
    def preprocess_input(self) -> Callable:
        """The backbone's own ``preprocess_input`` (the model reproduces it with built-in layers)."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    def build(self, **kwargs):
        import keras

        return getattr(keras.applications, self.constructor)(include_top=False, **dict(self.extra_kwargs), **kwargs)


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
            "efficientnetv2s", "efficientnet_v2", "EfficientNetV2S", 384, 32, "inside", "top_activation",
            (("include_preprocessing", True),),
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
    reason = brief(error)
    return (
        f"could not download the ImageNet weights of {backbone.name} ({reason}): pass --weights PATH to a local "
        f"no-top weights file (Keras caches them in ~/.keras/models on a machine with internet), or --weights none"
    )


def build_backbone_on(backbone: Backbone, tensor, weights: str | None):
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


def preprocess(backbone: Backbone, images):
    """The backbone's ``preprocess_input`` with built-in, weightless operations (so saved models load anywhere)."""
    import keras

    if backbone.preprocessing == "caffe":
        # preprocess_input flips RGB to BGR, then subtracts the mean; subtracting first in RGB is the same.
        centred = keras.layers.Rescaling(1.0, offset=[-m for m in CAFFE_MEAN_RGB], name=PREPROCESS_NAME)(images)
        return keras.ops.flip(centred, axis=-1)
    if backbone.preprocessing == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_NAME)(images)
    return images


def build_transfer(
    backbone: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = "imagenet",
    unfreeze: int | str = 0,
    input_size: int | None = None,
    dropout: float = 0.2,
    dense_units: list[int] | tuple[int, ...] = (),
    augmentation: Sequence[Any] | None = None,
):
    """A ``keras.applications`` backbone with a new ``num_classes``-way head, as one flat model.

    ``weights``: "imagenet" (through Keras's download cache), ``None``, or a local no-top weights
    file. ``unfreeze``: 0 trains the head only, K also the top K backbone layers, "all" every
    backbone layer; BatchNormalization layers are never trained. ``input_size`` defaults to the
    backbone's native resolution. The model takes raw 0-255 RGB images. ``augmentation`` layers
    (``data.augmentation_layers``) go first and change images in training only.
    """
    import keras

    from .models import apply_layers

    spec = get_backbone(backbone)
    size = input_size or spec.input_size
    if size < spec.min_size:
        raise UserError(f"--image-size {size} is too small for {spec.name}: use --image-size {spec.min_size} or more")
    check_head(num_classes, dropout, dense_units)
    parse_unfreeze(unfreeze)

    # -- layers and graph: the backbone is built on our input tensor, so the model stays flat.
    images = keras.Input(shape=(size, size, 3), name=INPUT_NAME)
    base = build_backbone_on(spec, preprocess(spec, apply_layers(augmentation or (), images)), resolve_weights(weights))
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_NAME)(base.output)
    x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    for index, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dense_dropout{index}")(x)
    # float32 softmax: under mixed precision a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=PREDICTIONS_NAME)(x)
    model = keras.Model(images, outputs, name=f"transfer_{spec.name}")
    set_trainable(model, unfreeze)
    return model


def check_head(num_classes: int, dropout: float, dense_units) -> None:
    if num_classes < 2:
        raise UserError(f"{num_classes} class(es): a classifier needs at least 2")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--head-dropout {dropout}: must be in [0, 1)")
    if any(units < 1 for units in dense_units):
        raise UserError(f"--head-dense-units {list(dense_units)}: every layer needs at least 1 unit")


def transfer_config(config: RunConfig, num_classes: int) -> TransferConfig:
    """The run's model settings with the class count and image size of its data."""
    return from_dict(TransferConfig, {**config.model, "num_classes": num_classes, "input_size": config.data.image_size})


def build_transfer_from_config(config: RunConfig, num_classes: int, augmentation: Sequence[Any] | None = None):
    """The model of a ``transfer`` run, trainable as its final (or only) phase asks."""
    model_config = transfer_config(config, num_classes)
    return build_transfer(
        model_config.backbone,
        num_classes,
        weights=model_config.weights,
        unfreeze=model_config.unfreeze,
        input_size=model_config.input_size,
        dropout=model_config.dropout,
        dense_units=model_config.dense_units,
        augmentation=augmentation,
    )


# -- freezing -------------------------------------------------------------------------------


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


def is_own_layer(layer) -> bool:
    """A layer this module added (input, preprocessing, head), not one of the backbone's."""
    name = layer.name
    return (
        name in (INPUT_NAME, PREPROCESS_NAME, FEATURES_NAME, PREDICTIONS_NAME)
        or name.startswith(HEAD_PREFIX)
        or is_augmentation_layer(layer)
    )


def backbone_layers(model) -> list:
    """The backbone's layers in the order they appear in it (input side first)."""
    return [layer for layer in model.layers if not is_own_layer(layer)]


def head_layers(model) -> list:
    """The layers after the pooled features, in order."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX) or layer.name == PREDICTIONS_NAME]


def set_trainable(model, unfreeze: int | str) -> None:
    """Head trainable; the top ``unfreeze`` backbone layers too (or all); never BatchNormalization.

    Call ``compile`` afterwards: Keras fixes the set of trained weights when a model is compiled.
    """
    import keras

    unfreeze = parse_unfreeze(unfreeze)
    layers = backbone_layers(model)
    count = len(layers) if unfreeze == "all" else min(unfreeze, len(layers))
    for index, layer in enumerate(layers):
        unfrozen = index >= len(layers) - count
        layer.trainable = unfrozen and not isinstance(layer, keras.layers.BatchNormalization)
    for layer in head_layers(model):
        layer.trainable = True


def count_trainable(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def calibrate_batch_norm(model, images) -> None:
    """Set every BatchNormalization's statistics from one batch, for a backbone without pretrained weights.

    A randomly initialised backbone whose BatchNormalization layers are frozen at their initial
    statistics (mean 0, variance 1) shrinks its signal layer after layer: MobileNetV2's pooled
    features come out near 1e-12 and nothing can be learnt. One forward pass in training mode
    with momentum 0 stores the batch's statistics; the layers stay frozen afterwards.
    """
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    try:
        model(images, training=True)
    finally:
        for layer, (trainable, momentum) in zip(norms, saved):
            layer.trainable, layer.momentum = trainable, momentum


# -- phases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one trainability and one learning rate."""

    name: str
    first_epoch: int  # epochs done before the phase starts
    last_epoch: int  # epochs done when it ends
    unfreeze: int | str
    learning_rate: float


def plan_phases(config: RunConfig) -> list[Phase]:
    """Head then fine-tuning (two-phase), or one phase; backbone layers always train at the lower rate."""
    model = model_settings(config)
    unfreeze = parse_unfreeze(model.unfreeze)
    epochs, rate = config.train.epochs, config.train.learning_rate
    low_rate = rate * model.finetune_lr_factor
    if unfreeze == 0:
        return [Phase("head", 0, epochs, 0, rate)]
    if not model.two_phase:
        return [Phase("fine-tune", 0, epochs, unfreeze, low_rate)]
    if not 1 <= model.head_epochs < epochs:
        raise UserError(
            f"--head-epochs {model.head_epochs} with --epochs {epochs}: the head phase needs at least 1 epoch "
            f"and must leave some for fine-tuning (or pass --no-two-phase)"
        )
    return [Phase("head", 0, model.head_epochs, 0, rate), Phase("fine-tune", model.head_epochs, epochs, unfreeze, low_rate)]


def validate_transfer(config: RunConfig, num_classes: int) -> None:
    """Refuse bad transfer settings before any file is written."""
    model = transfer_config(config, num_classes)
    spec = get_backbone(model.backbone)
    if model.input_size < spec.min_size:
        raise UserError(
            f"--image-size {model.input_size} is too small for {spec.name}: use --image-size {spec.min_size} or more"
        )
    check_head(num_classes, model.dropout, model.dense_units)
    if not 0 < model.finetune_lr_factor <= 1:
        raise UserError(f"--finetune-lr-factor {model.finetune_lr_factor}: must be in (0, 1], e.g. 0.05")
    if resolve_weights(model.weights) == "imagenet":
        fetch_imagenet_weights(spec, model.input_size)
    plan_phases(config)


def fetch_imagenet_weights(backbone: Backbone, size: int) -> None:
    """Download (or find in Keras's cache) the ImageNet weights, so no network failure leaves half a run behind."""
    import keras

    build_backbone_on(backbone, keras.Input(shape=(size, size, 3)), "imagenet")


def phase_config(config: RunConfig, phase: Phase) -> RunConfig:
    """The run's config as one phase sees it: its own epochs, so the warm-up and decay fit the phase."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=phase.last_epoch - phase.first_epoch))


def model_settings(config: RunConfig) -> TransferConfig:
    return from_dict(TransferConfig, dict(config.model))


def apply_final_trainability(model, config: RunConfig) -> None:
    """Trainable as the run's last phase asks (what metrics.json reports as trainable_params)."""
    set_trainable(model, plan_phases(config)[-1].unfreeze)


def uses_feature_cache(config: RunConfig, phases: list[Phase]) -> bool:
    """Head-only training on unaugmented images: the backbone's output never changes, so compute it once."""
    model = model_settings(config)
    return model.feature_cache and not config.data.augment and all(p.unfreeze == 0 for p in phases)


def fit_transfer(
    model,
    config: RunConfig,
    datasets: dict[str, Any],
    state: dict[str, Any],
    callbacks: list,
    *,
    steps_per_epoch: int,
    learning_rate: float | None = None,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
) -> None:
    """Train through the run's phases from ``state['epochs_done']``, recompiling at each phase change.

    A run resumed inside a phase keeps the checkpoint's optimizer state; trainability is applied
    again anyway, so a resumed fine-tuning phase trains exactly the layers it trained before.
    ``learning_rate`` is the run's rate after any scaling for several replicas.
    """
    from .training import compile_model

    phases = plan_phases(config)
    if state["epochs_done"] == 0 and model_settings(config).weights is None:
        images, _ = next(iter(datasets["train"]))
        calibrate_batch_norm(model, images)
    scale = (learning_rate or config.train.learning_rate) / config.train.learning_rate
    cached = uses_feature_cache(config, phases)
    for phase in phases:
        if state["epochs_done"] >= phase.last_epoch or state["stopped"]:
            continue
        resumed_inside = state["epochs_done"] > phase.first_epoch and model.optimizer is not None
        set_trainable(model, phase.unfreeze)
        if not resumed_inside:
            # Under --distribute the optimizer's variables must be created in the model's strategy.
            with model.distribute_strategy.scope():
                compile_model(model, phase_config(config, phase), steps_per_epoch, phase.learning_rate * scale)
        if len(phases) > 1:
            log(
                f"phase {phase.name}: epochs {phase.first_epoch + 1}-{phase.last_epoch}, "
                f"{count_trainable(model):,} trainable parameters, learning rate {phase.learning_rate * scale:g}"
            )
        fit_kwargs = dict(
            epochs=phase.last_epoch, initial_epoch=state["epochs_done"], callbacks=callbacks, verbose=verbose
        )
        if cached:
            from .features import fit_head_on_features

            fit_head_on_features(model, config, datasets, fit_kwargs, log=log)
        else:
            # The tf.data pipeline shuffles; Keras would only warn.
            model.fit(datasets["train"], validation_data=datasets["validation"], shuffle=False, **fit_kwargs)
