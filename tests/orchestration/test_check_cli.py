"""``arena check``: the conformance kit on a plug-in file, through the real command line (each
run in its own process: a plug-in's registrations last as long as the process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestration.plugin_check import NothingRegistered, check_plugin

REPO = Path(__file__).resolve().parents[2]

GOOD = '''
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from arena.defenses import DEFENSES, Defense
from arena.defenses.base import renormalise
from arena.models import ARCHITECTURES


@DEFENSES.register("squash_check_good", version=2)
@dataclass(frozen=True)
class Squash(Defense):
    """Squares the probabilities and renormalises (a sharper answer)."""

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        return renormalise(probs**2)


@ARCHITECTURES.register("flat_check_good")
def flat(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One linear layer on the flattened image."""
    size = 1
    for dim in input_shape:
        size *= dim
    return nn.Sequential(nn.Flatten(), nn.Linear(size, num_classes))
'''

BROKEN = '''
from dataclasses import dataclass
from typing import Any

import torch

from arena.attacker import ATTACKS, Attacker
from arena.defenses import DEFENSES, Defense


@DEFENSES.register("doubling_check_broken")
@dataclass(frozen=True)
class Doubling(Defense):
    """Answers twice the probabilities: rows sum to two."""

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        return probs * 2


@ATTACKS.register("greedy_check_broken")
@dataclass(frozen=True)
class Greedy(Attacker):
    """Asks for twice its budget of noise images."""

    needs_pool = False

    def _steal(self, oracle, knowledge, rng):
        oracle.query_all(torch.rand(2 * oracle.budget, *knowledge.input_shape))
        return knowledge.make_substitute(0)
'''


def arena_check(ref: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestration", "check", str(ref), "--home", str(home)],
        capture_output=True,
        text=True,
        cwd=ref.parent,
        env=env,
        timeout=300,
    )


def rows(stdout: str) -> dict[tuple[str, str], str]:
    """(plug-in, property) -> result, read from the printed table."""
    found = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 4 and cells[3] in ("pass", "FAIL", "skip"):
            found[(cells[1], cells[2])] = cells[3]
    return found


def test_a_conforming_plugin_passes(tmp_path: Path) -> None:
    plugin = tmp_path / "good_plugin.py"
    plugin.write_text(GOOD)
    done = arena_check(plugin, tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table[("squash_check_good", "probability_rows")] == "pass"
    assert table[("squash_check_good", "works_in_chain")] == "pass"
    assert table[("flat_check_good", "trainable")] == "pass"
    assert "FAIL" not in done.stdout
    assert "0 failed" in done.stdout


def test_a_broken_plugin_fails_naming_the_property(tmp_path: Path) -> None:
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(BROKEN)
    done = arena_check(plugin, tmp_path / "home")
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table[("doubling_check_broken", "probability_rows")] == "FAIL"
    assert table[("doubling_check_broken", "works_in_chain")] == "FAIL"
    assert table[("doubling_check_broken", "frozen_dataclass")] == "pass"
    assert table[("greedy_check_broken", "stays_within_budget")] == "FAIL"
    assert table[("greedy_check_broken", "rejects_bad_parameters")] == "pass"
    assert "sums to 2" in done.stdout
    assert "past its budget" in done.stdout


def test_a_plugin_that_does_not_import_is_one_line_and_exit_2(tmp_path: Path) -> None:
    plugin = tmp_path / "unimportable.py"
    plugin.write_text("import no_such_module_anywhere\n")
    done = arena_check(plugin, tmp_path / "home")
    assert done.returncode == 2
    assert "unimportable.py" in done.stderr and "failed to import" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "no_such_module_anywhere" in done.stderr


def test_a_plugin_that_registers_nothing_is_an_error(tmp_path: Path) -> None:
    plugin = tmp_path / "empty_plugin.py"
    plugin.write_text(textwrap.dedent('"""Registers nothing."""\nVALUE = 1\n'))
    with pytest.raises(NothingRegistered, match="registered nothing"):
        check_plugin(str(plugin), tmp_path / "data")
