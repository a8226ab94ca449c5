"""The thief's ledger identities: their names and budgets, and its figures merged over them."""

from __future__ import annotations

from arena.service import AccountStats
from arena.specs import MatchSpec


def attacker_id(spec: MatchSpec) -> str:
    """The ledger identity of a match's attacker: unique per match, stable across reruns."""
    return f"{spec.attack.name}-{spec.key()}"


def identity_budgets(spec: MatchSpec, count: int) -> dict[str, int]:
    """The thief's ledger identities and their budgets: the match budget split evenly.

    One identity keeps the historical id (and so every earlier match key's ledger name).
    """
    base = attacker_id(spec)
    if count == 1:
        return {base: spec.budget}
    share, extra = divmod(spec.budget, count)
    return {f"{base}-id{i}": share + (i < extra) for i in range(count)}


def merged_stats(accounts: list[AccountStats]) -> AccountStats:
    """One thief's figures over all its identities; detection counts from the first flag."""
    first = accounts[0]
    if len(accounts) == 1:
        return first
    flagged = [a.detected_after for a in accounts if a.detected_after is not None]
    return AccountStats(
        budget=sum(a.budget for a in accounts),
        used=sum(a.used for a in accounts),
        batches=sum(a.batches for a in accounts),
        l1_sum=sum(a.l1_sum for a in accounts),
        kl_sum=sum(a.kl_sum for a in accounts),
        model_seconds=sum(a.model_seconds for a in accounts),
        defense_seconds=sum(a.defense_seconds for a in accounts),
        step_seconds=[sum(v) for v in zip(*(a.step_seconds for a in accounts), strict=True)],
        step_l1_sum=[sum(v) for v in zip(*(a.step_l1_sum for a in accounts), strict=True)],
        detected_after=min(flagged) if flagged else None,
        refused_batches=sum(a.refused_batches for a in accounts),
        served_by=[sum(v) for v in zip(*(a.served_by for a in accounts), strict=True)],
        targets_met=sum(a.targets_met for a in accounts),
        work_queries=sum(a.work_queries for a in accounts),
        work_bits_sum=sum(a.work_bits_sum for a in accounts),
        work_hashes_expected=sum(a.work_hashes_expected for a in accounts),
    )
