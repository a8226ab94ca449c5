"""The referee: plays one match and returns its flat, typed record (DESIGN §3, §6).

``play_match`` runs everything in this process. ``referee_match`` is the shared core: it accepts
any object with the victim-service interface, so ``orchestration`` can pass a Ray actor proxy and
get the same record. Attackers are built by name from :data:`arena.attacker.ATTACKS` (import
``agents`` to register the built-in attacks).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.attacker import ATTACKS, Attacker
from arena.benign import BenignRun, benign_traffic
from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.goodput import zoo_goodput
from arena.identities import identity_budgets, merged_stats
from arena.knowledge import MODEL_ACCESS, Knowledge
from arena.ledger import AuditDigest
from arena.match_data import MatchData
from arena.metrics import agreement, kl_divergence, l1_distance
from arena.oracle import Oracle
from arena.oracle_adapters import MultiAccountOracle
from arena.ownership import verify_ownership
from arena.pool_source import pool_dataset
from arena.record import MatchResult
from arena.registry import build_plugin, plugin_label
from arena.removal import REMOVALS
from arena.seeds import attacker_rng, match_rng, torch_seed
from arena.service import AccountStats, ServiceAPI
from arena.service_factory import build_service
from arena.specs import MatchSpec
from arena.training import REFERENCE_RECIPE, accuracy, predict_probs
from arena.zoo import ZooProfile


def referee_match(
    spec: MatchSpec,
    service: ServiceAPI,
    data: MatchData,
    *,
    trusted: bool = True,
    device: str = "cpu",
    mixed_precision: bool = False,
    keep_substitute: Callable[[nn.Module], None] | None = None,
) -> MatchResult:
    """Open the attacker's accounts, let it steal, then score the substitute and the defense.

    ``device`` (:func:`arena.devices.choose_device`) and ``mixed_precision`` reach the thief
    through its :class:`~arena.knowledge.Knowledge`; the substitute is scored where it lives
    (:func:`~arena.training.predict_probs` follows the model), the victim where it is served.
    ``keep_substitute`` is handed the substitute exactly as scored (after any removal), for a
    caller that logs it; the record itself stays flat."""
    started = time.perf_counter()
    attacker = build_plugin(ATTACKS, spec.attack.name, spec.attack.params)
    chain = build_chain(spec.defenses)
    _check_pool(spec, data)
    identities = _open_thief_accounts(spec, service, attacker.identities)
    profile = service.zoo_profile()
    knowledge = grant_knowledge(spec, data, attacker, profile, service)
    knowledge = replace(knowledge, device=device, mixed_precision=mixed_precision)
    oracle = _thief_oracle(service, identities)
    theft = _steal(spec, attacker, oracle, knowledge)
    reference_accuracy = _reference_track(spec, knowledge, data)
    theft = _remove_watermark(spec, theft, knowledge, data)
    verdicts = verify_ownership(theft.substitute, spec, service, list(identities))
    test = _score_on_test_set(theft.substitute, service, data)
    # per-account detectors and work judge each caller alone: the benign callers may follow
    benign = (
        benign_traffic(spec, service, data, test.victim_probs)
        if chain.has_detector or chain.requires_work
        else None
    )
    work = _work_costs(oracle, benign) if chain.requires_work else None
    if keep_substitute is not None:
        keep_substitute(theft.substitute)
    accounts = _read_thief_accounts(service, identities)
    goodput = zoo_goodput(spec, service, data, profile) if profile is not None else None
    return _record(
        spec,
        trusted=trusted,
        attacker=attacker,
        defense=chain.label,
        substitute_arch=knowledge.substitute_arch,
        theft=theft,
        reference_accuracy=reference_accuracy,
        verdicts=verdicts,
        test=test,
        accounts=accounts,
        benign=[b.stats for b in benign] if benign is not None and chain.has_detector else None,
        work=work,
        profile=profile,
        goodput=goodput,
        started=started,
    )


@dataclass(frozen=True)
class _Theft:
    """The thief's model as it will be scored, and what it took to get it."""

    substitute: nn.Module
    attack_seconds: float
    recipe: str = ""
    """how the thief trained its final substitute (JSON of its last fit; empty: it never fit)"""
    removal: str = "none"
    """label of the watermark-removal attack applied to the stolen model"""
    stolen_accuracy_before_removal: float | None = None


@dataclass(frozen=True)
class _TestSet:
    """The victim and the substitute on the test set: the record's test-set figures."""

    victim_accuracy: float
    utility: float
    stolen_accuracy: float
    fidelity: float
    test_perturbation_l1: float
    test_perturbation_kl: float
    latency_ratio: float
    victim_probs: torch.Tensor
    """the undefended victim's probabilities on the test set (for the benign callers)"""


@dataclass(frozen=True)
class _WorkCosts:
    """Proof of work: client-measured seconds per answered query, thief and benign caller."""

    thief: float
    benign: float | None

    @property
    def ratio(self) -> float | None:
        if self.benign is None or self.benign <= 0:
            return None
        return self.thief / self.benign


def _work_costs(oracle: Oracle, benign: list[BenignRun] | None) -> _WorkCosts:
    """Solving time over the queries answered (each client's own measurement): the thief's, and
    the benign callers' together."""
    thief = oracle.work_seconds / max(oracle.used, 1)
    if not benign:
        return _WorkCosts(thief, None)
    answered = sum(b.stats.used for b in benign)
    return _WorkCosts(thief, sum(b.work_seconds for b in benign) / max(answered, 1))


@dataclass(frozen=True)
class _ThiefAccounts:
    """The thief's accounts as the service kept them: per identity, merged, and audited."""

    per_identity: list[AccountStats]
    merged: AccountStats
    audits: list[AuditDigest]


def _check_pool(spec: MatchSpec, data: MatchData) -> None:
    """The match data must hold the pool the match's threat model grants."""
    if data.pool_name != spec.pool:
        raise ValueError(f"match wants the {spec.pool} pool, the data holds {data.pool_name}")


def _open_thief_accounts(spec: MatchSpec, service: ServiceAPI, count: int) -> dict[str, int]:
    """Open an account per identity of the thief, the match budget split between them."""
    identities = identity_budgets(spec, count)
    for identity, budget in identities.items():
        service.open_account(identity, budget)
    return identities


def grant_knowledge(
    spec: MatchSpec,
    data: MatchData,
    attacker: Attacker,
    profile: ZooProfile | None,
    service: ServiceAPI,
) -> Knowledge:
    """What the threat model grants the thief besides the oracle: true pool labels only to an
    upper-bound baseline, the victim's training split only to ``data_access``, a copy of the
    served victim (from the service, wherever it runs) only to ``model_access``."""
    substitute_arch = spec.substitute_arch or default_substitute_arch(spec, profile)
    kind = type(attacker)
    knowledge = data.knowledge(substitute_arch, kind.upper_bound, kind.threat_model)
    if kind.threat_model == MODEL_ACCESS:
        knowledge = replace(knowledge, victim_copy=service.served_copy())
    return knowledge


def _thief_oracle(service: ServiceAPI, identities: dict[str, int]) -> Oracle:
    """One oracle over all the thief's identities (a plain one when it has a single identity)."""
    oracles = [Oracle(service, identity) for identity in identities]
    return oracles[0] if len(oracles) == 1 else MultiAccountOracle(oracles)


def _steal(spec: MatchSpec, attacker: Attacker, oracle: Oracle, knowledge: Knowledge) -> _Theft:
    """Let the attacker steal with its own randomness, timed."""
    attack_start = time.perf_counter()
    substitute = attacker.steal(oracle, knowledge, attacker_rng(spec))
    seconds = time.perf_counter() - attack_start
    recipe = json.dumps(knowledge.fits[-1].describe()) if knowledge.fits else ""
    return _Theft(substitute, seconds, recipe)


def _reference_track(spec: MatchSpec, knowledge: Knowledge, data: MatchData) -> float | None:
    """The second track: the thief's final transfer set and targets, retrained from scratch on
    the granted substitute architecture with the fixed :data:`REFERENCE_RECIPE`, scored on the
    test set. ``None`` when the thief never fit a substitute with the cross-entropy."""
    if not knowledge.fits or knowledge.fits[-1].own_loss:
        return None
    last = knowledge.fits[-1]
    seed = torch_seed(match_rng(spec, "reference"))
    model = knowledge.make_substitute(seed)
    model = knowledge.fit(
        model, last.x, last.targets, REFERENCE_RECIPE, seed=seed, targets_form=last.targets_form
    )
    return accuracy(predict_probs(model, data.test_x), data.test_y)


def _remove_watermark(
    spec: MatchSpec, theft: _Theft, knowledge: Knowledge, data: MatchData
) -> _Theft:
    """Put the stolen model through the match's removal attack, if any, noting its accuracy
    before."""
    if spec.removal is None:
        return theft
    before_removal = accuracy(predict_probs(theft.substitute, data.test_x), data.test_y)
    remover = build_plugin(REMOVALS, spec.removal.name, spec.removal.params)
    removal_rng = match_rng(spec, "removal")
    return _Theft(
        substitute=remover.apply(theft.substitute, knowledge, removal_rng),
        attack_seconds=theft.attack_seconds,
        recipe=theft.recipe,
        removal=plugin_label(spec.removal.name, remover),
        stolen_accuracy_before_removal=before_removal,
    )


def _score_on_test_set(substitute: nn.Module, service: ServiceAPI, data: MatchData) -> _TestSet:
    """The victim's reference answers (undefended and defended) and the substitute's predictions
    on the test set, scored."""
    reference = service.reference_outputs(data.test_x)
    undefended = torch.tensor(reference.undefended)
    defended = torch.tensor(reference.defended)
    stolen = predict_probs(substitute, data.test_x)
    return _TestSet(
        victim_accuracy=accuracy(undefended, data.test_y),
        utility=accuracy(defended, data.test_y),
        stolen_accuracy=accuracy(stolen, data.test_y),
        fidelity=agreement(stolen, undefended),
        test_perturbation_l1=float(l1_distance(undefended, defended).mean()),
        test_perturbation_kl=float(kl_divergence(defended, undefended).mean()),
        latency_ratio=(reference.model_seconds + reference.defense_seconds)
        / max(reference.model_seconds, 1e-12),
        victim_probs=undefended,
    )


def _read_thief_accounts(service: ServiceAPI, identities: dict[str, int]) -> _ThiefAccounts:
    """The thief's figures and audit digests from the service, per identity and merged."""
    per_identity = [service.account_stats(identity) for identity in identities]
    merged = merged_stats(per_identity)
    audits = [service.audit(identity) for identity in identities]
    return _ThiefAccounts(per_identity, merged, audits)


def _chain_steps(spec: MatchSpec, stats: AccountStats) -> str:
    """Per defense of the chain, in order: its time and mean L1 change per answered query."""
    used = max(stats.used, 1)
    steps = [
        {"defense": s.name, "us_per_query": 1e6 * sec / used, "l1_per_query": l1 / used}
        for s, sec, l1 in zip(spec.defenses, stats.step_seconds, stats.step_l1_sum, strict=True)
    ]
    return json.dumps(steps)


def _record(
    spec: MatchSpec,
    *,
    trusted: bool,
    attacker: Attacker,
    defense: str,
    substitute_arch: str,
    theft: _Theft,
    reference_accuracy: float | None,
    verdicts: list[dict[str, Any]],
    test: _TestSet,
    accounts: _ThiefAccounts,
    benign: list[AccountStats] | None,
    work: _WorkCosts | None,
    profile: ZooProfile | None,
    goodput: float | None,
    started: float,
) -> MatchResult:
    """The match's flat record from what its steps found."""
    stats = accounts.merged
    used = max(stats.used, 1)
    audits = accounts.audits
    return MatchResult(
        match_key=spec.key(),
        victim_key=spec.victim.key(),
        dataset=spec.victim.dataset,
        victim_arch=spec.victim.arch,
        substitute_arch=substitute_arch,
        defense=defense,
        attack=plugin_label(spec.attack.name, attacker),
        attack_name=spec.attack.name,
        budget=spec.budget,
        seed=spec.seed,
        trusted=trusted,
        pool=spec.pool,
        upper_bound=type(attacker).upper_bound,
        threat_model=type(attacker).threat_model,
        identities=len(accounts.per_identity),
        identities_flagged=sum(s.detected_after is not None for s in accounts.per_identity),
        victim_accuracy=test.victim_accuracy,
        utility=test.utility,
        stolen_accuracy=test.stolen_accuracy,
        reference_stolen_accuracy=reference_accuracy,
        thief_recipe=theft.recipe,
        fidelity=test.fidelity,
        queries_used=stats.used,
        perturbation_l1=stats.l1_sum / used,
        perturbation_kl=stats.kl_sum / used,
        test_perturbation_l1=test.test_perturbation_l1,
        test_perturbation_kl=test.test_perturbation_kl,
        defense_us_per_query=1e6 * stats.defense_seconds / used,
        latency_ratio=test.latency_ratio,
        attack_seconds=theft.attack_seconds,
        match_seconds=time.perf_counter() - started,
        detected=stats.detected_after is not None,
        queries_to_detection=stats.detected_after,
        refused_batches=stats.refused_batches,
        **_benign_fields(benign),
        chain_steps=_chain_steps(spec, stats),
        work_bits_per_query=None if work is None else stats.work_bits_sum / used,
        work_seconds_per_query=None if work is None else work.thief,
        benign_work_seconds_per_query=None if work is None else work.benign,
        work_cost_ratio=None if work is None else work.ratio,
        removal=theft.removal,
        stolen_accuracy_before_removal=theft.stolen_accuracy_before_removal,
        ownership_verified=any(v["verified"] for v in verdicts) if verdicts else None,
        ownership_score=max(v["score"] for v in verdicts) if verdicts else None,
        ownership=json.dumps(verdicts) if verdicts else "",
        goodput=goodput,
        served_by=json.dumps(stats.served_by) if profile is not None else "",
        reference_share=None if profile is None else stats.served_by[profile.reference] / used,
        audit_queries=sum(a.queries for a in audits),
        audit_sha256=hashlib.sha256(" ".join(a.sha256 for a in audits).encode()).hexdigest(),
    )


def _benign_fields(benign: list[AccountStats] | None) -> dict[str, Any]:
    """The record's benign-traffic fields: how many callers, how many of them were flagged,
    whether any was, and the earliest flag (``None`` fields when no caller played)."""
    if benign is None:
        return {"benign_flagged": None, "benign_queries_to_detection": None}
    flags = [s.detected_after for s in benign if s.detected_after is not None]
    return {
        "benign_callers": len(benign),
        "benign_callers_flagged": len(flags),
        "benign_flagged": bool(flags),
        "benign_queries_to_detection": min(flags) if flags else None,
    }


def default_substitute_arch(spec: MatchSpec, profile: ZooProfile | None) -> str:
    """The thief's architecture when the config names none: the victim's own, and for a model
    zoo the reference member's (the model the thief is after)."""
    members = spec.victim.members
    if profile is None or members is None:
        return spec.victim.arch
    return members[profile.reference].arch


def play_match(
    spec: MatchSpec, data: DataSplits | None = None, cache_dir: Path | None = None
) -> MatchResult:
    """Play one match entirely in this process (tests, notebooks, debugging)."""
    data = data or load_dataset(spec.victim.dataset)
    source = None if (other := pool_dataset(spec.pool)) is None else load_dataset(other)
    threat_model = ATTACKS.get(spec.attack.name).threat_model
    granted = MatchData.from_splits(data, spec.pool, source, threat_model)
    service = build_service(spec.victim, spec.defenses, data, cache_dir)
    return referee_match(spec, service, granted)
