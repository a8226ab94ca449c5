"""I2: attacker plug-ins run inside the Ray cluster as trusted code (RELIABILITY fact 1), so the
black-box discipline is a contract checked statically: nothing in ``agents/`` may reach past the
oracle. The checker reads each file's syntax tree; it is tested on bad snippets too, so a
checker that finds nothing cannot pass for one that holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENTS = Path(__file__).resolve().parents[1] / "agents"

FORBIDDEN_MODULES = (
    "ray",
    "optuna",
    "mlflow",
    "orchestration",
    "arena.service",
    "arena.ledger",
    "arena.referee",
    "arena.record",
    "arena.match_data",
    "arena.identities",
    "arena.ownership",
    "arena.goodput",
    "arena.benign",
    "arena.victims",
    "arena.data",
    "importlib",
    "gc",
    "inspect",
    "ctypes",
    "pickle",
)
"""the victim's side (service, ledger, the referee and the modules split out of it, victim cache,
the datasets with test labels), the cluster, and the ways around an import check (dynamic
imports, heap and frame walking)"""
FORBIDDEN_NAMES = frozenset(
    {
        "__ray_call__",
        "get_actor",
        "VictimService",
        "HostedVictimService",
        "RayServiceProxy",
        "__import__",
        "_getframe",
        "get_objects",
        "get_referrers",
    }
)
"""names and attributes no attack needs: actor calls and look-ups, the service classes, dynamic
imports and heap or frame walking"""


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _forbidden_module(name: str) -> bool:
    return any(name == m or name.startswith(f"{m}.") for m in FORBIDDEN_MODULES)


def _is_oracle(node: ast.AST) -> bool:
    """An expression that names an oracle (``oracle``, ``self.oracle``, ``inner_oracle``)."""
    last = _dotted(node).rsplit(".", 1)[-1]
    return "oracle" in last.lower()


def black_box_violations(source: str, filename: str = "<agent>") -> list[str]:
    """Every use in ``source`` that reaches past the oracle, as ``file:line: what``."""
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _forbidden_module(alias.name):
                    flag(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if _forbidden_module(module):
                flag(node, f"imports from {module}")
            for alias in node.names:
                if _forbidden_module(f"{module}.{alias.name}") or alias.name in FORBIDDEN_NAMES:
                    flag(node, f"imports {module}.{alias.name}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            flag(node, f"uses {node.id}")
        elif isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_NAMES:
                flag(node, f"uses .{node.attr}")
            elif _dotted(node.value) == "ray":
                flag(node, f"uses ray.{node.attr}")
            elif node.attr.startswith("_") and _is_oracle(node.value):
                flag(node, f"reaches into the oracle: {_dotted(node) or node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in FORBIDDEN_NAMES or _forbidden_module(node.value):
                flag(node, f"names {node.value!r} in a string")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "setattr", "vars"):
            args = node.args
            private = (
                len(args) >= 2
                and isinstance(args[1], ast.Constant)
                and str(args[1].value).startswith("_")
            )
            if args and _is_oracle(args[0]) and (private or _dotted(node.func) == "vars"):
                flag(node, f"reaches into the oracle through {_dotted(node.func)}")
    return found


def test_I2_agents_use_only_the_oracle() -> None:
    files = sorted(AGENTS.glob("**/*.py"))
    assert len(files) >= 10, "the agents package moved?"
    violations = [v for f in files for v in black_box_violations(f.read_text(), f.name)]
    assert violations == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import ray",
        "import ray.util.state as s",
        "from ray import get_actor",
        "import optuna",
        "from mlflow import log_metric",
        "from orchestration.ray_service import RayServiceProxy",
        "from arena.service import VictimService",
        "from arena import service",
        "from arena.victims import load_or_train",
        "from arena.data import load_dataset",
        "import importlib\nm = importlib.import_module('ra' + 'y')",
        "m = __import__('os')",
        "handle.__ray_call__.remote(lambda s: s._model)",
        "getattr(handle, '__ray_call__')",
        "actor = get_actor('victim', namespace='model-stealing-arena')",
        "oracle._endpoint._model",
        "self.oracle._attacker_id = 'someone-else'",
        "getattr(oracle, '_endpoint')",
        "vars(inner_oracle)",
        "isinstance(x, VictimService)",
        "import gc\nservices = gc.get_objects()",
        "import sys\nsys._getframe(1).f_locals",
    ],
)
def test_I2_checker_catches_a_black_box_breach(snippet: str) -> None:
    assert black_box_violations(snippet), f"the checker missed: {snippet}"


def test_I2_checker_accepts_an_honest_attack() -> None:
    honest = """
import numpy as np
import torch
from arena.attacker import ATTACKS, Attacker
from arena.oracle import Oracle

class Honest(Attacker):
    def _steal(self, oracle, knowledge, rng):
        self._seen = oracle.query(knowledge.pool[:8])
        budget = oracle.remaining + oracle.used
        return knowledge.make_substitute(int(rng.integers(0, 2**31 - 1)) + budget)
"""
    assert black_box_violations(honest) == []


def test_I2_one_bad_line_in_a_real_agent_fails_the_check() -> None:
    source = (AGENTS / "knockoff.py").read_text()
    assert black_box_violations(source) == []
    breached = source + "\n\ndef _peek(oracle):\n    return oracle._endpoint\n"
    assert black_box_violations(breached, "knockoff.py") == [
        f"knockoff.py:{breached.count(chr(10))}: reaches into the oracle: oracle._endpoint"
    ]
