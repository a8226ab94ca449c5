"""What the model-zoo thieves share: an extraction attack, named by config, run through fixed
targets (:class:`~arena.oracle_adapters.TargetedOracle`) on whatever budget is left."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from arena.attacker import ATTACKS, Attacker
from arena.errors import ArenaError
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.oracle_adapters import TargetedOracle
from arena.registry import build_plugin
from arena.targets import Targets

ZOO_THIEVES = ("fingerprint", "zoo_naive")


@dataclass(frozen=True)
class ZooThief(Attacker):
    """Base of the zoo thieves: which registered attack extracts the member once targets are
    chosen, with its hyperparameters."""

    victim_kind = "zoo"

    extraction: str = "knockoff"
    """the registered extraction attack run with the chosen targets"""
    extraction_params: Mapping[str, Any] = field(default_factory=dict)
    """its hyperparameters (its own options, e.g. argmax_labels, included)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extraction in ZOO_THIEVES:
            raise ValueError(f"extraction must be a single-model attack, not {self.extraction!r}")
        if not isinstance(self.extraction_params, Mapping):
            raise ValueError(f"extraction_params must be a mapping, got {self.extraction_params!r}")
        try:
            self.extractor()
        except ArenaError as exc:
            raise ValueError(f"extraction: {exc}") from None

    def extractor(self) -> Attacker:
        return build_plugin(ATTACKS, self.extraction, dict(self.extraction_params))

    def extract(
        self, oracle: Oracle, targets: Targets, knowledge: Knowledge, rng: np.random.Generator
    ) -> nn.Module:
        """Run the extraction attack on the remaining budget, every batch sent with ``targets``."""
        return self.extractor().steal(TargetedOracle(oracle, targets), knowledge, rng)
