"""Attacker agents: one module per attack, each registered in :data:`ATTACKS` by name."""

from agents import copycat, knockoff
from arena.attacker import ATTACKS, Attacker, MissingKnowledge

__all__ = ["ATTACKS", "Attacker", "MissingKnowledge", "copycat", "knockoff"]
