"""A match's record (DESIGN §3, §6) and its flat form for tracking.

The record is the only thing that crosses from a match into tracking, so its MLflow shape lives
beside it: adding a field changes both in one place. Plain dicts only (the arena never imports
MLflow); ``orchestration.tracking`` wraps them in MLflow's entities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class MatchResult(BaseModel):
    """One match's flat record: the only thing that crosses into tracking."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match_key: str
    victim_key: str
    dataset: str
    victim_arch: str
    substitute_arch: str
    defense: str
    attack: str
    attack_name: str
    budget: int
    seed: int
    trusted: bool
    """True: the attacker ran as trusted in-cluster code held to the oracle by contract."""
    pool: str = "in_distribution"
    """the query pool the threat model granted (:mod:`arena.pools`)"""
    upper_bound: bool = False
    """the attack is a reference point, not a real threat model (never a strongest adversary)"""
    threat_model: str = "api"
    """what the attacker held besides the oracle (:data:`arena.knowledge.THREAT_MODELS`):
    ``api``, or a privileged ``model_access`` / ``data_access`` (never a strongest adversary)"""
    identities: int = 1
    """accounts the thief spread its budget over"""
    identities_flagged: int = 0
    """of those, how many a detector flagged"""

    victim_accuracy: float
    """undefended victim's test accuracy"""
    utility: float
    """test accuracy of the defended answers' argmax"""
    stolen_accuracy: float
    reference_stolen_accuracy: float | None = None
    """the second track: the thief's final transfer set and targets retrained with one fixed
    recipe (constant-rate Adam, :data:`arena.training.REFERENCE_RECIPE`) on the granted
    substitute architecture; tells query selection from training quality. ``None``: the thief
    trains no substitute on its answers (e.g. equation solving)"""
    thief_recipe: str = ""
    """how the thief trained its final substitute: architecture, targets, epochs, learning rate,
    batch, schedule, augmentation (JSON; empty when it fit none)"""
    fidelity: float
    """agreement of the substitute with the undefended victim on the test set"""
    queries_used: int
    perturbation_l1: float
    """mean L1 between undefended and defended answers on the attacker's queries"""
    perturbation_kl: float
    """mean KL(defended ‖ undefended) in nats on the attacker's queries"""
    test_perturbation_l1: float
    test_perturbation_kl: float
    defense_us_per_query: float
    """defense-chain time per answered attacker query, microseconds"""
    latency_ratio: float
    """(model + defense) / model time per query on the test set at batch 256"""
    attack_seconds: float
    match_seconds: float
    detected: bool = False
    """a detector in the chain flagged the attacker"""
    queries_to_detection: int | None = None
    """queries the attacker had been answered when it was flagged"""
    refused_batches: int = 0
    """attacker batches refused (uncharged) after detection"""
    benign_flagged: bool | None = None
    """a benign caller (test images in random order, as many as the budget) was flagged too;
    ``None`` when the chain has no detector"""
    benign_queries_to_detection: int | None = None
    """the earliest any benign caller was flagged (its queries answered by then)"""
    benign_callers: int = 0
    """benign callers that shared the service with the thief (:mod:`arena.benign`; 0: none)"""
    benign_callers_flagged: int = 0
    """of those, how many a detector flagged: the false positives"""
    chain_steps: str = ""
    """per defense of the chain, in order: its time per query (us) and mean L1 change (JSON)"""
    work_bits_per_query: float | None = None
    """proof of work: mean difficulty (leading zero bits) of the thief's verified solutions per
    answered query, as the service counted it; ``None`` when the chain asks for no work"""
    work_seconds_per_query: float | None = None
    """proof of work: seconds the thief spent solving puzzles per answered query, measured by
    its oracles over all its identities; ``None`` without work"""
    benign_work_seconds_per_query: float | None = None
    """the same for the benign callers together"""
    work_cost_ratio: float | None = None
    """``work_seconds_per_query`` over ``benign_work_seconds_per_query``: how much more a query
    costs the thief than an honest caller (the paper's cost ratio); ``None`` without work"""
    removal: str = "none"
    """the watermark-removal attack applied to the substitute before it was scored"""
    stolen_accuracy_before_removal: float | None = None
    ownership_verified: bool | None = None
    """some verifier of the chain claims the substitute as stolen; ``None``: no verifier"""
    ownership_score: float | None = None
    """the highest verifier score (agreement with its keys)"""
    ownership: str = ""
    """per verifier: its score, threshold, number of keys and verdict (JSON)"""
    goodput: float | None = None
    """model zoos: share of a benign workload's queries (mixed targets) answered by a member
    that meets the targets they stated; ``None`` for a single model"""
    served_by: str = ""
    """model zoos: the attacker's queries answered by each member, in member order (JSON)"""
    reference_share: float | None = None
    """model zoos: share of the attacker's queries answered by the reference member (the one
    fidelity is measured against)"""
    audit_queries: int = 0
    """queries in the victim's audit log for the thief's identities (equals ``queries_used``)"""
    audit_sha256: str = ""
    """SHA-256 of the thief's audit records (per identity, in order), so the log that backs this
    record can be checked later"""


RUN_DEPENDENT_FIELDS = frozenset(
    {
        "attack_seconds",
        "match_seconds",
        "defense_us_per_query",
        "latency_ratio",
        "chain_steps",
        "audit_sha256",
        "work_seconds_per_query",
        "benign_work_seconds_per_query",
        "work_cost_ratio",
    }
)
"""match-record fields that differ between any two runs of the same match: timings, and the
audit digest (it covers each answer's time)"""


def comparable(result: MatchResult, mode: str = "python") -> dict[str, Any]:
    """A record without its run-dependent fields: equal for two runs of one match (R1, R2)."""
    return result.model_dump(mode=mode, exclude=set(RUN_DEPENDENT_FIELDS))


RESULT_TAG_PREFIX = "result."
"""tags holding a record's text and boolean fields carry this prefix, apart from a run's others"""


def to_tracking(result: MatchResult) -> tuple[dict[str, float], dict[str, str]]:
    """The record as MLflow holds it: numbers as metrics; text and booleans as prefixed tags
    (``"true"``/``"false"``). ``None`` fields are left out: absent reads back as ``None``."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for name, value in result.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool | str):
            text = str(value).lower() if isinstance(value, bool) else value
            tags[f"{RESULT_TAG_PREFIX}{name}"] = text
        else:
            metrics[name] = float(value)
    return metrics, tags


def from_tracking(metrics: Mapping[str, float], tags: Mapping[str, str]) -> MatchResult:
    """The record back from a run's metrics and tags (other tags of the run are ignored)."""
    fields: dict[str, Any] = {
        key.removeprefix(RESULT_TAG_PREFIX): value
        for key, value in tags.items()
        if key.startswith(RESULT_TAG_PREFIX)
    }
    fields["trusted"] = fields.get("trusted") == "true"
    for name, info in MatchResult.model_fields.items():
        if name in metrics:
            value = metrics[name]
            fields[name] = int(value) if info.annotation is int else value
    return MatchResult.model_validate(fields)


def result_json(results: list[MatchResult]) -> dict[str, Any]:
    """The records of a tournament as one JSON document (its ``matches.json`` artifact)."""
    return {"matches": [json.loads(r.model_dump_json()) for r in results]}
