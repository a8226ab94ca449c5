"""Ownership verification of a stolen model: each verifier of the chain judges it on its
evidence (keys, a fingerprint, a hypothesis test)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torch import nn

from arena.defenses.base import Judgement, OwnershipEvidence
from arena.errors import ArenaError, SuspectFailed, one_line
from arena.specs import MatchSpec

if TYPE_CHECKING:
    from arena.service import ServiceAPI


def verify_ownership(
    suspect: nn.Module, spec: MatchSpec, service: ServiceAPI, identities: list[str]
) -> list[dict[str, Any]]:
    """Each verifier of the chain on the suspect, its evidence merged over every identity of
    the thief (a serving-side watermark marks each identity's queries apart)."""
    found: dict[int, list[OwnershipEvidence]] = {}
    for identity in identities:
        for position, evidence in service.ownership_keys(identity):
            found.setdefault(position, []).append(evidence)
    verdicts = []
    for position, pieces in sorted(found.items()):
        name = spec.defenses[position].name
        judgement = judge(pieces[0].merged(pieces[1:]), suspect, name)
        verdict = {k: v for k, v in asdict(judgement).items() if v is not None}
        verdicts.append({"verifier": name, **verdict})
    return verdicts


def judge(evidence: OwnershipEvidence, suspect: nn.Module, verifier: str) -> Judgement:
    """``evidence`` judging ``suspect``; a suspect that raises on it is a typed failure naming
    the verifier, not a bare traceback from inside the model."""
    try:
        return evidence.judge(suspect)
    except ArenaError:
        raise
    except Exception as exc:
        raise SuspectFailed(
            f"verifier {verifier}: the suspect model failed on its evidence: "
            f"{one_line(f'{type(exc).__name__}: {exc}', 200)}"
        ) from exc
