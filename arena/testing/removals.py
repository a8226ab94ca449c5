"""What every watermark-removal attack promises: a changed copy of the stolen model (the original
untouched) that still classifies, the same under the same seed."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena.errors import InvalidParameters
from arena.knowledge import Knowledge
from arena.models import build_model
from arena.registry import build_plugin
from arena.removal import REMOVALS, Removal
from arena.testing.core import Conformance, expect
from arena.testing.probability_rows import CLASSES, INPUT_SHAPE
from arena.testing.shape import expect_documented, expect_frozen_dataclass


def stolen_model() -> nn.Module:
    """A seeded MLP standing in for a stolen model."""
    return build_model("mlp", INPUT_SHAPE, CLASSES, seed=0).eval()


def thief_knowledge(pool: bool = True) -> Knowledge:
    """A pool of 64 random images (or none: a data-free thief)."""
    images = torch.rand(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    return Knowledge(images if pool else None, "random", INPUT_SHAPE, CLASSES, "mlp")


class RemovalConformance(Conformance):
    """One registered removal attack (with ``params``) under test."""

    kind = "removal"
    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "frozen_dataclass",
        "documented",
        "rejects_bad_parameters",
        "leaves_original",
        "returns_classifier",
        "deterministic",
    )

    def __init__(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(name)
        self.params = dict(params or {})

    def build(self, params: Mapping[str, Any] | None = None) -> Removal:
        return build_plugin(REMOVALS, self.name, self.params if params is None else params)

    def apply(self, model: nn.Module, pool: bool = True) -> nn.Module:
        return self.build().apply(model, thief_knowledge(pool), np.random.default_rng(0))

    def frozen_dataclass(self) -> None:
        """A frozen dataclass of hyperparameters, subclassing Removal."""
        expect_frozen_dataclass(REMOVALS.get(self.name), self.build(), Removal)

    def documented(self) -> None:
        """It has a docstring of its own."""
        expect_documented(REMOVALS, self.name, Removal)

    def rejects_bad_parameters(self) -> None:
        """An unknown knob raises InvalidParameters."""
        try:
            self.build({**self.params, "no_such_knob": 1})
        except InvalidParameters:
            return
        raise AssertionError("{'no_such_knob': 1} was accepted; it must raise InvalidParameters")

    def leaves_original(self) -> None:
        """The stolen model given is not modified (the referee scores it before removal)."""
        model = stolen_model()
        before = copy.deepcopy(model.state_dict())
        self.apply(model)
        for key, value in model.state_dict().items():
            expect(torch.equal(before[key], value), f"it changed the original's {key}")

    def returns_classifier(self) -> None:
        """With a pool and without one it returns a module in eval mode giving finite logits."""
        for pool in (True, False):
            out = self.apply(stolen_model(), pool)
            expect(isinstance(out, nn.Module), f"returned {type(out).__name__}")
            expect(not out.training, "the model it returns is in training mode")
            with torch.no_grad():
                logits = out(thief_knowledge().pool[:5])  # type: ignore[index]
            expect(tuple(logits.shape) == (5, CLASSES), f"logits {tuple(logits.shape)}")
            expect(bool(torch.isfinite(logits).all()), "NaN or infinite logits")

    def deterministic(self) -> None:
        """The same seed gives the same model."""
        first, again = self.apply(stolen_model()), self.apply(stolen_model())
        x = torch.rand(8, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expect(torch.equal(first(x), again(x)), "two runs with one seed differ")


def check_removal(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise ConformanceFailure unless the registered removal attack ``name`` honours its
    contract; call it from your own tests."""
    RemovalConformance(name, params).check()
