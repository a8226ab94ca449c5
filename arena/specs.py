"""Typed, hashable specs: what a victim is, which plug-in with which settings, what a match is.

Specs are pydantic models so configs validate with dotted error paths, and canonical JSON gives
stable keys: the same spec always hashes to the same key on every machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt


class Spec(BaseModel):
    """Frozen, strict-keyed base for all specs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def key(self) -> str:
        """Stable short hash of the canonical JSON form."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class PluginSpec(Spec):
    """A registered plug-in by name with its hyperparameters."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class VictimSpec(Spec):
    """A victim: dataset, architecture and training recipe. Trained deterministically from it."""

    dataset: str = "fashion_mnist"
    arch: str = "lenet5"
    epochs: PositiveInt = 15
    lr: PositiveFloat = 3e-3
    batch_size: PositiveInt = 128
    train_size: PositiveInt | None = None
    """use only the first N images of the victim split (small test victims)"""
    seed: NonNegativeInt = 0


class MatchSpec(Spec):
    """One match: a victim behind a defense chain, one attacker, one budget, one seed."""

    victim: VictimSpec
    defenses: tuple[PluginSpec, ...]
    attack: PluginSpec
    budget: PositiveInt
    seed: NonNegativeInt = 0
    pool: Literal["in_distribution"] = "in_distribution"
    """the attacker's unlabeled query pool (DESIGN §1 knowledge)"""
    substitute_arch: str | None = None
    """the thief's architecture; ``None`` means the victim's"""
