"""The layer rules of DESIGN.md, read from the source with ``ast`` (every import, also inside functions).

- engines/ imports nothing from app/, storage/ or bench/;
- storage/ imports from engines/ only its data types and formats: the trace's events (engines.trace),
  the task (engines.task) and the JSON Lines rule (engines.jsonl), all free of models and torch;
- app/ imports nothing from bench/, and bench/ nothing from app/ (benchmarks reach the app as its
  users do, over HTTP and the command line; the CLI attaches the ``bench`` command from a list);
- the workflows and views of app/ (app/workflows, app/views) import neither Gradio nor the UI, and
  the HTML report reaches no Gradio module through any chain of project imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engines", "storage", "app", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports: ``import a.b`` gives a.b, ``from a.b import c``
    gives a.b and a.b.c (c may be a submodule); relative imports are resolved against ``module``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


MODULES = project_modules()


def imports(module: str) -> set[str]:
    path = MODULES[module]
    return imports_of(path.read_text(), module, is_package=path.name == "__init__.py")


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module in MODULES
        if within(module, prefix)
        for name in imports(module)
        if any(within(name, f) for f in forbidden) and not any(within(name, a) for a in allowed)
    )


def reachable(start: str) -> set[str]:
    """Every module, project or not, that importing ``start`` runs through project imports
    (a project module's parent packages included: importing a.b.c runs a and a.b first)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module not in MODULES:
            continue
        parents = [".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)]
        todo.extend(name for name in [*imports(module), *parents] if name in MODULES or name.split(".")[0] not in LAYERS)
    return seen


@pytest.mark.parametrize(
    ("layer", "forbidden", "allowed"),
    [
        ("engines", ("app", "storage", "bench"), ()),
        ("storage", ("engines", "app", "bench"), ("engines.trace", "engines.task", "engines.jsonl")),
        ("app", ("bench",), ()),
        ("bench", ("app",), ()),
        ("app.workflows", ("gradio", "app.ui", "app.commands"), ()),
        ("app.views", ("gradio", "app.ui", "app.commands"), ()),
    ],
)
def test_layer_rules(layer, forbidden, allowed):
    assert any(within(m, layer) for m in MODULES)
    assert violations(layer, forbidden, allowed) == []


def test_the_report_reaches_no_gradio_module():
    reached = reachable("app.workflows.report")
    assert "app.views.trace" in reached and "storage" in reached  # the walk follows the chains
    assert not [name for name in reached if within(name, "gradio") or within(name, "app.ui")]


def test_the_walker_sees_every_kind_of_import():
    source = (
        "import storage.db\n"
        "from bench import load\n"
        "from . import sibling\n"
        "from ..rewards.base import Reward\n"
        "def f():\n"
        "    import gradio as gr\n"
    )
    found = imports_of(source, "engines.samplers.x")
    assert {"storage.db", "bench", "bench.load", "engines.samplers.sibling", "engines.rewards.base", "gradio"} <= found
    assert "app.ui" in reachable("app.ui.compare") and "gradio" in reachable("app.ui.compare")
