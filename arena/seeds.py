"""The random streams the referee derives for a match, named in one place, and the one way a
plug-in turns its generator into a torch seed.

Streams come from the match, never from scheduling order, so a match replays bit for bit
wherever and whenever it runs. The salts are part of every record already made: changing one
changes the removal attack's, the goodput caller's or the benign caller's draws, and so records.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

from arena.specs import MatchSpec

MatchStream = Literal["removal", "goodput", "benign", "reference"]
"""the referee's own streams besides the attacker's: the watermark-removal attack, the model
zoo's benign goodput caller, the benign caller beside a detector, the reference-recipe retrain
of the thief's transfer set"""

STREAM_SALTS: Final[dict[MatchStream, int]] = {
    "removal": 0x5E11,
    "goodput": 0x600D,
    "benign": 0xBE9167,
    "reference": 0x2EF,
}
"""XORed into the match key, so each stream is apart from the others and from the attacker's"""


BEST_RESPONSE_FIELD: Final = "best_response_trials"
"""the attack option of the thieves' inner best response (``agents._thief_recipe``): it searches
how a thief trains on the answers it holds, never what it asks, so it is left out of the
attacker's randomness and a thief with the search draws the very queries and seeds of its fixed
self (the two compare pair by pair)"""


def match_rng(spec: MatchSpec, stream: MatchStream) -> np.random.Generator:
    """The match's generator for one of the referee's streams."""
    return np.random.default_rng(int(spec.key(), 16) ^ STREAM_SALTS[stream])


def attacker_rng(spec: MatchSpec) -> np.random.Generator:
    """The attacker's randomness, derived from its identity, never from scheduling order.

    It depends on the victim, the attack, the budget and the seed but not on the defenses, the
    removal attack applied afterwards or the benign callers beside it, so every defense of a
    victim faces the same draws (common random numbers): a difference between two defenses in one
    tournament is the defenses' doing, not a luckier sample of queries, a removal attack works on
    the very model stolen without it, and benign traffic never changes what the thief does. The
    inner best response's option is left out too (:data:`BEST_RESPONSE_FIELD`).
    """
    params = {k: v for k, v in spec.attack.params.items() if k != BEST_RESPONSE_FIELD}
    attack = spec.attack.model_copy(update={"params": params})
    update = {"defenses": (), "removal": None, "benign": None, "attack": attack}
    identity = spec.model_copy(update=update).key()
    return np.random.default_rng(int(identity, 16))


def torch_seed(rng: np.random.Generator) -> int:
    """A torch seed drawn from a generator, so every run of a plug-in is a function of ``rng``."""
    return int(rng.integers(0, 2**31 - 1))
