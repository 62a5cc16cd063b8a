"""The data check: every format decoded upright in RGB, every bad file named, duplicates, the cache,
check-data on the command line, and training with and without --skip-bad."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_dataset_root
from inat_keras.cli.main import main as inat_main
from inat_keras.data.check import check_dataset
from inat_keras.data.decode import load_image
from inat_keras.errors import UserError
from inat_keras.training.loop import train_run
from test_faults import quiet, tiny_run_config

TOP, BOTTOM = (230, 40, 40), (20, 20, 120)


def two_tone(marker: int, height: int = 40, width: int = 30) -> np.ndarray:
    """Red top half, dark blue bottom half; ``marker`` pixels make every file's bytes unique."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2], pixels[height // 2 :] = TOP, BOTTOM
    pixels[height // 2, :marker] = (0, 255, 0)
    return pixels


def noise_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def write_good_images(folder: Path, marker: int) -> dict[str, str]:
    """One file per format and variant training must read; returns name -> expected colour kind."""
    folder.mkdir(parents=True, exist_ok=True)
    save = lambda image, name, **options: image.save(folder / name, **options)
    rgb = Image.fromarray(two_tone(marker))
    save(rgb, "baseline.JPG")
    save(Image.fromarray(two_tone(marker + 1)), "progressive.Jpeg", progressive=True)
    save(Image.fromarray(two_tone(marker + 2)).convert("CMYK"), "cmyk.jpg")
    save(Image.fromarray(two_tone(marker + 3)).convert("L"), "gray.jpeg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: viewers turn it right
    save(Image.fromarray(two_tone(marker + 4)).transpose(Image.Transpose.ROTATE_90), "exif_rotated.jpg", exif=exif)
    save(Image.fromarray(two_tone(marker + 5)), "png8.png")
    deep = np.where(two_tone(marker + 6)[..., 0] > 100, 60000, 5000).astype(np.uint16)
    save(Image.fromarray(deep), "png16.png")
    save(Image.fromarray(two_tone(marker + 7)).convert("P"), "palette.png")
    frames = [Image.fromarray(two_tone(marker + 8)).convert("P"), Image.new("P", (30, 40), 0)]
    frames[0].save(folder / "first_frame.gif", save_all=True, append_images=frames[1:])
    save(Image.fromarray(two_tone(marker + 9)), "bitmap.bmp")
    save(Image.fromarray(two_tone(marker + 10)), "photo.webp", lossless=True)
    save(Image.fromarray(two_tone(marker + 11)), "scan.tiff")
    save(Image.fromarray(two_tone(marker + 12)), "lying.jpg", format="PNG")
    return {"gray.jpeg": "gray", "png16.png": "gray"}


def looks_upright(pixels: np.ndarray, kind: str) -> bool:
    top, bottom = pixels[:12].mean(axis=(0, 1)), pixels[-12:].mean(axis=(0, 1))
    if kind == "gray":
        return np.ptp(top) < 2 and top.mean() > bottom.mean() + 40
    return top[0] > top[2] + 100 and bottom[2] > bottom[0] + 50


def test_every_common_format_decodes_upright_in_rgb(tmp_path: Path) -> None:
    kinds = write_good_images(tmp_path, marker=1)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 13
    for path in files:
        pixels = load_image(path, 32)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, path.name
        assert looks_upright(pixels, kinds.get(path.name, "colour")), path.name


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    rgba[:20] = (*TOP, 255)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    pixels = load_image(tmp_path / "alpha.png", 32)
    assert pixels[:12].mean(axis=(0, 1)).round().tolist() == [230, 40, 40]
    assert (pixels[-12:] == 255).all()


def make_messy_dataset(root: Path) -> Path:
    """Every format, every kind of bad file, junk that tools leave around, and duplicates."""
    write_good_images(root / "train" / "cat", marker=1)
    for name in ("bitmap.bmp", "photo.webp", "scan.tiff", "lying.jpg", "first_frame.gif"):
        (root / "train" / "dog").mkdir(parents=True, exist_ok=True)
        shutil.move(root / "train" / "cat" / name, root / "train" / "dog" / name)
    for split, label, marker in (("val", "cat", 20), ("val", "dog", 21)):
        (root / split / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(two_tone(marker)).save(root / split / label / f"v{marker}.png")
    # duplicates: the same bytes under two classes, and a training image copied into the test set
    shutil.copy(root / "train" / "cat" / "png8.png", root / "train" / "dog" / "again.png")
    shutil.copy(root / "train" / "cat" / "baseline.JPG", root / "val" / "cat" / "leak.jpg")
    # unusable files
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(root / "train" / "cat" / "pixel.png")
    (root / "train" / "dog" / "cut.jpg").write_bytes(noise_bytes("JPEG")[:2000])
    (root / "train" / "dog" / "cut.png").write_bytes(noise_bytes("PNG")[:20000])
    (root / "val" / "dog" / "page.jpg").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (root / "val" / "cat" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    # files that are not images, and must only be counted
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "val" / "dog" / "notes.txt").write_text("collected in May")
    (root / "train" / "cat" / ".thumbnails").mkdir()
    shutil.copy(root / "train" / "cat" / "png8.png", root / "train" / "cat" / ".thumbnails" / "t.png")
    (root / "train" / "dog" / "._lying.jpg").write_bytes(b"\x00\x05\x16\x07")
    Image.fromarray(two_tone(22)).save(root / "train" / "stray.png")
    Image.fromarray(two_tone(23)).save(root / "train" / "cat" / "IMG_0001", format="JPEG")
    return root


EXPECTED_BAD = {
    "train/cat/empty.jpg": "zero bytes",
    "train/cat/pixel.png": "image too small",
    "train/dog/cut.jpg": "truncated",
    "train/dog/cut.png": "truncated",
    "val/cat/phone.heic": "unsupported format",
    "val/dog/page.jpg": "not an image",
}
EXPECTED_IGNORED = {
    "train/.DS_Store": "system file",
    "train/cat/Thumbs.db": "system file",
    "train/cat/.thumbnails": "hidden folder (1 files)",
    "train/dog/._lying.jpg": "system file",
    "train/stray.png": "outside the class folders",
    "val/dog/notes.txt": "not an image name (.txt)",
    "train/cat/IMG_0001": "not an image name (no extension), but a JPEG image: rename it to .jpeg to use it",
}


def relative(report_entries: list[dict], root: Path, value: str) -> dict[str, str]:
    return {str(Path(entry["path"]).relative_to(root)): entry[value] for entry in report_entries}


def test_the_check_names_every_bad_file_duplicate_and_ignored_file(tmp_path: Path) -> None:
    root = make_messy_dataset(tmp_path / "messy")
    report = check_dataset(root)

    assert relative(report.bad, root, "reason") == EXPECTED_BAD
    assert relative(report.ignored, root, "reason") == EXPECTED_IGNORED
    assert report.images_per_class == {"train": {"cat": 8, "dog": 6}, "val": {"cat": 2, "dog": 1}}
    assert report.imbalance["train"] == {"largest": ["cat", 8], "smallest": ["dog", 6], "ratio": pytest.approx(1.333)}
    assert set(report.formats) == {"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"}
    leak, conflict = report.duplicates
    assert leak["splits"] == "train+val" and sorted(Path(p).name for p in leak["paths"]) == ["baseline.JPG", "leak.jpg"]
    assert conflict["splits"] == "train" and conflict["classes"] == ["cat", "dog"]
    assert report.summary == {
        "images": 23,
        "usable": 17,
        "unusable": 6,
        "ignored": 7,
        "classes": 2,
        "duplicate_groups": 2,
        "duplicate_groups_across_splits": 1,
    }


def test_plain_jpegs_are_checked_by_the_decoder_training_gives_them(tmp_path: Path, monkeypatch) -> None:
    from inat_keras.data import check

    write_good_images(tmp_path, marker=1)
    checked = []

    def refuse(contents: bytes) -> None:
        checked.append(contents)
        raise ValueError("TensorFlow's JPEG decoder cannot read it: Invalid JPEG data or crop window, data size 912")

    monkeypatch.setattr(check, "verify_jpeg", refuse)  # a JPEG Pillow reads and TensorFlow would not
    verdicts = {path.name: check.inspect_file(str(path)) for path in sorted(tmp_path.iterdir())}
    refused = {name for name, verdict in verdicts.items() if verdict.status != "ok"}
    assert refused == {"baseline.JPG", "progressive.Jpeg", "gray.jpeg"}  # CMYK and EXIF-turned ones go through Pillow
    assert len(checked) == 3
    assert verdicts["gray.jpeg"].status == "unreadable" and "Invalid JPEG data" in verdicts["gray.jpeg"].detail


def test_the_second_check_decodes_only_files_that_changed(tmp_path: Path) -> None:
    root = make_dataset_root(tmp_path / "data")
    starts: list[int] = []
    assert check_dataset(root, before_decoding=lambda: starts.append(1)).checked_now == 36
    assert check_dataset(root, before_decoding=lambda: starts.append(2)).checked_now == 0
    assert starts == [1]  # nothing to decode the second time: TensorFlow need not start
    victim = root / "train" / "class_a" / "img_000.png"
    victim.write_bytes(victim.read_bytes()[:60])
    again = check_dataset(root, before_decoding=lambda: starts.append(3))
    assert again.checked_now == 1 and starts == [1, 3]
    assert relative(again.bad, root, "reason") == {"train/class_a/img_000.png": "truncated"}


def test_check_data_prints_the_report_writes_json_and_exits_1_on_bad_files(tmp_path: Path, capsys) -> None:
    root = make_messy_dataset(tmp_path / "messy")
    assert inat_main(["check-data", str(root), "--json", str(tmp_path / "report.json"), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "summary: 23 images, 17 usable, 6 unusable" in printed
    assert "ACROSS SPLITS (test leakage)" in printed and "val/dog/page.jpg: not an image" in printed
    saved = json.loads((tmp_path / "report.json").read_text())
    assert relative(saved["bad"], root, "reason") == EXPECTED_BAD

    clean = make_dataset_root(tmp_path / "clean")
    assert inat_main(["check-data", str(clean), "--quiet"]) == 0
    assert "0 unusable" in capsys.readouterr().out


def test_check_data_answered_by_the_cache_never_starts_tensorflow(tmp_path: Path) -> None:
    root = make_dataset_root(tmp_path / "data")
    check_dataset(root)  # every verdict cached
    probe = (
        "import sys\n"
        "from inat_keras.cli.main import main\n"
        "status = main(sys.argv[1:])\n"
        "print(status, 'tensorflow' in sys.modules)\n"
    )
    command = [sys.executable, "-c", probe, "check-data", str(root), "--quiet"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.split()[-2:] == ["0", "False"], result.stdout + result.stderr


def test_check_data_fails_a_layout_training_would_refuse(tmp_path: Path, capsys) -> None:
    root = make_dataset_root(tmp_path / "data")
    (root / "val" / "class_c").rename(root / "val" / "class_z")
    assert inat_main(["check-data", str(root), "--quiet"]) == 1
    assert "problem: train/ and val/ in" in capsys.readouterr().out

    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    assert inat_main(["check-data", str(empty), "--quiet"]) == 1
    assert f"problem: {empty / 'train'} has no class folders" in capsys.readouterr().out


def test_a_data_folder_one_level_too_deep_is_named_before_any_decoding(tmp_path: Path) -> None:
    root = make_dataset_root(tmp_path / "data")
    logged: list[str] = []
    with pytest.raises(UserError, match=f"looks like one of them, so pass its parent: --data {root}$"):
        train_run(tiny_run_config(root / "train", tmp_path / "runs"), verbose=0, log=logged.append)
    assert not [line for line in logged if "decod" in line], logged


def test_check_data_names_a_missing_directory(tmp_path: Path, capsys) -> None:
    assert inat_main(["check-data", str(tmp_path / "nowhere")]) == 2
    assert f"data directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def add_bad_files(root: Path) -> list[str]:
    broken = root / "train" / "class_a" / "broken.jpg"
    broken.write_bytes(noise_bytes("JPEG")[:1500])
    empty = root / "val" / "class_b" / "empty.png"
    empty.write_bytes(b"")
    return sorted([str(broken), str(empty)])


def test_training_stops_before_it_starts_when_images_are_unusable(tmp_path: Path) -> None:
    root = make_dataset_root(tmp_path / "data")
    add_bad_files(root)
    with pytest.raises(UserError) as caught:
        train_run(tiny_run_config(root, tmp_path / "runs"), verbose=0, log=quiet)
    message = str(caught.value)
    assert message.startswith(f"2 of 38 images in {root} are unusable (1 truncated, 1 zero bytes)")
    assert "--skip-bad" in message and "\n" not in message
    report_file = Path(message.split("see ")[1].split(";")[0])
    assert "broken.jpg: truncated" in report_file.read_text()
    assert not (tmp_path / "runs" / "run" / "config.json").exists()


def test_skip_bad_trains_on_the_usable_images_and_records_the_skipped_ones(tmp_path: Path) -> None:
    root = make_dataset_root(tmp_path / "data")
    bad = add_bad_files(root)
    config = tiny_run_config(root, tmp_path / "runs")
    config.data.skip_bad = True
    result = train_run(config, verbose=0, log=quiet)
    assert result.metrics["epochs_run"] == 1
    assert result.metrics["num_test_images"] == 12

    with open(result.run_dir / "split.csv") as handle:
        used = {row["path"] for row in csv.DictReader(handle)}
    assert len(used) == 36 and not used & set(bad)
    with open(result.run_dir / "skipped-images.csv") as handle:
        skipped = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in skipped) == bad
    assert json.loads((result.run_dir / "data-check.json").read_text())["summary"]["unusable"] == 2
