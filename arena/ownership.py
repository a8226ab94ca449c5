"""Ownership verification of a stolen model: each verifier of the chain judges it on its
evidence (keys, a fingerprint, a hypothesis test)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torch import nn

from arena.defenses.base import Judgement, OwnershipEvidence
from arena.errors import VerificationFailed, one_line
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
        try:
            judgement = judge(pieces[0].merged(pieces[1:]), suspect, name)
        except VerificationFailed as exc:  # a suspect that cannot be judged is not claimed
            verdicts.append({"verifier": name, **FAILED, "failure": str(exc)})
            continue
        verdict = {k: v for k, v in asdict(judgement).items() if v is not None}
        verdicts.append({"verifier": name, **verdict})
    return verdicts


FAILED: dict[str, Any] = {"score": 0.0, "keys": 0, "verified": False}
"""the verdict on a suspect the verifier could not judge (it raised or answered NaN)"""


def judge(evidence: OwnershipEvidence, suspect: nn.Module, verifier: str) -> Judgement:
    """``evidence`` judging ``suspect``; a suspect that raises on it is a typed failure naming
    the verifier (a thief's model is untrusted code), not a bare traceback from inside it."""
    try:
        return evidence.judge(suspect)
    except VerificationFailed:
        raise
    except Exception as exc:
        raise VerificationFailed(
            f"verifier {verifier}: the suspect model failed on its evidence: "
            f"{one_line(f'{type(exc).__name__}: {exc}', 200)}"
        ) from exc
