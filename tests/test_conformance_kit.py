"""The conformance kit itself: how properties pass, fail and skip, and that its public checks
accept the built-ins and refuse what breaks the contract (without registering anything: the
registries outlive a test)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

import agents  # noqa: F401  (registers the built-in attacks)
from arena.testing import (
    ArchitectureConformance,
    Conformance,
    ConformanceFailure,
    NotApplicable,
    check_architecture,
    check_attack,
    check_dataset,
    check_defense,
    check_removal,
)
from arena.testing.attack_arena import digits_arena


class Sample(Conformance):
    """Four properties, one of each outcome, and a counter of expensive runs."""

    kind = "sample"
    PROPERTIES: ClassVar[tuple[str, ...]] = ("holds", "breaks", "crashes", "not_mine", "again")

    def __init__(self) -> None:
        super().__init__("specimen")
        self.runs = 0

    def expensive(self) -> int:
        def work() -> int:
            self.runs += 1
            raise RuntimeError("the expensive run crashed")

        return self.once("work", work)

    def holds(self) -> None:
        """Always holds."""

    def breaks(self) -> None:
        """Never holds."""
        raise AssertionError("rows sum to 2")

    def crashes(self) -> None:
        """Needs the expensive run."""
        self.expensive()

    def not_mine(self) -> None:
        """Concerns other plug-ins."""
        raise NotApplicable("not a detector")

    def again(self) -> None:
        """Needs the expensive run too."""
        self.expensive()


def test_results_say_pass_fail_skip_with_the_reason() -> None:
    sample = Sample()
    outcome = {r.name: (r.status, r.detail) for r in sample.results()}
    assert outcome == {
        "holds": ("pass", ""),
        "breaks": ("fail", "rows sum to 2"),
        "crashes": ("fail", "RuntimeError: the expensive run crashed"),
        "not_mine": ("skip", "not a detector"),
        "again": ("fail", "RuntimeError: the expensive run crashed"),
    }
    assert sample.runs == 1  # a crash is remembered, not rerun
    assert Sample.describe("not_mine") == "Concerns other plug-ins."


def test_check_raises_naming_the_plugin_and_every_failed_property() -> None:
    Sample().check(["holds", "not_mine"])
    with pytest.raises(ConformanceFailure) as info:
        Sample().check()
    message = str(info.value)
    assert message.startswith("sample 'specimen' does not conform: breaks: rows sum to 2;")
    assert "crashes:" in message and "again:" in message and "holds" not in message
    assert isinstance(info.value, AssertionError)
    assert info.value.property == "breaks"
    assert [f.name for f in info.value.failures] == ["breaks", "crashes", "again"]
    with pytest.raises(ValueError, match="no_such_property"):
        Sample().run("no_such_property")


def test_the_builtins_conform() -> None:
    check_defense("rounding", {"decimals": 1})
    check_architecture("lenet5")
    check_removal("prune", {"amount": 0.2})


def test_the_dataset_check_accepts_digits(tmp_path: Path) -> None:
    check_dataset("digits", tmp_path)


def test_a_defense_with_bad_parameters_given_fails_as_built() -> None:
    with pytest.raises(ConformanceFailure, match=r"'rounding' does not conform: frozen_dataclass"):
        check_defense("rounding", {"decimals": -1})


def test_an_architecture_that_builds_nothing_fails_builds_and_skips_the_rest() -> None:
    outcome = {r.name: r.status for r in ArchitectureConformance("zoo").results()}
    assert outcome["builds"] == "fail"
    assert {outcome[p] for p in ("outputs_logits", "deterministic_init", "trainable")} == {"skip"}
    with pytest.raises(ConformanceFailure, match="builds: it refused every sample task"):
        check_architecture("decision_tree")


def test_check_attack_builds_its_own_arena_and_zoo() -> None:
    """Without an arena given, the kit trains the digits victim (and, for a zoo thief, a zoo
    around it) in this process."""
    check_attack("copycat", {"epochs": 5})
    check_attack("zoo_naive", {"extraction_params": {"epochs": 5}})
    zoo = digits_arena().zoo
    assert zoo.member(2) is digits_arena().victim
    assert zoo.profile().reference == 1
