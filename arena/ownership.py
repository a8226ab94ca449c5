"""Ownership verification of a stolen model: the chain's verifiers score it against their keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from arena.defenses.base import OwnershipKeys
from arena.specs import MatchSpec
from arena.training import accuracy, predict_probs

if TYPE_CHECKING:
    from arena.service import ServiceAPI


def verify_ownership(
    suspect: nn.Module, spec: MatchSpec, service: ServiceAPI, identities: list[str]
) -> list[dict[str, Any]]:
    """Each verifier of the chain on the suspect: top-1 agreement with its keys (a serving-side
    watermark's keys from every identity of the thief, merged) against its threshold."""
    merged: dict[int, list[OwnershipKeys]] = {}
    for identity in identities:
        for position, keys in service.ownership_keys(identity):
            merged.setdefault(position, []).append(keys)
    verdicts = []
    for position, found in sorted(merged.items()):
        x = torch.cat([k.x for k in found])
        y = torch.cat([k.y for k in found])
        score = key_agreement(suspect, x, y)
        threshold = found[0].threshold
        verdicts.append(
            {
                "verifier": spec.defenses[position].name,
                "score": score,
                "threshold": threshold,
                "keys": int(y.numel()),
                "verified": score >= threshold,
            }
        )
    return verdicts


def key_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of the keys on which ``model``'s top-1 label is the key's label."""
    with torch.no_grad():
        return accuracy(predict_probs(model, x), y) if int(y.numel()) else 0.0
