"""Data flows one way: no stage imports a later one, not even inside a function.

The order: ``nanofly.policy`` (the policy artifact) < ``nanofly.sim`` < ``nanofly.train`` <
``nanofly.export`` < ``nanofly.firmware_bridge`` < the top-level modules (``nanofly.cli``,
``nanofly.evaluate``, ...), which may import every stage. Every ``import`` and ``from ...
import`` statement of every module is checked (absolute and relative, at module level and in
functions), and ``importlib.import_module("...")`` with a literal name; ``from nanofly import
__version__`` (the package root) is allowed everywhere.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (package, its directory in the repository), in the order data flows
STAGES = (("nanofly.policy", "nanofly/policy"), ("nanofly.sim", "sim"), ("nanofly.train", "train"),
          ("nanofly.export", "export"), ("nanofly.firmware_bridge", "firmware_bridge"))
TOP_LEVEL_RANK = len(STAGES)  # nanofly/*.py: above every stage
ROOT_RANK = -1  # the package root itself (nanofly/__init__.py: the version, nothing else)


def rank_of(module: str) -> int | None:
    """Where ``module`` sits in the order (0 = nanofly.policy), or None outside nanofly."""
    if module != "nanofly" and not module.startswith("nanofly."):
        return None
    for rank, (package, _) in enumerate(STAGES):
        if module == package or module.startswith(package + "."):
            return rank
    return ROOT_RANK if module == "nanofly" else TOP_LEVEL_RANK


@functools.cache
def _top_level_names() -> frozenset[str]:
    """Names ``from nanofly import NAME`` can import as a module of the top level."""
    names = {p.stem for p in (REPO / "nanofly").glob("*.py") if p.stem != "__init__"}
    return frozenset(names | {package.split(".")[1] for package, _ in STAGES})


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source``, a module of ``package``
    (relative imports resolved against it; ``from P import NAME`` counts as ``P.NAME`` when
    NAME is a module of nanofly's top level, and as ``P`` otherwise)."""
    top_names = _top_level_names()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            if module == "nanofly":
                found += [(node.lineno, f"nanofly.{alias.name}" if alias.name in top_names
                           else "nanofly") for alias in node.names]
            else:
                found.append((node.lineno, module))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))  # importlib.import_module("...")
    return found


def backward_imports(source: str, package: str, rank: int) -> list[str]:
    """The imports in ``source`` (a module of ``package`` at ``rank``) of a later stage."""
    return [f"line {line}: imports {module}" for line, module in imported_modules(source, package)
            if (rank_of(module) or 0) > rank]


def stage_modules():
    for rank, (package, directory) in enumerate(STAGES):
        for path in sorted((REPO / directory).rglob("*.py")):
            sub = path.relative_to(REPO / directory).parent.parts
            yield rank, ".".join((package, *sub)), path


def test_every_stage_is_checked():
    checked = {package for _, package, _ in stage_modules()}
    assert {package for package, _ in STAGES} <= checked


@pytest.mark.parametrize("rank, package, path",
                         [pytest.param(*m, id=str(m[2].relative_to(REPO))) for m in stage_modules()])
def test_no_stage_imports_a_later_one(rank, package, path):
    problems = backward_imports(path.read_text(), package, rank)
    assert not problems, (f"{path.relative_to(REPO)} ({package}) imports a later stage; data "
                          f"flows {' -> '.join(p for p, _ in STAGES)} -> the top-level modules: "
                          + "; ".join(problems))


@pytest.mark.parametrize("source", [
    "from nanofly.export.quantize import snap_to_int8_grid\n",
    "def f():\n    from nanofly.firmware_bridge import pil\n",
    "def f():\n    if True:\n        import nanofly.export.backends as b\n",
    "from ..export import quantize\n",
    "from .. import evaluate\n",
    "from nanofly import cli\n",
    "import importlib\ndef f():\n    importlib.import_module('nanofly.export.exporter')\n",
])
def test_the_check_finds_a_later_stage_anywhere(source):
    assert backward_imports(source, "nanofly.train", 2)


@pytest.mark.parametrize("source", [
    "from nanofly.sim.env import VecEnv\n",
    "from nanofly.policy.file import save_policy\n",
    "from .td3 import TrainConfig\n",
    "from nanofly import __version__\n",
    "import numpy as np\n",
])
def test_the_check_lets_earlier_stages_through(source):
    assert backward_imports(source, "nanofly.train", 2) == []
