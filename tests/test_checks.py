"""The static checks, run as tests so CI fails on them: ruff, mypy, import-linter, and no late internal imports.

Each tool reads its settings from pyproject.toml and runs from the repository root, as a developer runs it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "inat_keras"


def run_tool(*command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n{result.stdout}{result.stderr}"


def lint_imports() -> str:
    # import-linter has no `python -m` entry: its script sits beside this Python's, which may not be on PATH.
    beside_python = Path(sysconfig.get_path("scripts")) / "lint-imports"
    found = str(beside_python) if beside_python.is_file() else shutil.which("lint-imports")
    assert found, "lint-imports not found: pip install -r requirements-dev.txt (import-linter)"
    return found


def test_ruff_finds_no_lint_problems() -> None:
    result = run_tool(sys.executable, "-m", "ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert result.returncode == 0, output_of(result)


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    result = run_tool(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, output_of(result)


def test_mypy_finds_no_type_errors_in_the_package() -> None:
    result = run_tool(sys.executable, "-m", "mypy")
    assert result.returncode == 0, output_of(result)


def test_imports_follow_the_layers_of_the_package() -> None:
    result = run_tool(lint_imports(), "--no-cache")
    assert result.returncode == 0, output_of(result)


def imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return ["." * node.level + (node.module or "")]


def internal_imports_inside_functions(path: Path) -> list[str]:
    """``file:line: function() imports module`` for each import of an inat_keras module inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                # PEP 562's module __getattr__ in a package's __init__ is the one place a late import is the
                # point: it keeps `import inat_keras` from loading TensorFlow for names only some callers use.
                if not (path.name == "__init__.py" and child.name == "__getattr__" and node is tree):
                    visit(child, child.name)
            elif isinstance(child, ast.Import | ast.ImportFrom) and function is not None:
                for name in imported_names(child):
                    if name.startswith((".", "inat_keras.")) or name == "inat_keras":
                        found.append(f"{path.relative_to(REPO)}:{child.lineno}: {function}() imports {name}")
            else:
                visit(child, function)

    visit(tree, None)
    return found


def test_no_library_module_imports_another_inside_a_function() -> None:
    # A late import of our own modules hides a dependency from whoever reads the file's head, and usually
    # papers over an import cycle. Third-party ones (tensorflow, keras, matplotlib) may stay late: that keeps
    # `import inat_keras` cheap. The command-line layer is the exception, by design: a command imports the
    # library after its flags parse (test_every_command_parses_its_flags_without_tensorflow).
    library = [path for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts]
    found = [line for path in library for line in internal_imports_inside_functions(path)]
    assert not found, "move these imports to the top of their module:\n" + "\n".join(found)


def test_every_command_parses_its_flags_without_tensorflow() -> None:
    # --help and a mistyped flag answer at once, and TensorFlow's log level is set before it starts.
    probe = (
        "import importlib, sys\n"
        "from inat_keras.cli.main import COMMANDS\n"
        "for module, _ in COMMANDS.values():\n"
        "    importlib.import_module(module)\n"
        "heavy = sorted({'tensorflow', 'keras', 'keras_tuner', 'matplotlib', 'wandb', 'sklearn'} & set(sys.modules))\n"
        "print(' '.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, output_of(result)
    assert result.stdout.strip() == "", f"importing the commands loads {result.stdout.strip()}"
