"""explain: filters, feature maps, guided backpropagation and Grad-CAM, scratch and MobileNetV2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inat_keras.storage import read_json


@pytest.fixture(scope="module")
def scratch_explained(scratch_run: Path) -> Path:
    from inat_keras.cli.main import main

    assert main(["explain", str(scratch_run)]) == 0
    return scratch_run / "explain"


def png_pixels(path: Path, min_width: int, min_height: int) -> np.ndarray:
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.width >= min_width and picture.height >= min_height, (path.name, picture.size)
        return np.asarray(picture.convert("L"))


def test_every_picture_is_a_non_blank_png_of_readable_size(scratch_explained):
    names = ["filters.png", "guided_backprop.png", "gradcam.png"] + [f"feature_maps_conv{i}.png" for i in range(1, 5)]
    assert sorted(p.name for p in scratch_explained.glob("*.png")) == sorted(names)
    for name in names:
        assert png_pixels(scratch_explained / name, 400, 250).std() > 10, name


def test_filters_and_feature_maps_come_from_the_conv_blocks_whose_maps_are_at_least_4x4(scratch_explained):
    summary = read_json(scratch_explained / "explain.json")
    assert summary["filters"] == {"layer": "conv1", "shape": [3, 3, 3, 4]}
    assert [m["layer"] for m in summary["feature_maps"]] == [f"conv{i}" for i in range(1, 5)]
    assert [m["shown"] for m in summary["feature_maps"]] == [f"act{i}" for i in range(1, 5)]
    assert summary["feature_maps"][3]["shape"] == [4, 4, 32]
    assert all(m["std"] > 0 for m in summary["feature_maps"])
    assert summary["feature_maps_skipped"] == [{"layer": "conv5", "size": "2x2"}]  # 32 px halved four times


def test_grids_are_eight_by_eight_for_64_and_adapt_otherwise():
    from inat_keras.inspection.explain_plots import grid_shape

    assert grid_shape(64) == (8, 8)
    assert grid_shape(32) == (6, 6)
    assert grid_shape(4) == (2, 2)
    assert grid_shape(3) == (2, 2)


def test_guided_backprop_covers_ten_seeded_neurons_of_conv5_with_non_constant_maps(scratch_explained):
    guided = read_json(scratch_explained / "explain.json")["guided_backprop"]
    assert guided["layer"] == "conv5"
    assert len(guided["channels"]) == len(set(guided["channels"])) == 10
    assert all(0 <= c < 64 for c in guided["channels"])
    assert guided["channel_numbers"] == [c + 1 for c in guided["channels"]]  # as the pictures number them
    assert all(std > 0 for std in guided["map_std"])
    assert guided["guided_relu_layers"] == 6  # act1..act5 and dense_act1


def test_guided_backprop_differs_from_the_plain_gradient_and_is_reproducible(scratch_run):
    import keras
    import tensorflow as tf

    from inat_keras.data.decode import load_image
    from inat_keras.inspection.explain import guided_backprop_maps
    from inat_keras.inspection.trained import load_trained

    model = load_trained(scratch_run).model
    image = load_image(next((scratch_run.parent.parent / "data" / "val" / "class_b").iterdir()), 32)
    first = guided_backprop_maps(model, image, "conv5", seed=3, count=2)
    again = guided_backprop_maps(model, image, "conv5", seed=3, count=2)
    assert first["channels"] == again["channels"]

    channel, (y, x) = first["channels"][0], first["positions"][0]
    features = keras.Model(model.inputs, model.get_layer("conv5").output)
    seed = tf.constant(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(seed)
        neuron = features(seed)[0, y, x, channel]
    plain = tape.gradient(neuron, seed).numpy()[0]
    assert not np.allclose(first["maps"][0], plain, atol=1e-6)
    assert np.abs(first["maps"][0]).max() > 0


def test_gradcam_maps_the_predicted_class_and_warns_in_its_title_that_a_2x2_map_is_coarse(scratch_explained):
    summary = read_json(scratch_explained / "explain.json")
    assert summary["last_conv_layer"] == "conv5"
    assert set(summary["gradcam"]) == {"Grad-CAM", "Grad-CAM++"}
    assert all(values["std"] > 0.01 for values in summary["gradcam"].values())
    (warning,) = summary["warnings"]
    assert warning.startswith("conv5 is 2x2 at 32 px, so Grad-CAM has only 4 cells") and "--image-size" in warning
    assert "\nwarning: conv5 is 2x2 at 32 px" in summary["gradcam_title"]


def test_the_command_names_the_feature_map_layers_it_skipped(scratch_run, tmp_path, capsys):
    from inat_keras.cli.main import main

    assert main(["explain", str(scratch_run), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "feature maps: skipped 1 layer(s) whose maps are smaller than 4x4: conv5 (2x2)" in printed
    assert "warning: conv5 is 2x2 at 32 px" in printed


def test_guided_relu_layers_pass_only_positive_gradients_where_relu6_is_open():
    import keras
    import tensorflow as tf

    from inat_keras.inspection.explain import guided_relu_layers

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.ReLU(max_value=6.0, name="relu6")(inputs))
    guided_relu_layers()(model)
    x = tf.constant([[-1.0, 2.0, 3.0, 7.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x) * tf.constant([[1.0, 1.0, -1.0, 1.0]]))
    # Closed below 0 and above 6; a negative upstream gradient is dropped.
    assert tape.gradient(score, x).numpy().tolist() == [[0.0, 1.0, 0.0, 0.0]]


@pytest.mark.slow
def test_mobilenetv2_gradcam_and_guided_backprop_use_the_registry_last_conv_layer(transfer_run, scratch_run):
    from inat_keras.inspection.explain import explain
    from inat_keras.inspection.trained import load_trained
    from inat_keras.models.backbones import get_backbone

    run = transfer_run
    summary = explain(load_trained(run), run / "explain")
    layer = get_backbone("mobilenetv2").last_conv_layer
    assert summary["last_conv_layer"] == layer
    assert summary["guided_backprop"]["layer"] == layer
    assert summary["guided_backprop"]["guided_relu_layers"] > 30  # MobileNetV2's ReLU6 layers
    assert all(std > 0 for std in summary["guided_backprop"]["map_std"])
    assert all(values["std"] > 0 for values in summary["gradcam"].values())
    assert 1 <= len(summary["feature_maps"]) <= 5
    shown = {m["layer"] for m in summary["feature_maps"]}
    assert all(min(m["shape"][:2]) >= 4 for m in summary["feature_maps"])
    assert summary["feature_maps_skipped"] and not shown & {m["layer"] for m in summary["feature_maps_skipped"]}
    assert summary["warnings"] and summary["warnings"][0] in summary["gradcam_title"].replace("\n", " ")
    for name in ("filters.png", "gradcam.png", "guided_backprop.png"):
        assert png_pixels(run / "explain" / name, 400, 250).std() > 10


def test_a_one_cell_last_feature_map_is_warned_about_not_drawn_blank_silently():
    import keras

    from inat_keras.inspection.explain import gradcam_warnings

    inputs = keras.Input((4, 4, 3))
    wide = keras.layers.Conv2D(2, 3, padding="same", name="wide")(inputs)
    single = keras.layers.Conv2D(2, 4, name="single")(wide)  # 4x4 -> 1x1
    model = keras.Model(inputs, keras.layers.Flatten()(single))
    assert gradcam_warnings(model, "wide", 4) == []
    (warning,) = gradcam_warnings(model, "single", 4)
    assert warning.startswith("single is 1x1 at 4 px") and "--image-size" in warning


def test_feature_maps_skip_layers_smaller_than_4x4_and_a_2x2_gradcam_is_warned_about_like_a_1x1():
    import keras

    from inat_keras.inspection.explain import feature_layers, gradcam_warnings

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, padding="same", name="eight")(inputs)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="four")(x)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="two")(x)
    x = keras.layers.Conv2D(2, 2, name="one")(x)
    model = keras.Model(inputs, keras.layers.Flatten()(x))
    chosen, skipped = feature_layers(model, "one")
    assert [name for name, _ in chosen] == ["eight", "four"]
    assert skipped == [{"layer": "two", "size": "2x2"}, {"layer": "one", "size": "1x1"}]
    assert gradcam_warnings(model, "four", 8) == []
    (warning,) = gradcam_warnings(model, "two", 8)
    assert warning.startswith("two is 2x2 at 8 px, so Grad-CAM has only 4 cells")
