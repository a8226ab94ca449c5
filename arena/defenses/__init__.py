"""Defenses: one module per defense, each registered in :data:`DEFENSES` by name."""

from arena.defenses import label_only, none, reverse_sigmoid, rounding
from arena.defenses.base import Choice, Defense, FloatRange, IntRange, ParamSpace
from arena.defenses.chain import DefenseChain, build_chain
from arena.defenses.registry import DEFENSES

__all__ = [
    "DEFENSES",
    "Choice",
    "Defense",
    "DefenseChain",
    "FloatRange",
    "IntRange",
    "ParamSpace",
    "build_chain",
    "label_only",
    "none",
    "reverse_sigmoid",
    "rounding",
]
