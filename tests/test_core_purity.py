"""The core stays pure: nothing under ``taskforce/core`` imports the OS.

DESIGN.md section 1: "A test fails if anything under the core package imports
``os``, ``time``, ``select``, ``signal``, ``subprocess``, ``socket``,
``logging``, ``random`` or ``yaml``."  This is that test.  It reads the source
with ``ast`` -- every ``import`` and ``from ... import`` statement, at any
depth, plus ``__import__``/``importlib.import_module`` calls spelled with a
literal name -- so a forbidden import hidden in a function is caught too.

The simulator (``taskforce/simulator.py``, with its parts ``simos.py``, ``simready.py`` and
``simworld.py``) is held to the same rule: it must drive the core without
touching the OS either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "taskforce" / "core"
SIMULATOR = [
    ROOT / "taskforce" / name for name in ("simulator.py", "simos.py", "simworld.py", "simready.py")
]

FORBIDDEN = frozenset(
    {"os", "time", "select", "signal", "subprocess", "socket", "logging", "random", "yaml"}
)


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``"line N: import X"`` for every forbidden import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    names = [node.args[0].value]
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"line {getattr(node, 'lineno', 0)}: imports {name}")
    return found


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_package_is_found() -> None:
    names = {path.name for path in core_modules()}
    assert {"supervisor.py", "events.py", "effects.py", "lifecycle.py"} <= names


@pytest.mark.parametrize("path", core_modules() + SIMULATOR, ids=lambda p: p.name)
def test_module_imports_nothing_from_the_os(path: Path) -> None:
    problems = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert not problems, f"{path.relative_to(ROOT)} must stay pure: {problems}"


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import time as clock",
        "import json, subprocess",
        "from os import environ",
        "from os.path import join",
        "from logging import getLogger",
        "def f():\n    import random\n",
        "try:\n    import yaml\nexcept ImportError:\n    pass\n",
        "__import__('socket')",
        "importlib.import_module('select')",
        "from signal import SIGTERM",
    ],
)
def test_the_checker_catches_every_spelling(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import json",
        "from taskforce.core import events",
        "from . import effects",
        "from .os import thing",  # a relative module that happens to be named os
        "import osmosis",
        "import timeit_like",
    ],
)
def test_the_checker_lets_pure_imports_through(source: str) -> None:
    assert forbidden_imports(source) == []
