"""Which matches are meaningful: the rules that keep a tournament's grid to matches that can be
played and say something (a data-free attack needs no pool, a zoo thief needs a zoo)."""

from __future__ import annotations

from arena.attacker import Attacker
from arena.defenses import DEFENSES
from arena.specs import PluginSpec, VictimSpec


def plays_pool(attack: type[Attacker], pool: str) -> bool:
    """Whether an attack has a match under a pool: data-free attacks play once (pool ``none``),
    pool thieves every granted pool but ``none``, the true-label bound only in distribution."""
    if not attack.needs_pool:
        return pool == "none"
    if attack.upper_bound:
        return pool == "in_distribution"
    return pool != "none"


def plays_victim(attack: type[Attacker], chain: tuple[PluginSpec, ...], victim: VictimSpec) -> bool:
    """Whether a match is meaningful on this victim: the model-zoo thieves and the serving-level
    defenses act on a zoo's selection, so they play zoo victims only (any other attack and
    defense plays a zoo too: it sends no targets and gets the cheapest member)."""
    if victim.is_zoo:
        return True
    zoo_only = any(DEFENSES.get(d.name).zoo_only for d in chain)
    return attack.victim_kind != VictimSpec.ZOO_ARCH and not zoo_only
