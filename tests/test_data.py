"""Dataset discovery, the stratified split and the tf.data pipeline on generated folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inat_keras import DataConfig, UserError
from inat_keras.data.decode import load_image
from inat_keras.data.demo import write_digits_dataset
from inat_keras.data.files import LabelledFiles, discover_dataset, load_split, make_split, save_split, stratified_split
from inat_keras.data.pipeline import make_dataset


def labelled(counts: list[int]) -> LabelledFiles:
    labels = [label for label, n in enumerate(counts) for _ in range(n)]
    return LabelledFiles([f"img{i}.png" for i in range(len(labels))], labels)


def test_split_is_stratified_and_deterministic_for_a_seed() -> None:
    files = labelled([50, 30, 20])
    train, val = stratified_split(files, 0.2, seed=7)
    assert Counter(val.labels) == {0: 10, 1: 6, 2: 4}
    assert set(train.paths).isdisjoint(val.paths) and len(train) + len(val) == 100
    again, _ = stratified_split(files, 0.2, seed=7)
    other, _ = stratified_split(files, 0.2, seed=8)
    assert again.paths == train.paths and other.paths != train.paths


def test_a_class_with_one_image_cannot_be_split() -> None:
    with pytest.raises(UserError, match="class 1 has only 1 training image"):
        stratified_split(labelled([5, 1]), 0.2, seed=0)
    with pytest.raises(UserError, match=r"class 'owl' has only 1 training image.*add images or remove the class"):
        stratified_split(labelled([5, 1]), 0.2, seed=0, class_names=["fox", "owl"])


def test_split_csv_round_trips_every_image_with_its_subset(tiny_dataset: Path, tmp_path: Path) -> None:
    split = make_split(DataConfig(data_dir=str(tiny_dataset), val_split=0.25))
    save_split(split, tmp_path)
    loaded = load_split(tmp_path, split.class_names)
    assert loaded.train.paths == split.train.paths and loaded.validation.labels == split.validation.labels
    assert len(loaded.test) == 12 and len(loaded.validation) == 6 and len(loaded.train) == 18


def test_discovery_finds_sorted_classes_and_ignores_hidden_and_non_image_files(tiny_dataset: Path) -> None:
    (tiny_dataset / "train" / "class_a" / ".DS_Store").write_bytes(b"junk")
    (tiny_dataset / "train" / "class_a" / "notes.txt").write_text("hello")
    classes, train, test = discover_dataset(tiny_dataset)
    assert classes == ["class_a", "class_b", "class_c"]
    assert len(train) == 24 and len(test) == 12
    assert all(p.endswith(".png") for p in train.paths)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "train").mkdir(parents=True), "val is missing"),
        (lambda root: [(root / s).mkdir(parents=True) for s in ("train", "val")], "has no class folders"),
    ],
)
def test_missing_or_empty_data_directory_is_a_user_error(tmp_path: Path, breakage, message) -> None:
    root = tmp_path / "nowhere"
    breakage(root)
    with pytest.raises(UserError, match=message):
        discover_dataset(root)


def test_class_mismatch_between_train_and_val_names_both_sides(tiny_dataset: Path) -> None:
    (tiny_dataset / "val" / "class_c").rename(tiny_dataset / "val" / "class_z")
    with pytest.raises(UserError, match=r"only in train: \['class_c'\].*only in val: \['class_z'\]"):
        discover_dataset(tiny_dataset)


def test_every_common_format_decodes_to_rgb_uint8_of_the_target_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c.gif")
    Image.fromarray(rgb).save(tmp_path / "d.bmp")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "e_gray.png")
    rgba = np.dstack([rgb, np.zeros((50, 70), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "f_transparent.png")
    for path in sorted(tmp_path.iterdir()):
        image = load_image(path, 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, path.name
    # a fully transparent image shows its white background, not its hidden colour
    assert load_image(tmp_path / "f_transparent.png", 16).min() == 255
    gray = load_image(tmp_path / "e_gray.png", 16)
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_large_jpegs_are_decoded_at_reduced_scale_with_the_same_picture(tmp_path: Path) -> None:
    smooth = np.linspace(0, 255, 800)[None, :, None].repeat(600, axis=0).repeat(3, axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as image:
        image.draft("RGB", (64, 64))
        assert image.size[0] < 800  # Pillow's DCT scaling took effect
    small = load_image(tmp_path / "big.jpg", 64)
    assert abs(int(small[0, 0, 0]) - 0) < 12 and abs(int(small[0, -1, 0]) - 255) < 12


def test_pipeline_yields_uint8_batches_that_the_models_cast_themselves(tiny_dataset: Path) -> None:
    from inat_keras.data.pipeline import epoch_batches
    from inat_keras.models.cnn import build_cnn

    config = DataConfig(data_dir=str(tiny_dataset), image_size=32, batch_size=5)
    split = make_split(config)
    dataset = make_dataset(split.train, config, 3, training=True)
    assert int(dataset.cardinality()) == -1  # endless: fit takes steps_per_epoch=epoch_batches(...) per epoch
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(epoch_batches(len(split.train), 5))]
    images, labels = batches[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype.name == "uint8"  # raw 0-255: the model's job from here
    np.testing.assert_array_equal(labels.numpy().sum(axis=1), 1.0)
    assert sum(int(b[0].shape[0]) for b in batches) == len(split.train)
    model = build_cnn(num_classes=3, input_size=32, num_blocks=2, first_filters=4, dense_units=[8])
    as_float = model.predict_on_batch(images.numpy().astype(np.float32))
    np.testing.assert_array_equal(model.predict_on_batch(images), as_float)  # the model's input casts uint8 to float32
    augmented = DataConfig(**{**config.__dict__, "augment": True, "augment_placement": "pipeline"})
    assert next(iter(make_dataset(split.train, augmented, 3, training=True)))[0].dtype.name == "float32"


def decoded_in_file_order(paths: list[str], labels: list[int], size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a validation pipeline over ``paths``, concatenated."""
    from inat_keras.data import files, pipeline

    config = DataConfig(data_dir="unused", image_size=size, batch_size=batch_size)
    dataset = pipeline.make_dataset(files.LabelledFiles(paths, labels), config, 3, training=False)
    assert int(dataset.cardinality()) == -(-len(paths) // batch_size)  # known, so Keras counts the first epoch's steps
    batches = list(dataset)
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])


def test_parallel_decoding_keeps_file_order_across_batch_boundaries(tmp_path: Path) -> None:
    from inat_keras.data import decode

    paths = []
    for i in range(11):
        path = tmp_path / f"img_{i:02d}.png"
        Image.fromarray(np.full((20 + i, 30, 3), 20 * i, np.uint8)).save(path)
        paths.append(str(path))
    labels = [i % 3 for i in range(11)]
    images, one_hot = decoded_in_file_order(paths, labels, 16, batch_size=4)  # batches of 4, 4 and 3
    assert images.shape == (11, 16, 16, 3)
    for path, label, image, hot in zip(paths, labels, images, one_hot, strict=True):
        np.testing.assert_array_equal(image, load_image(path, 16))
        assert int(np.argmax(hot)) == label
    np.testing.assert_array_equal(decode.load_images(paths[:5], 16), np.stack([load_image(p, 16) for p in paths[:5]]))
    assert decode.load_images([], 16).shape == (0, 16, 16, 3)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth ramp with a little texture: enough detail that a wrong scale or filter shows."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None].repeat(height, axis=0)
    colour = np.concatenate([ramp, ramp[::-1] * 0.5 + 60, np.full_like(ramp, 128)], axis=2)
    return np.clip(colour + rng.normal(0, 6, colour.shape), 0, 255).astype(np.uint8)


def with_app1(jpeg: bytes, payload: bytes, *, after_app0: bool = True) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` (EXIF or XMP), after its JFIF segment or right after SOI."""
    at = 4 + int.from_bytes(jpeg[4:6], "big") if after_app0 else 2
    return jpeg[:at] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def big_endian_exif(orientation: int, *, other_tags: int = 2) -> bytes:
    """An EXIF block in Motorola byte order (Pillow writes Intel's), the orientation after ``other_tags`` other tags."""
    entries = [(0x010F + i, 2, 1, 0) for i in range(other_tags)] + [(0x0112, 3, 1, orientation << 16)]
    directory = len(entries).to_bytes(2, "big") + b"".join(
        tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + value.to_bytes(4, "big")
        for tag, kind, count, value in entries
    )
    return b"Exif\0\0MM\0\x2a" + (8).to_bytes(4, "big") + directory + b"\0\0\0\0"


def write_router_images(folder: Path) -> dict[str, bool]:
    """Files of each kind, named, with whether TensorFlow's JPEG decoder should take them."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(photo(60, 80))
    picture.save(folder / "plain.jpg", quality=92)
    picture.save(folder / "progressive.jpg", quality=92, progressive=True)
    picture.convert("L").save(folder / "gray.jpg")
    picture.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(folder / "turned.jpg", exif=exif)
    exif[0x0112] = 1
    picture.save(folder / "upright_exif.jpg", exif=exif)
    picture.save(folder / "image.png")
    picture.save(folder / "png_named.jpg", format="PNG")
    (folder / "notes.jpg").write_text("not an image")
    plain = (folder / "plain.jpg").read_bytes()
    xmp = b'http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description tiff:Orientation="%s"/></x:xmpmeta>'
    (folder / "xmp_turned.jpg").write_bytes(with_app1(plain, xmp % b"8"))
    (folder / "xmp_upright.jpg").write_bytes(with_app1(plain, xmp % b"1"))
    (folder / "motorola_turned.jpg").write_bytes(with_app1(plain, big_endian_exif(3), after_app0=False))
    (folder / "motorola_upright.jpg").write_bytes(with_app1(plain, big_endian_exif(1), after_app0=False))
    (folder / "fill_byte.jpg").write_bytes(plain[:2] + b"\xff" + plain[2:])  # a fill byte before the first marker
    return {
        "plain.jpg": True,
        "progressive.jpg": True,
        "gray.jpg": True,
        "cmyk.jpg": False,
        "turned.jpg": False,
        "upright_exif.jpg": True,
        "image.png": False,
        "png_named.jpg": False,
        "notes.jpg": False,
        "xmp_turned.jpg": False,
        "xmp_upright.jpg": True,
        "motorola_turned.jpg": False,
        "motorola_upright.jpg": True,
        "fill_byte.jpg": True,
    }


def pillow_shows_as_tensorflow(path: Path) -> bool:
    """The rule, in Pillow's words: a JPEG in RGB or L that ``exif_transpose`` leaves as it is."""
    try:
        with Image.open(path) as image:
            return image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(0x0112, 1) == 1
    except Exception:
        return False


def test_plain_jpegs_take_tensorflows_decoder_and_every_other_file_pillow(tmp_path: Path) -> None:
    from inat_keras.data import decode

    expected = write_router_images(tmp_path)
    assert {name: decode.native_jpeg(tmp_path / name) for name in expected} == expected
    assert {name: pillow_shows_as_tensorflow(tmp_path / name) for name in expected} == expected  # Pillow agrees
    assert decode.native_jpeg(tmp_path / "missing.jpg") is False
    plain = (tmp_path / "plain.jpg").read_bytes()
    assert decode.native_jpeg_header(plain)
    assert not decode.native_jpeg_header(plain[:40])  # the header cut short: Pillow's path says what is wrong
    # A header that runs past what is read goes to Pillow, which reads it all.
    long_comment = b"\xff\xfe" + (decode.HEADER_BYTES - 2).to_bytes(2, "big") + bytes(decode.HEADER_BYTES - 4)
    assert not decode.native_jpeg_header((plain[:2] + long_comment + plain[2:])[: decode.HEADER_BYTES])


@pytest.mark.parametrize("height, width, size", [(450, 600, 224), (600, 450, 200), (60, 80, 32), (50, 70, 64)])
def test_tensorflows_jpeg_decoder_shows_the_same_picture_as_pillow(tmp_path: Path, height, width, size) -> None:
    from inat_keras.data import decode

    path = tmp_path / "photo.jpg"
    Image.fromarray(photo(height, width)).save(path, quality=95)
    native, pillow = decode.decode_natively(path, size), decode.decode_with_pillow(path, size)
    assert native.shape == pillow.shape == (size, size, 3) and native.dtype == np.uint8
    difference = np.abs(native.astype(int) - pillow.astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 6  # two filters, one picture
    np.testing.assert_array_equal(load_image(path, size), native)
    assert native[:, :8, 0].mean() < 40 and native[:, -8:, 0].mean() > 215  # not mirrored, not turned


def test_mixed_formats_keep_their_order_and_labels_through_both_decoders(tmp_path: Path) -> None:
    from inat_keras.data import decode

    kinds = write_router_images(tmp_path)
    names = [name for name in kinds if name != "notes.jpg"] * 2  # routes alternate within the list
    paths = [str(tmp_path / name) for name in names]
    native = [decode.native_jpeg(path) for path in paths]
    assert native == [kinds[name] for name in names] and 0 < sum(native) < len(native)
    labels = [i % 3 for i in range(len(paths))]
    images, one_hot = decoded_in_file_order(paths, labels, 24, batch_size=3)
    assert len(images) == len(paths)
    for path, label, image, hot in zip(paths, labels, images, one_hot, strict=True):
        np.testing.assert_array_equal(image, load_image(path, 24), err_msg=path)
        assert int(np.argmax(hot)) == label


def test_a_jpeg_the_decoder_rejects_is_named_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    import tensorflow as tf

    from inat_keras.data import decode

    Image.fromarray(photo(300, 400)).save(tmp_path / "whole.jpg")
    content = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(content[: len(content) // 2])
    assert decode.native_jpeg(tmp_path / "cut.jpg")  # the header is whole: TensorFlow's decoder meets the damage
    with pytest.raises(OSError, match="truncated"):  # in Pillow's words, which say what is wrong
        load_image(tmp_path / "cut.jpg", 32)

    def rejects(size: int):
        def decode(contents):
            raise tf.errors.InvalidArgumentError(None, None, "{{function_node x}} Unsupported marker type 0xc3")

        return decode

    monkeypatch.setattr(decode, "jpeg_decoder", rejects)  # a file Pillow reads but TensorFlow would not
    with pytest.raises(ValueError, match=r"TensorFlow's JPEG decoder cannot read .*whole.jpg: Unsupported marker type 0xc3$"):
        load_image(tmp_path / "whole.jpg", 32)


def test_augmentation_changes_training_images_only(tiny_dataset: Path) -> None:
    config = DataConfig(data_dir=str(tiny_dataset), image_size=32, batch_size=64, augment=True, seed=1)
    split = make_split(config)
    plain = next(iter(make_dataset(split.validation, config, 3, training=False)))[0].numpy()
    again = next(iter(make_dataset(split.validation, config, 3, training=False)))[0].numpy()
    np.testing.assert_array_equal(plain, again)
    train_a = next(iter(make_dataset(split.train, config, 3, training=True)))[0].numpy()
    unaugmented = DataConfig(**{**config.__dict__, "augment": False})
    train_b = next(iter(make_dataset(split.train, unaugmented, 3, training=True)))[0].numpy()
    assert train_a.shape == train_b.shape and not np.allclose(np.sort(train_a.ravel()), np.sort(train_b.ravel()))


def test_file_cache_is_reused_for_the_same_images_and_never_for_others(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    config = DataConfig(data_dir=str(tiny_dataset), image_size=32, cache=str(tmp_path / "cache" / "imgs"))
    split = make_split(config)

    def cache_files() -> set[str]:
        return {p.name.split(".")[0] for p in (tmp_path / "cache").iterdir()}

    first = [b[0].numpy() for b in make_dataset(split.test, config, 3, training=False, cache_name="test")]
    written = cache_files()
    assert written and all(name.startswith("imgstest-32px-") for name in written)
    again = [b[0].numpy() for b in make_dataset(split.test, config, 3, training=False, cache_name="test")]
    assert cache_files() == written  # the same images: the same files, read back
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(first))

    # Same prefix, another size or another split: new files, the right shapes, no mismatch mid-epoch.
    bigger = DataConfig(**{**config.__dict__, "image_size": 40})
    assert next(iter(make_dataset(split.test, bigger, 3, training=False, cache_name="test")))[0].shape[1:] == (40, 40, 3)
    reseeded = make_split(DataConfig(**{**config.__dict__, "seed": 7}))
    list(make_dataset(reseeded.train, config, 3, training=False, cache_name="test"))
    assert len(cache_files()) == 3
    # Another decoder gives other pixels: its caches get other names.
    from inat_keras.data import decode, pipeline

    key = pipeline.cache_key(split.test, 32, 3)
    monkeypatch.setattr(pipeline, "DECODER_VERSION", decode.DECODER_VERSION + 1)
    assert pipeline.cache_key(split.test, 32, 3) != key


def test_demo_writer_produces_the_real_digits_in_train_and_val_folders(tmp_path: Path) -> None:
    root = write_digits_dataset(tmp_path / "digits")
    classes, train, test = discover_dataset(root)
    assert classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797
    assert 0.18 < len(test) / 1797 < 0.22
    assert min(Counter(test.labels).values()) >= 30  # stratified: every digit well represented
    first = np.asarray(Image.open(train.paths[0]))
    assert first.shape == (8, 8) and first.max() > 200  # real ink strokes, not blank
