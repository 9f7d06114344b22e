"""Every sampler and reward file is reached by its registry's import list.

A sampler (a reward) registers itself when its module is imported, and ``engines.samplers``
(``engines.rewards``) imports a hand-kept list of modules; a file missing from that list is a
sampler nobody can pick, that no registry-driven suite runs. The check runs in a fresh
interpreter: inside pytest, some test module may have imported the file
directly and so registered it by accident.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

SAMPLERS_DIR = Path(__file__).resolve().parents[2] / "engines" / "samplers"
REWARDS_DIR = SAMPLERS_DIR.parent / "rewards"


def declared_samplers() -> dict[str, str]:
    """name -> file of every sampler class in engines/samplers/*.py: a class that is decorated
    with ``SAMPLERS.register(NAME)``, or that sets both ``name = "..."`` and ``Config``."""
    found: dict[str, str] = {}
    for path in sorted(SAMPLERS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                if (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "register"
                    and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                ):
                    found[decorator.args[0].value] = path.name
            assigned = {
                target.id: statement.value
                for statement in node.body
                if isinstance(statement, ast.Assign)
                for target in statement.targets
                if isinstance(target, ast.Name)
            }
            name = assigned.get("name")
            if "Config" in assigned and isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.setdefault(name.value, path.name)
    return found


def declared_rewards() -> dict[str, str]:
    """name -> file of every ``REWARDS.add("NAME", ...)`` in engines/rewards/*.py."""
    found: dict[str, str] = {}
    for path in sorted(REWARDS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("add", "register")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "REWARDS"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found[node.args[0].value] = path.name
    return found


@functools.cache
def registered_in_a_fresh_interpreter(kind: str = "samplers") -> tuple[str, ...]:
    registry = {"samplers": "SAMPLERS", "rewards": "REWARDS"}[kind]
    code = f"import json, engines.{kind} as m; print(json.dumps(m.{registry}.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def test_every_sampler_file_is_in_the_registry_import_list() -> None:
    declared = declared_samplers()
    registered = set(registered_in_a_fresh_interpreter())
    missing = {name: file for name, file in declared.items() if name not in registered}
    assert not missing, f"sampler files not imported by engines/samplers/__init__.py: {missing}"
    assert registered <= set(declared)  # the scan sees every registered sampler: it would see a new one
    assert len(declared) >= 18


def test_the_scan_finds_an_unlisted_sampler_file(tmp_path, monkeypatch) -> None:
    """The check above would fail for a sampler file that no import reaches."""
    import tests.engines.test_registries as this

    stray = tmp_path / "stray.py"
    stray.write_text('@SAMPLERS.register("stray")\nclass Stray(Sampler):\n    name = "stray"\n    Config = StrayConfig\n')
    for path in SAMPLERS_DIR.glob("*.py"):
        (tmp_path / path.name).write_text(path.read_text())
    monkeypatch.setattr(this, "SAMPLERS_DIR", tmp_path)
    assert declared_samplers()["stray"] == "stray.py"
    assert "stray" not in registered_in_a_fresh_interpreter()


def test_every_reward_file_is_in_the_registry_import_list() -> None:
    declared = declared_rewards()
    registered = set(registered_in_a_fresh_interpreter("rewards"))
    missing = {name: file for name, file in declared.items() if name not in registered}
    assert not missing, f"reward files not imported by engines/rewards/__init__.py: {missing}"
    assert registered <= set(declared)  # the scan sees every registered reward: it would see a new one
