"""What every defense promises (DESIGN §3): probability rows out, whatever comes in, built from
frozen hyperparameters that reject nonsense with InvalidParameters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from arena.data import Split
from arena.defenses.base import Choice, Defense, FloatRange, IntRange
from arena.defenses.chain import DefenseChain
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.registry import build_plugin
from arena.testing.core import Conformance, NotApplicable, expect, expect_rejected
from arena.testing.probability_rows import (
    CLASSES,
    INPUT_SHAPE,
    expect_probability_rows,
    extreme_probs,
    inputs_for,
    softmax_rows,
)
from arena.testing.shape import expect_documented, expect_frozen_dataclass, init_fields

FLAGS = (
    "preserves_argmax",
    "stateful",
    "detector",
    "needs_training",
    "builds_models",
    "answers_labels_only",
    "zoo_only",
)
NOT_A_NUMBER: tuple[Any, ...] = (float("nan"), "1", True, None)
"""values no numeric hyperparameter may accept"""


def tiny_context() -> PrepareContext:
    """A small task (256 random 1x8x8 training images and 256 public ones, 10 classes, an MLP
    victim) for defenses that train or build models in ``prepare``; nothing is cached on disk."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(256, *INPUT_SHAPE, generator=generator)
    y = torch.randint(0, CLASSES, (256,), generator=generator)
    public_x = torch.rand(256, *INPUT_SHAPE, generator=generator)
    public = Split(public_x, torch.randint(0, CLASSES, (256,), generator=generator))
    return PrepareContext("tiny", "mlp", INPUT_SHAPE, CLASSES, Split(x, y), seed=0, public=public)


def prepared(defense: Defense) -> Defense:
    """The defense after its ``prepare`` hook (if it has one), as a service would serve it."""
    if DefenseChain((defense,)).needs_preparation:
        context = tiny_context()
        defense.prepare(context.new_model(), context)
    return defense


def respond(defense: Defense, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """A prepared defense's answers to ``probs`` from a fresh caller state."""
    inputs = inputs_for(probs) if x is None else x
    return defense.respond(probs.clone(), inputs, defense.new_state())


def bad_values(space: FloatRange | IntRange | Choice) -> list[Any]:
    """Values outside a search-space entry's type that building must refuse."""
    if isinstance(space, FloatRange):
        return list(NOT_A_NUMBER)
    if isinstance(space, IntRange):
        return [*NOT_A_NUMBER, 1.5]
    return ["<not one of the options>"]


class DefenseConformance(Conformance):
    """One registered defense (with ``params``, default: its defaults) under test."""

    kind = "defense"
    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "frozen_dataclass",
        "documented",
        "search_space",
        "rejects_bad_parameters",
        "probability_rows",
        "batch_shape",
        "deterministic",
        "argmax_flag",
        "search_space_bounds",
        "works_in_chain",
    )

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(name)
        self.params = dict(params or {})

    @property
    def cls(self) -> type[Defense]:
        return DEFENSES.get(self.name)

    def defense(self) -> Defense:
        """The defense built from ``params`` and prepared, once."""
        return self.once("defense", lambda: prepared(self.build(self.params)))

    def build(self, params: Mapping[str, Any]) -> Defense:
        return build_plugin(DEFENSES, self.name, params)

    def frozen_dataclass(self) -> None:
        """A frozen dataclass of hyperparameters whose class flags are real bools."""
        expect_frozen_dataclass(self.cls, self.build(self.params), Defense)
        defense = self.build(self.params)
        expect(
            defense.params() == {f: getattr(defense, f) for f in init_fields(self.cls)},
            "params() must return every hyperparameter",
        )
        for flag in FLAGS:
            expect(isinstance(getattr(self.cls, flag), bool), f"class flag {flag} is not a bool")

    def documented(self) -> None:
        """It has a docstring of its own (`arena list` shows its first line)."""
        expect_documented(DEFENSES, self.name, Defense)

    def search_space(self) -> None:
        """Its search space is plain data over real hyperparameters (Optuna reads it)."""
        space = self.cls.search_space
        expect(isinstance(space, dict), "search_space must be a dict")
        unknown = set(space) - init_fields(self.cls)
        expect(not unknown, f"search_space names no hyperparameter {sorted(unknown)}")
        for param, entry in space.items():
            expect(
                isinstance(entry, FloatRange | IntRange | Choice),
                f"{param}: {type(entry).__name__} is not a FloatRange, IntRange or Choice",
            )
            if isinstance(entry, FloatRange):
                expect(math.isfinite(entry.low) and math.isfinite(entry.high), f"{param}: inf")
                expect(entry.low < entry.high, f"{param}: low {entry.low} >= high {entry.high}")
                expect(not entry.log or entry.low > 0, f"{param}: a log range must be > 0")
            elif isinstance(entry, IntRange):
                expect(isinstance(entry.low, int) and isinstance(entry.high, int), param)
                expect(entry.low <= entry.high, f"{param}: low {entry.low} > high {entry.high}")
            else:
                expect(len(entry.options) >= 1, f"{param}: a Choice needs options")

    def rejects_bad_parameters(self) -> None:
        """Unknown or ill-typed hyperparameters raise InvalidParameters (a config error)."""
        cases: list[dict[str, Any]] = [{"no_such_parameter": 1}]
        for param, space in self.cls.search_space.items():
            cases += [{param: value} for value in bad_values(space)]
        expect_rejected(lambda params: self.build({**self.params, **params}), cases)

    def probability_rows(self) -> None:
        """Extreme inputs (one-hot, uniform, denormals, ties) give probability rows."""
        probs = extreme_probs()
        expect_probability_rows(respond(self.defense(), probs), len(probs))

    def batch_shape(self) -> None:
        """Batches of 1, 7 and 40 rows keep their shape; a stateless defense answers a batch
        whole exactly as in two parts (it is vectorised, never mixing rows)."""
        defense = self.defense()
        for n in (1, 7, 40):
            probs = softmax_rows(n, 2.0, seed=n)
            out = respond(defense, probs)
            expect(tuple(out.shape) == (n, CLASSES), f"batch of {n} answered as {out.shape}")
        if type(defense).stateful:
            return
        probs = softmax_rows(40, 2.0, seed=5)
        x = inputs_for(probs)
        whole = respond(defense, probs, x)
        halves = torch.cat(
            [respond(defense, probs[:17], x[:17]), respond(defense, probs[17:], x[17:])]
        )
        expect(
            torch.allclose(halves, whole, atol=1e-7, rtol=0),
            "answering a batch in two parts differs from answering it whole",
        )

    def deterministic(self) -> None:
        """The same input gives the same answer, also from a second instance built and
        prepared from the same hyperparameters (randomness comes from a seed field)."""
        probs = softmax_rows(40, 2.0, seed=5)
        first = respond(self.defense(), probs)
        expect(torch.equal(respond(self.defense(), probs), first), "a repeat answer differs")
        again = respond(prepared(self.build(self.params)), probs)
        expect(torch.equal(again, first), "a second instance answers differently")

    def argmax_flag(self) -> None:
        """``preserves_argmax = True`` holds on every row with a unique argmax."""
        if not self.cls.preserves_argmax:
            raise NotApplicable("preserves_argmax is False: nothing claimed")
        probs = extreme_probs()
        top2 = probs.topk(2, dim=1).values
        strict = top2[:, 0] > top2[:, 1]
        same = respond(self.defense(), probs).argmax(dim=1) == probs.argmax(dim=1)
        moved = int((~same & strict).sum())
        expect(moved == 0, f"preserves_argmax is True but {moved} rows changed their argmax")

    def search_space_bounds(self) -> None:
        """Every end of every search-space range (and every choice) builds a working defense."""
        space = self.cls.search_space
        if not space:
            raise NotApplicable("no search space")
        probs = extreme_probs()
        for param, entry in space.items():
            values = [entry.low, entry.high] if not isinstance(entry, Choice) else entry.options
            for value in values:
                defense = prepared(self.build({**self.params, param: value}))
                try:
                    expect_probability_rows(respond(defense, probs), len(probs))
                except AssertionError as exc:
                    raise AssertionError(f"{param}={value}: {exc}") from None

    def works_in_chain(self) -> None:
        """After top-k in a chain (rows with exact zeros, as a chain hands them on) its answers
        stay probability rows, and the chain accounts for both defenses."""
        top_k = self.build_other("top_k", {"k": 3})
        chain = DefenseChain((top_k, self.defense()), ("top_k", self.name))
        probs = extreme_probs()
        out, seconds, changes = chain.respond(probs, inputs_for(probs), chain.new_states())
        expect_probability_rows(out, len(probs))
        expect(len(seconds) == len(changes) == 2, "the chain lost a defense's accounting")

    @staticmethod
    def build_other(name: str, params: Mapping[str, Any]) -> Defense:
        return build_plugin(DEFENSES, name, params)


def check_defense(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise ConformanceFailure unless the registered defense ``name`` (built with ``params``)
    honours the Defense contract; call it from your own tests."""
    DefenseConformance(name, params).check()
