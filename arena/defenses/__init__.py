"""Defenses: one module per defense, each registered in :data:`DEFENSES` by name."""

from arena.defenses import (
    adaptive_misinformation,
    adversarial_watermark,
    conferrable_fingerprint,
    dataset_inference,
    dawn,
    gradient_redirection,
    high_confidence,
    ini,
    label_only,
    mad,
    none,
    prada,
    proof_of_work,
    random_noise,
    reverse_sigmoid,
    rounding,
    target_noise,
    top_k,
)
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
    "adaptive_misinformation",
    "adversarial_watermark",
    "build_chain",
    "conferrable_fingerprint",
    "dataset_inference",
    "dawn",
    "gradient_redirection",
    "high_confidence",
    "ini",
    "label_only",
    "mad",
    "none",
    "prada",
    "proof_of_work",
    "random_noise",
    "reverse_sigmoid",
    "rounding",
    "target_noise",
    "top_k",
]
