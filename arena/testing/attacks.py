"""What every attack promises (DESIGN §3): it plays any oracle the referee can hand it within the
budget the server enforces, returns a substitute in eval mode, replays under a seed, and rejects
nonsense hyperparameters with InvalidParameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena.attacker import ANSWER_FORMS, ATTACKS, Attacker, MissingKnowledge
from arena.errors import BudgetExhausted
from arena.knowledge import API, THREAT_MODELS
from arena.oracle import Oracle
from arena.registry import build_plugin
from arena.specs import PluginSpec, VictimSpec
from arena.testing.attack_arena import AttackArena, accuracy_of, digits_arena
from arena.testing.core import Conformance, NotApplicable, expect, expect_rejected
from arena.testing.shape import expect_documented, expect_frozen_dataclass, init_fields

BUDGET = 200
ORACLES: dict[str, tuple[PluginSpec, ...]] = {  # one per arena.attacker.ANSWER_FORMS
    "soft": (),
    "top_k": (PluginSpec(name="top_k", params={"k": 3}),),
    "label_only": (PluginSpec(name="label_only"),),
}
"""the answer forms an attack meets: full probabilities, the 3 largest, the label only"""
THIEF = "conformance-thief"


@dataclass(frozen=True)
class Theft:
    """One steal against a fresh service: what came back and what the server counted."""

    model: nn.Module
    used: int
    """queries the server charged"""
    audited: int
    """queries in the server's audit log"""
    served_by: tuple[int, ...]
    l1_sum: float


class AttackConformance(Conformance):
    """One registered attack (with ``params``, default: its defaults) under test on digits."""

    kind = "attack"
    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "frozen_dataclass",
        "documented",
        "rejects_bad_parameters",
        "stays_within_budget",
        "returns_eval_substitute",
        "plays_top_k",
        "plays_label_only",
        "learns_from_victim",
        "deterministic",
        "honours_needs_pool",
    )

    def __init__(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        bad_params: Sequence[Mapping[str, Any]] = (),
        arena: AttackArena | None = None,
    ) -> None:
        super().__init__(name)
        self.params = dict(params or {})
        self.bad_params = [dict(p) for p in bad_params]
        self._arena = arena

    @property
    def cls(self) -> type[Attacker]:
        return ATTACKS.get(self.name)

    @property
    def arena(self) -> AttackArena:
        return self._arena or digits_arena()

    def build(self, params: Mapping[str, Any] | None = None) -> Attacker:
        return build_plugin(ATTACKS, self.name, self.params if params is None else params)

    def steal(self, oracle: str, *, pool: bool = True, seed: int = 0) -> Theft:
        """Steal with ``BUDGET`` queries from a fresh service answering in the ``oracle`` form;
        an attack that asks for more than it has left meets BudgetExhausted and fails."""
        zoo = self.cls.victim_kind == VictimSpec.ZOO_ARCH
        service = self.arena.service(ORACLES[oracle], zoo=zoo)
        service.open_account(THIEF, BUDGET)
        attacker = self.build()
        knowledge = self.arena.knowledge(pool, self.cls.upper_bound, self.cls.threat_model)
        try:
            model = attacker.steal(Oracle(service, THIEF), knowledge, np.random.default_rng(seed))
        except BudgetExhausted as exc:
            raise AssertionError(
                f"against the {oracle} oracle it asked past its budget of {BUDGET} ({exc}): "
                "read oracle.remaining and stop there"
            ) from None
        stats = service.account_stats(THIEF)
        audited = service.audit(THIEF).queries
        return Theft(model, stats.used, audited, tuple(stats.served_by), stats.l1_sum)

    def theft(self, oracle: str) -> Theft:
        return self.once(f"steal-{oracle}", lambda: self.steal(oracle))

    def frozen_dataclass(self) -> None:
        """A frozen dataclass of hyperparameters, subclassing Attacker."""
        expect_frozen_dataclass(self.cls, self.build(), Attacker)

    def documented(self) -> None:
        """It has a docstring of its own (`arena list` shows its first line)."""
        expect_documented(ATTACKS, self.name, Attacker)

    def rejects_bad_parameters(self) -> None:
        """Unknown knobs, bad shared options (it calls ``super().__post_init__()``) and a zero
        ``epochs`` or negative ``lr`` raise InvalidParameters."""
        cases: list[dict[str, Any]] = [
            {"no_such_knob": 1},
            {"smoothing_copies": 0},
            {"identities": 0},
        ]
        fields = init_fields(self.cls)
        cases += [{"epochs": 0}] if "epochs" in fields else []
        cases += [{"lr": -1}] if "lr" in fields else []
        expect_rejected(
            lambda params: self.build({**self.params, **params}), [*cases, *self.bad_params]
        )

    def stays_within_budget(self) -> None:
        """Against full probabilities it finishes without asking past its budget; the server's
        ledger shows at most the budget, and some queries (unless it is an upper bound)."""
        forms = self.cls.answer_forms
        unknown = set(forms) - set(ANSWER_FORMS)
        expect(not unknown, f"answer_forms {sorted(unknown)} are not of {ANSWER_FORMS}")
        expect("soft" in forms, "answer_forms must hold soft: every attack plays probabilities")
        threat = self.cls.threat_model
        expect(threat in THREAT_MODELS, f"threat_model {threat!r} is not of {THREAT_MODELS}")
        self.expect_budget_kept(self.theft("soft"), "soft")

    def returns_eval_substitute(self) -> None:
        """It returns a module in eval mode giving finite logits ``[N, classes]``."""
        self.expect_substitute(self.theft("soft").model)

    def plays_top_k(self) -> None:
        """Against top-3 answers it keeps its budget and returns a working substitute (unless
        its ``answer_forms`` leave top-k out)."""
        self.expect_plays("top_k")

    def plays_label_only(self) -> None:
        """Against label-only answers it keeps its budget and returns a working substitute
        (unless its ``answer_forms`` leave label-only out)."""
        self.expect_plays("label_only")

    def learns_from_victim(self) -> None:
        """A pool thief for any classifier beats twice chance on every answer form."""
        if self.cls.victim_kind is not None or not self.cls.needs_pool:
            raise NotApplicable("built for another victim family, or data-free")
        chance = 1.0 / self.arena.data.num_classes
        for oracle in self.cls.answer_forms:
            acc = accuracy_of(self.theft(oracle).model, self.arena.data)
            expect(
                acc > 2 * chance, f"{oracle} oracle: stolen accuracy {acc:.3f} (chance {chance})"
            )

    def deterministic(self) -> None:
        """The same seed against the same victim sends the same queries and gives the same
        substitute (matches replay bit for bit)."""
        first, again = self.theft("soft"), self.steal("soft")
        expect(first.used == again.used, f"used {first.used} queries, then {again.used}")
        expect(first.l1_sum == again.l1_sum, "the second run's queries differ")
        expect(first.served_by == again.served_by, "other zoo members answered the second run")
        with torch.no_grad():
            x = self.arena.data.test.x
            same = torch.equal(first.model(x), again.model(x))
        expect(same, "the two substitutes differ: draw randomness only from the rng given")

    def honours_needs_pool(self) -> None:
        """Without a pool, a pool thief raises MissingKnowledge before any query; a data-free
        attack (``needs_pool = False``) runs."""
        if self.cls.needs_pool:
            try:
                theft = self.steal("soft", pool=False)
            except MissingKnowledge:
                return
            raise AssertionError(f"needs_pool is True, yet it ran without a pool ({theft.used} q)")
        self.expect_substitute(self.steal("soft", pool=False).model)

    def expect_plays(self, oracle: str) -> None:
        if oracle not in self.cls.answer_forms:
            raise NotApplicable(f"its answer_forms leave {oracle} out")
        theft = self.theft(oracle)
        self.expect_budget_kept(theft, oracle)
        self.expect_substitute(theft.model)

    def expect_budget_kept(self, theft: Theft, oracle: str) -> None:
        expect(theft.used <= BUDGET, f"{oracle}: charged {theft.used} > budget {BUDGET}")
        expect(theft.audited <= BUDGET, f"{oracle}: ledger shows {theft.audited} > {BUDGET}")
        expect(
            theft.used > 0 or self.cls.upper_bound or self.cls.threat_model != API,
            f"{oracle}: it never queried the victim (only an upper_bound reference or a "
            "privileged threat model may not)",
        )

    def expect_substitute(self, model: object) -> None:
        expect(isinstance(model, nn.Module), f"returned {type(model).__name__}, not nn.Module")
        assert isinstance(model, nn.Module)
        expect(all(not m.training for m in model.modules()), "the substitute is in training mode")
        data = self.arena.data
        with torch.no_grad():
            logits = model(data.test.x[:37])
        shape = (37, data.num_classes)
        expect(tuple(logits.shape) == shape, f"logits {tuple(logits.shape)}, expected {shape}")
        expect(bool(torch.isfinite(logits).all()), "logits hold NaN or infinity")


def check_attack(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    bad_params: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Raise ConformanceFailure unless the registered attack ``name`` (built with ``params``:
    keep them cheap, e.g. few epochs) honours the attacker contract on digits; ``bad_params``
    adds hyperparameter sets it must refuse."""
    AttackConformance(name, params, bad_params=bad_params).check()
