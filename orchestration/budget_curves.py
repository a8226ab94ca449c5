"""Budget curves (DESIGN §6): stolen accuracy against budget, queries-to-X and amplification.

For each victim, defense and attack (pool included) played at several budgets, seeds averaged:
queries-to-X is the smallest budget whose stolen accuracy reaches X times the victim's
(undefended) accuracy; the query amplification a defense forces is its queries-to-X over the
undefended victim's (chain ``none``) for the same attack. When the defended victim never gets
there within the budgets played but the undefended one does, the amplification is only known
to be more than ``largest budget / undefended queries-to-X`` and is reported as such.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from arena.record import MatchResult
from orchestration.escaping import markdown_cell, markdown_rows
from orchestration.leaderboard import attack_label


@dataclass(frozen=True)
class BudgetCurve:
    """One defense × attack curve and what it implies."""

    victim_key: str
    defense: str
    attack: str
    victim_accuracy: float
    budgets: list[int]
    stolen: list[float]
    """mean stolen accuracy at each budget"""
    target: float
    """X × victim accuracy"""
    queries_to_x: int | None
    """smallest budget reaching ``target``; ``None``: not within the budgets played"""
    amplification: float | None = None
    """defended / undefended queries-to-X"""
    amplification_at_least: float | None = None
    """lower bound when only the undefended victim reached the target"""


def budget_curves(results: list[MatchResult], fraction: float = 0.9) -> list[BudgetCurve]:
    """Curves of every (victim, defense, attack) played at two or more budgets."""
    cells: dict[tuple[str, str, str], dict[int, list[MatchResult]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in results:
        cells[(r.victim_key, r.defense, attack_label(r))][r.budget].append(r)
    curves: dict[tuple[str, str, str], BudgetCurve] = {}
    for key, by_budget in cells.items():
        if len(by_budget) < 2:
            continue
        budgets = sorted(by_budget)
        stolen = [statistics.fmean(r.stolen_accuracy for r in by_budget[b]) for b in budgets]
        accuracy = statistics.fmean(r.victim_accuracy for b in budgets for r in by_budget[b])
        target = fraction * accuracy
        reached = next((b for b, s in zip(budgets, stolen, strict=True) if s >= target), None)
        curves[key] = BudgetCurve(
            key[0], key[1], key[2], accuracy, budgets, stolen, target, reached
        )
    return [
        _with_amplification(c, curves.get((c.victim_key, "none", c.attack)))
        for c in curves.values()
    ]


def _with_amplification(curve: BudgetCurve, undefended: BudgetCurve | None) -> BudgetCurve:
    if undefended is None or undefended.queries_to_x is None or curve.defense == "none":
        return curve
    if curve.queries_to_x is not None:
        ratio = curve.queries_to_x / undefended.queries_to_x
        return BudgetCurve(**{**asdict(curve), "amplification": ratio})
    bound = max(curve.budgets) / undefended.queries_to_x
    return BudgetCurve(**{**asdict(curve), "amplification_at_least": bound})


def _amplification_cell(curve: BudgetCurve) -> str:
    if curve.amplification is not None:
        return f"{curve.amplification:.2f}×"
    if curve.amplification_at_least is not None:
        return f"> {curve.amplification_at_least:.2f}×"
    return "—"


def curves_markdown(curves: list[BudgetCurve], fraction: float) -> str:
    """The curves as a Markdown table: stolen accuracy per budget, queries-to-X, amplification."""
    budgets = sorted({b for c in curves for b in c.budgets})
    header = ["defense", "attack", *[f"@{b}" for b in budgets], f"queries to {fraction:g}×"]
    header.append("amplification")
    rows = []
    for c in sorted(curves, key=lambda c: (c.victim_key, c.defense != "none", c.defense, c.attack)):
        by_budget = dict(zip(c.budgets, c.stolen, strict=True))
        row = [
            markdown_cell(c.defense),
            markdown_cell(c.attack),
            *[f"{by_budget[b]:.4f}" if b in by_budget else "—" for b in budgets],
            str(c.queries_to_x) if c.queries_to_x is not None else f"> {max(c.budgets)}",
            _amplification_cell(c),
        ]
        rows.append(row)
    return "\n".join(markdown_rows(header, rows)) + "\n"


def curves_dict(curves: list[BudgetCurve], fraction: float) -> dict[str, Any]:
    return {"fraction": fraction, "curves": [asdict(c) for c in curves]}


def curve_metrics(curves: list[BudgetCurve]) -> dict[str, float]:
    """MLflow metrics per defense and attack (names restricted to MLflow's character set)."""
    metrics: dict[str, float] = {}
    for c in curves:
        name = _metric_name(f"{c.defense}.{c.attack}")
        if c.queries_to_x is not None:
            metrics[f"queries_to_x.{name}"] = c.queries_to_x
        if c.amplification is not None:
            metrics[f"amplification.{name}"] = c.amplification
        elif c.amplification_at_least is not None:
            metrics[f"amplification_at_least.{name}"] = c.amplification_at_least
    return metrics


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", text).strip("_")
