"""No defense: the victim's probabilities as they are (the undefended baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from arena.defenses.base import Defense
from arena.defenses.registry import DEFENSES


@DEFENSES.register("none")
@dataclass(frozen=True)
class NoDefense(Defense):
    """Undefended: returns the victim's probabilities unchanged."""

    preserves_argmax = True
