"""Every command README.md shows is run, or where it cannot run here, checked, by a test.

The commands are the lines of the README's ```bash blocks (backslash continuations joined, comments
dropped, `a && b` split into its two commands). COMMANDS maps each one to how it is exercised, and a
test fails when the README shows a command the table does not name, so a new command cannot go
untested.

The commands run in-process through the `python -m inat_keras` dispatcher, in one working folder,
in the README's order, as a user would type them: `download --dest data` fetches a tiny
generated dataset from a server on 127.0.0.1 into `data/inaturalist_12K`, the training commands
write `runs/<name>/`, and the inspection commands read those runs. Flags appended to a command make it
fast (argparse keeps the last of a repeated flag): one epoch, 32 px, batches of 8, no W&B, no weights
download. A command another one needs runs first, once.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import io
import json
import re
import shlex
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import make_dataset_root
from inat_keras.cli.main import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

SETUP_LINES = [
    "pip install -r requirements.txt && python train_scratch.py --demo",
    "pip install -r requirements-dev.txt && python -m pytest",
]

# Appended to training commands: the last of a repeated flag wins, so these override the README's values.
FAST = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--wandb", "off", "--quiet"]
# --demo already trains at 32 px; its 1,797 digits are the data.
DEMO_FAST = ["--epochs", "1", "--wandb", "off", "--quiet"]
# Fine-tuning: random weights (no download), and the head alone on features the frozen backbone computes
# once: tracing a whole backbone's training step costs 20-80 s of CPU, a head-only run about 8 s.
HEAD_ONLY = ["--weights", "none", "--unfreeze", "0", "--no-augment"]

# -- reading the README ---------------------------------------------------------------------------


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def without_comment(line: str) -> str:
    """The line up to an unquoted ``#`` that starts a word."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def command_lines(block: str) -> list[str]:
    """The block's commands: continuations joined, comments and blank lines dropped, whitespace collapsed."""
    joined = re.sub(r"\\\n", " ", block)
    lines = (" ".join(without_comment(line).split()) for line in joined.splitlines())
    return [line for line in lines if line]


def readme_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [line for block in fenced_blocks(text, "bash") for line in command_lines(block)]


def readme_commands() -> list[str]:
    """Every command of the README, in order, each once; ``a && b`` is two commands."""
    commands = [part.strip() for line in readme_lines() for part in line.split(" && ")]
    return list(dict.fromkeys(commands))


# -- the working folder ---------------------------------------------------------------------------


def dataset_zip(folder: Path) -> bytes:
    """A tiny dataset in the layout of the course's nature_12K.zip (inaturalist_12K/train|val/<class>/)."""
    root = make_dataset_root(folder / "inaturalist_12K", num_classes=3, train_per_class=8, val_per_class=4)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


class ZipServer:
    """Serves one zip on 127.0.0.1, so `download` runs without the network."""

    def __init__(self, payload: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/nature_12K.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Result:
    status: int
    out: str
    err: str

    def ok(self) -> Result:
        assert self.status == 0, f"exit status {self.status}\n{self.out}{self.err}"
        return self


@dataclass
class Workspace:
    """The user's project folder: `data/`, `runs/`, the demo cache; each README command runs here at most once."""

    root: Path
    server: ZipServer
    results: dict[tuple[str, ...], Result] = field(default_factory=dict)
    done: dict[str, object] = field(default_factory=dict)

    @property
    def inat_home(self) -> Path:
        return self.root / "inat_keras_home"  # stands for ~/.cache/inat_keras

    def argv(self, command: str, cwd: Path, replace: dict[str, str]) -> list[str]:
        """The dispatcher's arguments for a README command, as the shell would pass them."""
        for placeholder, value in replace.items():
            command = command.replace(placeholder, value)
        words = []
        for word in shlex.split(command.replace("~/.cache/inat_keras", str(self.inat_home))):
            matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
            words += matches or [word]
        if words[:2] == ["python", "train_scratch.py"]:
            return ["train", *words[2:]]
        if words[:2] == ["python", "finetune.py"]:
            return ["finetune", *words[2:]]
        if words[:3] == ["python", "-m", "inat_keras"]:
            return words[3:]
        raise AssertionError(f"not a command of this project: {command}")

    def run(self, command: str, *overrides: str, cwd: str = ".", replace: dict[str, str] | None = None) -> Result:
        """Run a README command (plus ``overrides``) in-process in the folder; the same arguments run once."""
        folder = self.root / cwd
        argv = [*self.argv(command, folder, replace or {}), *overrides]
        key = (cwd, *argv)
        if key not in self.results:
            out, err = io.StringIO(), io.StringIO()
            with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                patch.chdir(folder)
                patch.setenv("INAT_KERAS_HOME", str(self.inat_home))
                patch.setenv("NO_PROXY", "127.0.0.1,localhost")
                patch.setenv("WANDB_SILENT", "true")
                patch.delenv("WANDB_API_KEY", raising=False)
                status = main(argv)
            self.results[key] = Result(status, out.getvalue(), err.getvalue())
        return self.results[key]

    def ensure(self, command: str) -> None:
        """Exercise a README command another one depends on, once."""
        if command not in self.done:
            try:
                COMMANDS[command].exercise(self, command)
                self.done[command] = None
            except BaseException as error:
                self.done[command] = error
                raise
        if self.done[command] is not None:
            raise AssertionError(f"a command this one needs failed: {command}") from self.done[command]


@pytest.fixture
def workspace(tmp_path_factory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("readme")
    server = ZipServer(dataset_zip(tmp_path_factory.mktemp("readme_zip")))
    yield Workspace(root, server)
    server.close()


# -- how each command is exercised ------------------------------------------------------------------


def requirement_file_exists(ws: Workspace, command: str) -> None:
    name = command.split()[-1]
    assert (REPO / name).is_file(), f"the README installs {name}, which does not exist"


def dev_requirements_include_the_runtime(ws: Workspace, command: str) -> None:
    requirement_file_exists(ws, command)
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text(encoding="utf-8")


def ci_runs_the_same_line(ws: Workspace, command: str) -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -r requirements-dev.txt" in ci and "python -m pytest" in ci


def pinned(requirements: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)}==(\S+)", (REPO / requirements).read_text(encoding="utf-8"), re.MULTILINE)
    assert found, f"{requirements} pins no {name}"
    return found.group(1)


def gpu_requirements_add_cuda_to_the_pinned_tensorflow(ws: Workspace, command: str) -> None:
    requirement_file_exists(ws, command)
    assert "-r requirements.txt" in (REPO / "requirements-gpu.txt").read_text(encoding="utf-8")
    assert pinned("requirements-gpu.txt", "tensorflow[and-cuda]") == pinned("requirements.txt", "tensorflow")


def covered_by_test_checks(*fragments: str) -> Callable[[Workspace, str], None]:
    def check(ws: Workspace, command: str) -> None:
        source = (REPO / "tests" / "test_checks.py").read_text(encoding="utf-8")
        missing = [fragment for fragment in fragments if fragment not in source]
        assert not missing, f"tests/test_checks.py no longer runs `{command}` (looked for {missing})"

    return check


def pre_commit_config_uses_the_pinned_ruff(ws: Workspace, command: str) -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    revs = [repo["rev"] for repo in config["repos"] if "ruff" in repo["repo"]]
    assert revs == [f"v{pinned('requirements-dev.txt', 'ruff')}"]


def dockerfile_builds_from_the_repository(ws: Workspace, command: str) -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY requirements.txt" in dockerfile and "WORKDIR /app" in dockerfile


def docker_run_mounts_the_volumes_and_runs_the_same_command(ws: Workspace, command: str) -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert '"/app/data"' in dockerfile and '"/app/runs"' in dockerfile
    assert '"$PWD/data:/app/data:ro"' in command and '"$PWD/runs:/app/runs"' in command
    inside = command[command.index(" inat-keras python ") + len(" inat-keras ") :]
    ws.ensure(inside)


def metrics_of(ws: Workspace, run: str) -> dict:
    return json.loads((ws.root / "runs" / run / "metrics.json").read_text(encoding="utf-8"))


def config_of(ws: Workspace, run: str) -> dict:
    return json.loads((ws.root / "runs" / run / "config.json").read_text(encoding="utf-8"))


def trains(name: str, *overrides: str, needs: tuple[str, ...] = ()) -> Callable[[Workspace, str], None]:
    """Run a training command as run ``runs/<name>`` and check it finished with a test accuracy."""

    def exercise(ws: Workspace, command: str) -> None:
        for need in needs:
            ws.ensure(need)
        result = ws.run(command, *overrides, "--name", name).ok()
        assert any(f"runs/{name}" in line and "test accuracy" in line for line in result.out.splitlines()), result.out
        assert 0.0 <= metrics_of(ws, name)["test_accuracy"] <= 1.0

    return exercise


DOWNLOAD = "python -m inat_keras download --dest data"
SETUP_DEMO = "python train_scratch.py --demo"
DEMO = "python train_scratch.py --demo --name demo"
PART_A = (
    "python train_scratch.py --data data/inaturalist_12K --augment --epochs 30 --first-filters 32 "
    "--filter-organisation 2 --kernel-size 3 --activation gelu --batch-norm --dense-units 512 "
    "--dense-dropout 0.3 --lr-schedule cosine --warmup-epochs 2"
)
FINETUNE_DEMO = "python finetune.py --demo"
EVALUATE = "python -m inat_keras evaluate runs/demo --tta"
EXPLAIN = "python -m inat_keras explain runs/demo"
EXPORT = "python -m inat_keras export runs/demo --format savedmodel --format tflite --format onnx"
SEARCH = "python train_scratch.py --data data/inaturalist_12K --tuner bayes --max-trials 40 --search-space space.yaml"


def same_run_as_the_named_demo(ws: Workspace, command: str) -> None:
    assert f"{command} --name demo" == DEMO
    ws.ensure(DEMO)


def downloads_from_a_local_server(ws: Workspace, command: str) -> None:
    ws.run(command, "--url", ws.server.url, "--quiet").ok()
    assert sorted(p.name for p in (ws.root / "data" / "inaturalist_12K" / "train").iterdir()) == [
        "class_a",
        "class_b",
        "class_c",
    ]


def extracts_a_local_archive(ws: Workspace, command: str) -> None:
    ws.ensure(DOWNLOAD)
    (ws.root / "offline").mkdir(exist_ok=True)
    shutil.copy(ws.root / "data" / "nature_12K.zip", ws.root / "offline" / "nature_12K.zip")
    ws.run(command, "--quiet", cwd="offline").ok()
    assert (ws.root / "offline" / "data" / "inaturalist_12K" / "val" / "class_c").is_dir()


def checks_the_data(ws: Workspace, command: str) -> None:
    ws.ensure(DOWNLOAD)
    ws.run(command, "--quiet").ok()
    report = json.loads((ws.root / "check.json").read_text(encoding="utf-8"))
    assert "class_a" in json.dumps(report)


def trains_part_a(ws: Workspace, command: str) -> None:
    trains("part-a", *FAST, needs=(DOWNLOAD,))(ws, command)
    model = config_of(ws, "part-a")["model"]
    assert (model["activation"], model["first_filters"], model["filter_organisation"]) == ("gelu", 32, 2)


def resumes_a_run_without_a_committed_epoch(ws: Workspace, command: str) -> None:
    # A copy of a finished run without checkpoint/state.json is a run killed before its first epoch was committed.
    ws.ensure(PART_A)
    shutil.copytree(ws.root / "runs" / "part-a", ws.root / "runs" / "interrupted")
    (ws.root / "runs" / "interrupted" / "checkpoint" / "state.json").unlink()
    result = ws.run(command, "--wandb", "off", "--quiet", replace={"runs/<name>": "runs/interrupted"}).ok()
    assert "training starts at epoch 1" in result.out
    assert metrics_of(ws, "interrupted")["epochs_run"] == 1


def fine_tunes(name: str, *overrides: str, needs: tuple[str, ...] = ()) -> Callable[[Workspace, str], None]:
    def exercise(ws: Workspace, command: str) -> None:
        trains(name, *overrides, needs=needs)(ws, command)
        assert config_of(ws, name)["kind"] == "transfer"

    return exercise


def fine_tunes_the_demo_offline(ws: Workspace, command: str) -> None:
    fine_tunes("ft-demo", *DEMO_FAST, "--unfreeze", "0")(ws, command)
    model = config_of(ws, "ft-demo")["model"]
    assert (model["backbone"], model["weights"]) == ("mobilenetv2", None)


def searches_the_readme_space(ws: Workspace, command: str) -> None:
    ws.ensure(DOWNLOAD)
    (space,) = fenced_blocks(README.read_text(encoding="utf-8"), "yaml")
    assert space.startswith("# space.yaml\n")
    (ws.root / "space.yaml").write_text(space, encoding="utf-8")
    # A flag fixes its hyperparameter: small filters keep the trial cheap; the README's space.yaml still varies.
    ws.run(command, *FAST, "--max-trials", "1", "--first-filters", "8", "--filter-organisation", "1").ok()
    search = ws.root / "runs" / "scratch-search-bayes"
    trials = (search / "search" / "trials.csv").read_text(encoding="utf-8")
    assert "gelu" in trials or "mish" in trials
    assert 0.0 <= metrics_of(ws, "scratch-search-bayes")["test_accuracy"] <= 1.0


def analyses_the_search(ws: Workspace, command: str) -> None:
    ws.ensure(SEARCH)
    ws.run(command).ok()
    assert (ws.root / "runs" / "scratch-search-bayes" / "search" / "summary.md").is_file()


def evaluates(ws: Workspace, command: str) -> None:
    ws.ensure(DEMO)
    ws.run(command).ok()
    metrics = json.loads((ws.root / "runs" / "demo" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert "tta" in json.dumps(metrics)


def predicts(ws: Workspace, command: str) -> None:
    ws.ensure(DEMO)
    result = ws.run(command).ok()
    assert result.out.count("digit_") >= 10  # one block per image of the folder


def explains(ws: Workspace, command: str) -> None:
    ws.ensure(DEMO)
    ws.run(command).ok()
    assert (ws.root / "runs" / "demo" / "explain" / "gradcam.png").is_file()


def exports(ws: Workspace, command: str) -> None:
    ws.ensure(DEMO)
    ws.run(command).ok()
    report = json.loads((ws.root / "runs" / "demo" / "export" / "export.json").read_text(encoding="utf-8"))
    assert "accepted" in json.dumps(report) and '"accepted": false' not in json.dumps(report)


def reports(ws: Workspace, command: str) -> None:
    for inspection in (EVALUATE, EXPLAIN, EXPORT):
        ws.ensure(inspection)
    ws.run(command).ok()
    page = (ws.root / "runs" / "demo" / "report.html").read_text(encoding="utf-8")
    assert "gradcam" in page.lower() and "onnx" in page.lower()


def compares(ws: Workspace, command: str) -> None:
    ws.ensure(DEMO)
    ws.ensure(FINETUNE_DEMO)
    ws.run(command).ok()
    table = (ws.root / "comparison" / "comparison.md").read_text(encoding="utf-8")
    assert "demo" in table and "ft-demo" in table


def not_run(ws: Workspace, command: str) -> None:
    pass


@dataclass(frozen=True)
class Case:
    how: str  # for the reader: how the test exercises the README command
    exercise: Callable[[Workspace, str], None]


COMMANDS: dict[str, Case] = {
    # Set-up
    "pip install -r requirements.txt": Case("not run (installs); the file exists", requirement_file_exists),
    SETUP_DEMO: Case("run as the demo section's command, which is this one plus --name demo", same_run_as_the_named_demo),
    "pip install -r requirements-dev.txt": Case(
        "not run (installs); the file exists and includes requirements.txt", dev_requirements_include_the_runtime
    ),
    "python -m pytest": Case("not run (it runs this test); .ci/run runs the same line", ci_runs_the_same_line),
    "pip install -r requirements-gpu.txt": Case(
        "not run (installs CUDA); the file adds tensorflow[and-cuda] at requirements.txt's version",
        gpu_requirements_add_cuda_to_the_pinned_tensorflow,
    ),
    # The demo
    DEMO: Case(f"run with {' '.join(DEMO_FAST)}", trains("demo", *DEMO_FAST)),
    FINETUNE_DEMO: Case(
        f"run with {' '.join(DEMO_FAST)} --unfreeze 0 --name ft-demo; offline: --demo implies --weights none",
        fine_tunes_the_demo_offline,
    ),
    # The real dataset
    DOWNLOAD: Case(
        "run with --url of a server on 127.0.0.1 serving a tiny dataset's zip; gives every later command its data",
        downloads_from_a_local_server,
    ),
    "python -m inat_keras check-data data/inaturalist_12K --json check.json": Case("run with --quiet", checks_the_data),
    "python -m inat_keras download --archive nature_12K.zip": Case(
        "run with --quiet in a fresh folder holding the zip `download` fetched", extracts_a_local_archive
    ),
    # Part A
    PART_A: Case(f"run with {' '.join(FAST)} --name part-a", trains_part_a),
    "python train_scratch.py --resume runs/<name>": Case(
        "runs/<name> = a copy of part-a without checkpoint/state.json (killed before its first commit); "
        "run with --wandb off --quiet",
        resumes_a_run_without_a_committed_epoch,
    ),
    # Part B
    "python finetune.py --data data/inaturalist_12K": Case(
        f"run with --backbone mobilenetv2 {' '.join(HEAD_ONLY)} {' '.join(FAST)}: EfficientNetV2-S's training "
        "step alone takes 80 s of CPU to trace",
        fine_tunes("finetune", "--backbone", "mobilenetv2", *HEAD_ONLY, *FAST, needs=(DOWNLOAD,)),
    ),
    # Search
    SEARCH: Case(
        f"run with the README's space.yaml, {' '.join(FAST)} --max-trials 1 --first-filters 8 --filter-organisation 1 "
        "(one small trial, then its retrain)",
        searches_the_readme_space,
    ),
    "python -m inat_keras sweep-analysis runs/scratch-search-bayes": Case("run on the search above", analyses_the_search),
    # Evaluate, predict, explain, export, compare
    EVALUATE: Case("run on the demo run", evaluates),
    "python -m inat_keras predict runs/demo ~/.cache/inat_keras/digits-v1/val/3 --top-k 3": Case(
        "run on the demo run; ~/.cache/inat_keras is $INAT_KERAS_HOME", predicts
    ),
    EXPLAIN: Case("run on the demo run", explains),
    EXPORT: Case("run on the demo run; every export accepted", exports),
    "python -m inat_keras report runs/demo": Case("run on the demo run after evaluate, explain and export", reports),
    "python -m inat_keras compare runs/*": Case("run on every run trained so far, at least demo and ft-demo", compares),
    # Scale
    "docker build -t inat-keras .": Case(
        "not run (no Docker engine in CI; tests/test_docker.py lints the Dockerfile); it copies the repository",
        dockerfile_builds_from_the_repository,
    ),
    (
        'docker run --gpus all --rm --user "$(id -u):$(id -g)" -v "$PWD/data:/app/data:ro" -v "$PWD/runs:/app/runs" '
        "inat-keras python finetune.py --data data/inaturalist_12K"
    ): Case(
        "docker not run; the volumes match the Dockerfile's, and the command inside is the Part B one, run above",
        docker_run_mounts_the_volumes_and_runs_the_same_command,
    ),
    # Contributing
    "ruff check .": Case("run by tests/test_checks.py", covered_by_test_checks('"ruff", "check"')),
    "ruff format --check .": Case("run by tests/test_checks.py", covered_by_test_checks('"ruff", "format", "--check"')),
    "mypy inat_keras": Case(
        "run by tests/test_checks.py (python -m mypy: pyproject.toml's files = inat_keras)", covered_by_test_checks('"mypy"')
    ),
    "lint-imports": Case("run by tests/test_checks.py", covered_by_test_checks("lint-imports")),
    "pip install pre-commit": Case("not run (installs an optional tool)", not_run),
    "pre-commit install": Case(
        "not run (writes .git/hooks, fetches the hook from GitHub); the hook's ruff is requirements-dev.txt's",
        pre_commit_config_uses_the_pinned_ruff,
    ),
}


# -- the tests ------------------------------------------------------------------------------------


def test_set_up_is_two_complete_commands() -> None:
    (first_block, *_) = fenced_blocks(README.read_text(encoding="utf-8"), "bash")
    assert command_lines(first_block) == SETUP_LINES


def test_the_readme_links_only_to_files_that_exist() -> None:
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    assert targets, "the README links to no docs"
    missing = [target for target in targets if not (REPO / target).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_readme_command_is_in_the_table() -> None:
    missing = [command for command in readme_commands() if command not in COMMANDS]
    assert not missing, "add these README commands to COMMANDS in tests/test_readme.py:\n" + "\n".join(missing)


def test_the_table_names_only_readme_commands() -> None:
    stale = [command for command in COMMANDS if command not in readme_commands()]
    assert not stale, "the README no longer shows these; remove them from COMMANDS:\n" + "\n".join(stale)


@pytest.mark.slow
def test_every_readme_command_runs_or_is_checked_as_the_table_says(workspace: Workspace) -> None:
    # One test, not one per command: the commands share runs, and pytest-xdist would otherwise spread
    # them over workers that each train those runs again. Every command is tried; all failures are listed.
    failures = []
    for command in readme_commands():
        if command not in COMMANDS:
            failures.append(f"{command}\n    not in COMMANDS: say how the test exercises it")
            continue
        try:
            workspace.ensure(command)
        except Exception as error:
            message = "\n".join(f"    {line}" for line in f"{type(error).__name__}: {error}".splitlines()[-20:])
            failures.append(f"{command}\n{message}")
    assert not failures, f"{len(failures)} README commands failed:\n" + "\n".join(failures)
