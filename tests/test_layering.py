"""The dependency points one way: ``producer -> imgq <- worker``; inside each, rooms (sub-packages) import only
the rooms their ``__init__`` names, and no module imports itself back through others. Walked with ``ast``, so
that an import inside a function, or under ``if TYPE_CHECKING:``, counts as much as one at the top."""

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
OPTIONAL = {"producer/report/previews.py": {"pillow_heif", "rawpy"}}
PACKAGES = ("imgq", "producer", "worker")
# What each room may import of the project, besides itself (prefixes of module names). Each room's __init__
# says the same in words; a new room gets an entry here.
ROOMS = {
    "imgq.storage": ("imgq.contract", "imgq.settings"),  # settings: IMGQ_S3_ENDPOINT_URL, read by the s3 source
    "imgq.labels": ("imgq.contract", "imgq.storage"),
    "imgq.models": ("imgq.contract", "imgq.settings", "imgq.labels"),
    "imgq.results": ("imgq.contract", "imgq.keys", "imgq.settings", "imgq.storage", "imgq.labels"),
    "imgq.jobs": ("imgq.contract", "imgq.keys", "imgq.settings", "imgq.celery_config", "imgq.storage",
                  "imgq.labels", "imgq.results"),
    "imgq.schedules": ("imgq",),
    "imgq.alike": ("imgq.contract", "imgq.storage"),
    "worker.images": ("imgq",),
    "worker.runtimes": ("imgq", "worker.images"),
    "worker.batches": ("imgq", "worker.images", "worker.runtimes.base", "worker.process"),
    "producer.options": ("imgq",),
    "producer.exports": ("imgq", "producer.options"),
    "producer.report": ("imgq", "producer.options", "producer.exports", "producer.alike"),
    "producer.tags": ("imgq", "producer.options", "producer.exports"),
    "producer.alike": ("imgq",),
    "producer.local": ("imgq", "producer.options", "producer.exports", "producer.tags"),
}


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


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def module_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports, lazily, for types only or at the top alike
    (``from imgq.storage import files`` imports ``imgq.storage.files``)."""
    paths = {module_name(path): path for package in PACKAGES for path in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {other for other in found if other in paths and other != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere():
    assert circles(module_graph()) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def room_of(module: str) -> str | None:
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), None)


def test_each_room_imports_only_the_rooms_it_names():
    wrong = []
    for module, imported in module_graph().items():
        room = room_of(module)
        if room is None:
            continue
        allowed = (room, *ROOMS[room])
        wrong += [f"{module} imports {other}" for other in sorted(imported)
                  if not any(other == prefix or other.startswith(prefix + ".") for prefix in allowed)]
    assert wrong == []


def test_every_room_is_listed_and_says_what_it_owns_and_may_import():
    rooms = {module_name(init.parent / "__init__.py") for package in PACKAGES
             for init in (ROOT / package).rglob("__init__.py") if init.parent != ROOT / package}
    assert rooms == set(ROOMS)
    for room in rooms:
        init = ROOT / room.replace(".", "/") / "__init__.py"
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "May import" in doc and len(doc.splitlines()) <= 4, room
        assert not [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))], room
