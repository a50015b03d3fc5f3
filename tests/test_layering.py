"""The dependency points one way: ``producer -> imgq <- worker``. Walked with ``ast``, so that an import
inside a function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"producer": {"worker"}, "worker": {"producer"}, "imgq": {"producer", "worker"}}
# What the shared package must never import at all, even lazily: it is what the producer installs alone.
HEAVY = {"imgq": {"tensorflow", "keras", "click", "prometheus_client", "pillow_heif", "rawpy"},
         "producer": {"tensorflow", "keras", "pillow_heif", "rawpy"}}
# pillow-heif and rawpy are worker dependencies: the walk knows HEIC and RAW by their names alone. The one
# exception: the report's previews use them when they are installed (inside functions, ImportError: no preview).
OPTIONAL = {"producer/previews.py": {"pillow_heif", "rawpy"}}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_grain(package):
    banned = FORBIDDEN[package] | HEAVY.get(package, set())
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in modules(package) for line, name in imports_of(path)
             if name in banned - OPTIONAL.get(str(path.relative_to(ROOT)), set())]
    assert modules(package) and wrong == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from worker.app import app\n    import tensorflow as tf\n")
    assert imports_of(sample) == [(2, "worker"), (3, "tensorflow")]
