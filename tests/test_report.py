"""report.html: the pages of a run, a search and a comparison, and the run page checked in a real browser.

The browser is Debian's ``chromium`` (CI's .ci/run installs it), driven headless through the Chrome
DevTools protocol over a pipe (``--remote-debugging-pipe``): nothing is downloaded, no port is opened.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset_root
from inat_keras.cli.main import main as cli_main
from inat_keras.config import RunConfig, TrackingConfig
from inat_keras.inspection.report import write_reports, write_run_report, write_search_report
from inat_keras.inspection.report_html import markdown_html

INSTALL_CHROMIUM = "apt-get update && apt-get install -y --no-install-recommends chromium"


# -- hand-written run and search folders ----------------------------------------------------------


def picture(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (240, 160)) -> Path:
    """A small PNG with a gradient, so a screenshot of it is not one flat colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.3, 1.0, size[0])[None, :, None]
    pixels = (np.ones((size[1], size[0], 3)) * np.array(colour) * ramp).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def fake_run(root: Path, name: str = "hand", *, class_names: tuple[str, ...] = ("cat", "dog"), finished: bool = True) -> Path:
    """A run folder written by hand: config.json, data-check.json, split.csv, curves.png, metrics.json."""
    run = root / name
    config = RunConfig(name=name, out=str(root), tracking=TrackingConfig(wandb="off"))
    config.data.data_dir, config.model = "/data/pets", {"num_blocks": 3}
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "class_names": list(class_names)}))
    check = {
        "summary": {"images": 10, "usable": 9, "unusable": 1},
        "images_per_class": {"train": dict.fromkeys(class_names, 3), "val": dict.fromkeys(class_names, 2)},
        "bad": [{"path": "/data/pets/train/cat/broken.jpg", "reason": "truncated", "detail": "image file is truncated"}],
    }
    (run / "data-check.json").write_text(json.dumps(check))
    rows = [f"/data/pets/{s}/{c}/{i}.jpg,{c},{s}" for c in class_names for s, i in (("train", 1), ("validation", 2), ("test", 3))]
    (run / "split.csv").write_text("path,label,subset\n" + "\n".join(rows) + "\n")
    picture(run / "curves.png", (40, 90, 200))
    if finished:
        metrics = {"test_accuracy": 0.8125, "val_accuracy": 0.75, "num_params": 123_456, "trainable_params": 120_000}
        metrics |= {"macs": 9_876_543, "epochs_run": 3, "best_epoch": 2, "train_seconds": 12.5, "class_names": list(class_names)}
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def fake_search(root: Path) -> Path:
    """A search folder: search.json, trials.csv, the three plots, summary.md, and the retrained run beside it."""
    run = fake_run(root, "swept")
    search = run / "search"
    search.mkdir()
    (search / "search.json").write_text(json.dumps({"tuner": "random", "max_trials": 3, "base": {"name": "swept"}}))
    (search / "retrained.json").write_text(json.dumps({"trial_id": "2"}))
    (search / "trials.csv").write_text(
        "trial_id,learning_rate,activation,val_accuracy\n0,0.01,relu,0.5\n1,0.002,gelu,0.75\n2,0.0005,mish,0.875\n"
    )
    for name, colour in (
        ("accuracy_vs_created", (200, 60, 60)),
        ("parallel_coordinates", (60, 160, 60)),
        ("importance", (90, 90, 200)),
    ):
        picture(search / f"{name}.png", colour)
    summary = "# Search swept\n\nBest validation accuracy **0.8750** (trial 2).\n\n- **learning_rate**: lower is better\n"
    (search / "summary.md").write_text(summary)
    return search


def page_text(path: Path) -> str:
    """The page's text without tags, for assertions that do not depend on the markup."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")))


# -- pages from hand-written folders --------------------------------------------------------------


def test_a_run_page_shows_settings_dataset_and_model_and_names_the_commands_for_the_rest(tmp_path: Path) -> None:
    page = write_run_report(fake_run(tmp_path / "runs"))
    text = page_text(page)
    assert page == tmp_path / "runs" / "hand" / "report.html"
    assert "0.8125" in text and "123,456" in text and "9.9 M multiply-accumulates" in text
    assert "/data/pets/train/cat/broken.jpg" in text and "truncated" in text  # the skipped image
    assert "learning_rate" in text and "num_blocks" in text  # every setting
    run = tmp_path / "runs" / "hand"
    assert f"python -m inat_keras evaluate {run}" in text
    assert f"python -m inat_keras explain {run}" in text
    assert f"python -m inat_keras export {run} --format tflite" in text


def test_a_run_page_embeds_every_picture_and_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    html = write_run_report(fake_run(tmp_path)).read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert sources and all(source.startswith("data:image/") for source in sources), sources
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html  # a run page needs no JavaScript at all


def test_class_names_and_paths_are_escaped_not_injected(tmp_path: Path) -> None:
    html = write_run_report(fake_run(tmp_path, class_names=("<b>bold</b>", "a&b"))).read_text(encoding="utf-8")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "a&amp;b" in html


def test_the_layer_table_is_model_summary_txt_else_the_architecture_inside_best_keras(tmp_path: Path) -> None:
    import zipfile

    run = fake_run(tmp_path)
    layers = [
        {"class_name": "Conv2D", "config": {"name": "conv1", "filters": 8, "kernel_size": [3, 3], "activation": "linear"}},
        {"class_name": "Dense", "config": {"name": "predictions", "units": 2, "activation": "softmax"}},
    ]
    with zipfile.ZipFile(run / "best.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": layers}}))
    text = page_text(write_run_report(run))
    assert "conv1 Conv2D" in text and "filters: 8, kernel_size: 3, 3" in text and "units: 2, activation: softmax" in text
    (run / "model_summary.txt").write_text('Model: "functional"\nconv1 (Conv2D)  (None, 32, 32, 8)  224\n')
    html = write_run_report(run).read_text(encoding="utf-8")
    assert "conv1 (Conv2D)  (None, 32, 32, 8)  224" in html and "Conv2D</td>" not in html


def test_an_unfinished_run_gets_a_page_that_says_how_to_finish_it(tmp_path: Path) -> None:
    run = fake_run(tmp_path, finished=False)
    assert f"continue it with --resume {run}" in page_text(write_run_report(run))


def test_a_search_page_links_the_retrained_run_and_renders_the_summary(tmp_path: Path) -> None:
    search = fake_search(tmp_path / "runs")
    page = write_search_report(search)
    html = page.read_text(encoding="utf-8")
    assert page == search / "report.html" and (search.parent / "report.html").is_file()
    assert 'href="../report.html"' in html and "(trial 2)" in html
    assert "<strong>0.8750</strong>" in html and "<li><strong>learning_rate</strong>" in html
    assert 'class="sortable"' in html and html.count("<th data-sortable>") == 4
    assert len(re.findall(r'<img[^>]* src="data:image/png;base64,', html)) == 3


def test_summary_markdown_becomes_headings_lists_and_tables() -> None:
    html = str(markdown_html("# Title\n\nText with `code`.\n\n| a | b |\n| --- | --- |\n| 1 | <2> |\n\n- one\n- two\n"))
    assert "<h3>Title</h3>" in html and "<code>code</code>" in html
    assert "<th>a</th>" in html and "<td>&lt;2&gt;</td>" in html and "<li>one</li><li>two</li>" in html


def test_the_report_command_writes_each_page_and_a_comparison_of_several_runs(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    fake_run(runs, "one")
    fake_run(runs, "two")
    search = fake_search(runs)
    out = tmp_path / "comparison"
    assert cli_main(["report", str(runs / "one"), str(runs / "two"), str(search), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"report: {out / 'report.html'}"
    for page in (runs / "one", runs / "two", search, search.parent, out):
        assert (page / "report.html").is_file(), page
    comparison = (out / "report.html").read_text(encoding="utf-8")
    assert 'href="../runs/one/report.html"' in comparison and (out / "comparison.png").is_file()


def test_a_folder_that_is_neither_run_nor_search_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "is neither a run" in capsys.readouterr().err


def test_a_glob_passes_over_folders_that_are_not_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake_run(runs, "one")
    (runs / "comparison").mkdir()
    assert write_reports([f"{runs}/*"], tmp_path / "comparison") == [runs / "one" / "report.html"]


def test_a_damaged_file_is_named_on_the_page_and_the_rest_is_still_written(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{not json")
    text = page_text(write_run_report(run))
    assert f"{run / 'eval' / 'metrics.json'} is damaged" in text and f"re-run python -m inat_keras evaluate {run}" in text
    assert "0.8125" in text


def test_a_run_directory_holding_a_search_gets_both_pages(tmp_path: Path) -> None:
    search = fake_search(tmp_path)
    written = write_reports([str(search.parent)], tmp_path / "unused")
    assert written == [search.parent / "report.html", search / "report.html"]
    assert not (tmp_path / "unused").exists()
    assert 'href="search/report.html"' in written[0].read_text(encoding="utf-8")


# -- written at the end of training and search ----------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--no-report"]])
def test_training_ends_with_the_report_unless_no_report(tmp_path: Path, monkeypatch, capsys, flags) -> None:
    from inat_keras.training import loop
    from inat_keras.training.loop import RunResult

    def trained(config: RunConfig, **kwargs: Any) -> RunResult:
        run = fake_run(Path(config.out), config.name)
        return RunResult(run, json.loads((run / "metrics.json").read_text()))

    monkeypatch.setattr(loop, "train_run", trained)
    data = make_dataset_root(tmp_path / "data", num_classes=2, train_per_class=4, val_per_class=2)
    args = ["train-scratch", "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "r", "--quiet", *flags]
    assert cli_main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    page = tmp_path / "runs" / "r" / "report.html"
    assert str(tmp_path / "runs" / "r") in last and "test accuracy" in last
    assert (f"report: {page}" in last) == (not flags) and page.is_file() == (not flags)


def test_resume_accepts_no_report(tmp_path: Path, monkeypatch) -> None:
    from inat_keras.cli.train_scratch import main as train_scratch_main

    run = fake_run(tmp_path, finished=False)
    seen = []
    monkeypatch.setattr("inat_keras.cli.train_scratch.train_and_report", lambda config, args: seen.append(args.report) or 0)
    assert train_scratch_main(["--resume", str(run), "--no-report"]) == 0
    assert seen == [False]


def test_a_search_ends_with_its_report(tmp_path: Path, monkeypatch, capsys) -> None:
    from inat_keras.search import run as search_run
    from inat_keras.search.run import SearchResult
    from inat_keras.training.loop import RunResult

    def searched(config: RunConfig, settings: Any, **kwargs: Any) -> SearchResult:
        search = fake_search(Path(config.out))
        run = RunResult(search.parent, {"test_accuracy": 0.8125})
        return SearchResult(search, "single", ["0", "1", "2"], run=run)

    monkeypatch.setattr(search_run, "run_search", searched)
    data = make_dataset_root(tmp_path / "data", num_classes=2, train_per_class=4, val_per_class=2)
    args = ["train-scratch", "--data", str(data), "--tuner", "random", "--out", str(tmp_path / "runs"), "--quiet"]
    assert cli_main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    search = tmp_path / "runs" / "swept" / "search"
    assert last == f"report: {search / 'report.html'} (the retrained run's: {search.parent / 'report.html'})"


# -- in a real browser ----------------------------------------------------------------------------


class Browser:
    """Headless chromium driven through the DevTools protocol on fds 3 (commands) and 4 (replies)."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail(
                f"chromium is not installed, and the report is checked in a real browser: install it with `{INSTALL_CHROMIUM}`"
            )
        to_browser, self.commands = os.pipe()
        self.replies, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child: its ends of the pipes where --remote-debugging-pipe expects them
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync"]
        flags += ["--disable-background-networking", "--disable-component-update", "--disable-extensions", "--mute-audio"]
        flags += [f"--user-data-dir={profile}", "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(
            [binary, *flags], preexec_fn=on_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=False
        )
        os.close(to_browser)
        os.close(from_browser)
        self.buffer, self.next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def receive(self, wanted, timeout: float = 30) -> dict[str, Any]:
        """Messages until ``wanted(message)``; the others are kept in ``events``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            ready = select.select([self.replies], [], [], max(left, 0))[0]
            if not ready:
                raise TimeoutError(f"chromium did not answer within {timeout} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe: " + self.process.stderr.read().decode(errors="replace")[-2000:])
            self.buffer += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        reply = self.receive(lambda m, number=self.next_id: m.get("id") == number)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": path.as_uri()}, session=True)
        self.receive(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error/warn calls and browser log errors (a blocked or failed load)."""
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                errors.append(params["entry"]["text"])
        return errors

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> np.ndarray:
        """The whole page (beyond the window) as a PNG at ``path``; its pixels returned."""
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32)

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except (AssertionError, OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self.commands)
            os.close(self.replies)
            if self.process.stderr:
                self.process.stderr.close()


@contextmanager
def chromium(tmp_path: Path) -> Iterator[Browser]:
    browser = Browser(tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


PAGE_CHECKS = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(image => image.decode().catch(() => null)));
  return {
    images: images.length,
    undecoded: images.filter(image => !(image.complete && image.naturalWidth > 0)).map(image => image.alt),
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  };
})()"""


# Two clicks on a heading: ascending, then descending. Returns the trial ids in the new order.
SORT_BY_VALIDATION_ACCURACY = """(() => {
  const heading = [...document.querySelectorAll("table.sortable th")].find(th => th.textContent === "val_accuracy");
  heading.click();
  heading.click();
  return [...document.querySelectorAll("table.sortable tbody tr")].map(row => row.cells[0].textContent);
})()"""


def evaluated_copy_of(scratch_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared tiny run (other tests read it), evaluated, with a hand-written export record."""
    from inat_keras.inspection.evaluate import evaluate
    from inat_keras.inspection.trained import load_trained

    run = tmp_path / "runs" / scratch_run.name
    shutil.copytree(scratch_run, run, ignore=shutil.ignore_patterns("eval", "explain", "export", "report.html"))
    evaluate(load_trained(run), run / "eval")
    export = {"tflite": {"format": "tflite", "accepted": True, "path": str(run / "export/model.tflite"), "bytes": 120_000}}
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text(json.dumps(export))
    return run


def test_the_run_report_of_a_trained_and_evaluated_run_renders_in_chromium(scratch_run: Path, tmp_path: Path) -> None:
    run = evaluated_copy_of(scratch_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    page = write_run_report(run)
    search_page = write_search_report(fake_search(tmp_path / "other"))

    with chromium(tmp_path) as browser:
        browser.open(page)
        checks = browser.evaluate(PAGE_CHECKS)
        pixels = browser.screenshot(tmp_path / "report.png")
        errors, urls = browser.console_errors(), browser.requested_urls()

        browser.open(search_page)
        search_checks = browser.evaluate(PAGE_CHECKS)
        first_trials = browser.evaluate(SORT_BY_VALIDATION_ACCURACY)
        search_errors = browser.console_errors()

    assert errors == [] and search_errors == [], (errors, search_errors)
    assert all(url.startswith(("file://", "data:")) for url in urls), urls  # self-contained: nothing fetched
    # curves, confusion matrix, prediction grid and one thumbnail per mistake (the tiny run makes plenty)
    assert checks["images"] >= 4 and checks["undecoded"] == [], checks["undecoded"]
    assert search_checks["images"] == 3 and search_checks["undecoded"] == []
    assert first_trials == ["2", "1", "0"]  # sorted by validation accuracy, highest first
    assert f"{metrics['test_accuracy']:.4f}" in checks["text"]
    assert f"{metrics['num_params']:,}" in checks["text"]
    assert "Confusion matrix" in checks["text"] and "Mistakes" in checks["text"]
    assert pixels.shape[0] >= min(checks["height"], 16000) * 0.9, (pixels.shape, checks["height"])
    assert pixels.std() > 20, f"the screenshot is nearly blank (pixel standard deviation {pixels.std():.1f})"


def test_a_summary_paragraph_that_starts_in_bold_is_rendered_not_looped_over() -> None:
    from inat_keras.inspection.report_html import markdown_html

    html = str(markdown_html("# S\n\n**Warning: every trial ended near chance.**\nsecond line\n\n- a point\n"))
    assert "<p><strong>Warning: every trial ended near chance.</strong> second line</p>" in html
    assert "<ul><li>a point</li></ul>" in html
