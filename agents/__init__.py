"""Attacker agents: one module per attack, each registered in :data:`ATTACKS` by name."""

from agents import (
    activethief,
    copycat,
    data_access,
    dfme,
    equation_solving,
    fingerprint,
    jbda,
    knockoff,
    model_access,
    path_finding,
    random_queries,
    retraining,
    true_labels,
    zoo_naive,
)
from arena.attacker import ATTACKS, Attacker, MissingKnowledge

__all__ = [
    "ATTACKS",
    "Attacker",
    "MissingKnowledge",
    "activethief",
    "copycat",
    "data_access",
    "dfme",
    "equation_solving",
    "fingerprint",
    "jbda",
    "knockoff",
    "model_access",
    "path_finding",
    "random_queries",
    "retraining",
    "true_labels",
    "zoo_naive",
]
