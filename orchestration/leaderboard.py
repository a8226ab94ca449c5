"""The leaderboard: each defended victim ranked by its strongest adversary (DESIGN §1, §6).

Seeds are averaged first (per defense, attack, pool and budget); the strongest adversary is then
the attack, pool and budget with the highest mean stolen accuracy (:mod:`arena.strongest`);
protection = 1 - that accuracy. Upper-bound baselines (true labels: not a threat model) and
privileged threat models (``model_access``, ``data_access``: the thief holds the victim's weights
or its training split) are shown beside it, never counted as it.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from arena.knowledge import API
from arena.protection_axes import Axis, ProtectionAxes, protection_axes
from arena.record import MatchResult
from arena.strongest import strongest, threats
from orchestration.escaping import markdown_cell, markdown_rows, plot_text


@dataclass(frozen=True)
class LeaderboardRow:
    """One defended victim's standing."""

    rank: int
    victim: str
    defense: str
    victim_accuracy: float
    utility: float
    strongest_attack: str
    strongest_budget: int
    stolen_accuracy: float
    stolen_std: float
    fidelity: float
    protection: float
    perturbation_kl: float
    latency_ratio: float
    stolen_by_budget: dict[int, float]
    matches: int
    detected: int | None = None
    """matches whose attacker a detector flagged (``None``: the chain has no detector)"""
    benign_flagged: int | None = None
    """matches whose benign caller was flagged too (false positives)"""
    upper_bound_accuracy: float | None = None
    """best stolen accuracy of an upper-bound baseline (true labels), for scale"""
    privileged_accuracy: dict[str, float] = field(default_factory=dict)
    """per privileged threat model played (``model_access``, ``data_access``): its best stolen
    accuracy, for scale (never the strongest adversary)"""
    goodput: float | None = None
    """model zoos: mean share of benign requests served within their targets"""
    ownership_verified: int | None = None
    """matches whose stolen model a verifier of the chain claimed (``None``: no verifier)"""
    strongest_recipe: str = ""
    """how the strongest attack trained its final substitute, briefly (its seeds' most common
    ``thief_recipe``; an inner best response's choice); empty when it fit none"""
    axes: ProtectionAxes | None = None
    """prevention, detection, attribution and cost, each against its own strongest adversary
    (:mod:`arena.protection_axes`)"""


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


POOL_TAGS = {"in_distribution": "", "out_of_distribution": " [ood pool]", "none": " [no pool]"}


def attack_label(result: MatchResult) -> str:
    """The attack as ranked: its label, tagged with the pool unless it is in distribution, with
    its threat model unless that is the API's, and with the watermark removal its model went
    through, if any (a removal is part of the adversary: its matches are never averaged with
    those of the model as stolen)."""
    threat = "" if result.threat_model == API else f" [{result.threat_model}]"
    removal = "" if result.removal == "none" else f" [{result.removal}]"
    return result.attack + POOL_TAGS.get(result.pool, f" [{result.pool}]") + threat + removal


def recipe_brief(thief_recipe: str) -> str:
    """A match's ``thief_recipe`` JSON in a few words: targets, epochs, rate, augmentation,
    architecture (``soft, 125 ep, lr 1e-3, lenet5``); empty for none or an unreadable one."""
    try:
        recipe = json.loads(thief_recipe) if thief_recipe else {}
    except json.JSONDecodeError:
        return ""
    if not isinstance(recipe, dict) or not recipe:
        return ""
    parts = [
        str(recipe.get("targets", "?")),
        f"{recipe.get('epochs', '?')} ep",
        f"lr {_short_rate(recipe.get('lr'))}",
        *([f"shift {shift}"] if (shift := recipe.get("shift_pixels")) else []),
        str(recipe.get("arch", "?")),
    ]
    return ", ".join(parts)


def _short_rate(lr: object) -> str:
    """``0.001`` as ``1e-3``, ``0.0015`` as ``1.5e-3``."""
    if not isinstance(lr, int | float):
        return "?"
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _common_recipe(results: tuple[MatchResult, ...]) -> str:
    """The recipe most of an attack's seeds trained with, briefly (the first seen on a tie)."""
    counts = Counter(recipe_brief(r.thief_recipe) for r in results)
    return counts.most_common(1)[0][0] if counts else ""


def build_leaderboard(results: list[MatchResult]) -> list[LeaderboardRow]:
    """Rank defenses: highest protection first, utility breaking ties."""
    by_defense: dict[tuple[str, str], list[MatchResult]] = defaultdict(list)
    for r in results:
        by_defense[(r.victim_key, r.defense)].append(r)

    rows: list[LeaderboardRow] = []
    for (victim_key, defense), group in by_defense.items():
        bounds = [r.stolen_accuracy for r in group if r.upper_bound]
        cells = threats(group, attack_label)
        top = strongest(cells)
        by_budget: dict[int, float] = {}
        for cell in cells:
            by_budget[cell.budget] = max(by_budget.get(cell.budget, 0.0), cell.stolen_accuracy)
        first = group[0]
        rows.append(
            LeaderboardRow(
                rank=0,
                victim=f"{first.dataset}/{first.victim_arch}",
                defense=defense,
                victim_accuracy=_mean([r.victim_accuracy for r in group]),
                utility=_mean([r.utility for r in group]),
                strongest_attack=top.attack,
                strongest_budget=top.budget,
                strongest_recipe=_common_recipe(top.results),
                stolen_accuracy=top.stolen_accuracy,
                stolen_std=statistics.pstdev([r.stolen_accuracy for r in top.results]),
                fidelity=_mean([r.fidelity for r in top.results]),
                protection=1.0 - top.stolen_accuracy,
                perturbation_kl=_mean([r.perturbation_kl for r in group]),
                latency_ratio=_mean([r.latency_ratio for r in group]),
                stolen_by_budget=dict(sorted(by_budget.items())),
                matches=len(group),
                **_detection_counts(group),
                upper_bound_accuracy=max(bounds) if bounds else None,
                privileged_accuracy=_privileged_accuracy(group),
                ownership_verified=_verified_count(group),
                goodput=_mean(zoo)
                if (zoo := [r.goodput for r in group if r.goodput is not None])
                else None,
                axes=protection_axes(
                    group, attack_label, _undefended_stolen(by_defense, victim_key)
                ),
            )
        )
    rows.sort(key=lambda row: (-row.protection, -row.utility, row.defense))
    return [replace(row, rank=i + 1) for i, row in enumerate(rows)]


UNDEFENDED = "none"
"""the chain label of the undefended victim, which prevention is judged against"""


def _undefended_stolen(
    by_defense: dict[tuple[str, str], list[MatchResult]], victim_key: str
) -> float | None:
    """The strongest thief's stolen accuracy against ``victim_key`` undefended, if played."""
    undefended = by_defense.get((victim_key, UNDEFENDED))
    return strongest(threats(undefended, attack_label)).stolen_accuracy if undefended else None


def _privileged_accuracy(group: list[MatchResult]) -> dict[str, float]:
    """Best stolen accuracy per privileged threat model among ``group``'s matches (seeds
    averaged per attack and budget first, as the strongest adversary's are)."""
    best: dict[str, float] = {}
    for threat in sorted({r.threat_model for r in group} - {API}):
        played = [r for r in group if r.threat_model == threat and not r.upper_bound]
        best[threat] = max(t.stolen_accuracy for t in threats(played, attack_label))
    return best


def _privileged_cell(row: LeaderboardRow) -> str:
    return ", ".join(f"{t} {a:.4f}" for t, a in row.privileged_accuracy.items()) or "—"


def _verified_count(group: list[MatchResult]) -> int | None:
    checked = [r for r in group if r.ownership_verified is not None]
    return sum(bool(r.ownership_verified) for r in checked) if checked else None


def _detection_counts(group: list[MatchResult]) -> dict[str, int | None]:
    watched = [r for r in group if r.benign_flagged is not None]
    if not watched:
        return {"detected": None, "benign_flagged": None}
    return {
        "detected": sum(r.detected for r in watched),
        "benign_flagged": sum(bool(r.benign_flagged) for r in watched),
    }


def _detection_cell(row: LeaderboardRow) -> str:
    if row.detected is None:
        return "—"
    return f"{row.detected}/{row.matches} (benign {row.benign_flagged}/{row.matches})"


def _verified_cell(row: LeaderboardRow) -> str:
    return "—" if row.ownership_verified is None else f"{row.ownership_verified}/{row.matches}"


def _attack_cell(row: LeaderboardRow) -> str:
    recipe = f" ({row.strongest_recipe})" if row.strongest_recipe else ""
    return f"{row.strongest_attack}{recipe} @{row.strongest_budget}"


def _optional(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _budgets(rows: list[LeaderboardRow]) -> list[int]:
    return sorted({b for row in rows for b in row.stolen_by_budget})


def _grid(rows: list[LeaderboardRow], with_victim: bool) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the terminal and Markdown tables."""
    budgets = _budgets(rows)
    detectors = any(row.detected is not None for row in rows)
    zoos = any(row.goodput is not None for row in rows)
    verifiers = any(row.ownership_verified is not None for row in rows)
    privileged = any(row.privileged_accuracy for row in rows)
    header = [
        "#",
        *(["victim"] if with_victim else []),
        "defense",
        "utility",
        *(["goodput"] if zoos else []),
        "undefended",
        "strongest attack",
        "stolen acc",
        "fidelity",
        "protection",
        *[f"stolen@{b}" for b in budgets],
        "KL nats",
        "latency×",
        *(["detected"] if detectors else []),
        *(["ownership verified"] if verifiers else []),
        *(["privileged threat models"] if privileged else []),
    ]
    cells = [
        [
            str(row.rank),
            *([row.victim] if with_victim else []),
            row.defense,
            f"{row.utility:.4f}",
            *([_optional(row.goodput)] if zoos else []),
            f"{row.victim_accuracy:.4f}",
            _attack_cell(row),
            f"{row.stolen_accuracy:.4f} ± {row.stolen_std:.4f}",
            f"{row.fidelity:.4f}",
            f"{row.protection:.4f}",
            *[
                f"{row.stolen_by_budget[b]:.4f}" if b in row.stolen_by_budget else "—"
                for b in budgets
            ],
            f"{row.perturbation_kl:.3f}",
            f"{row.latency_ratio:.2f}",
            *([_detection_cell(row)] if detectors else []),
            *([_verified_cell(row)] if verifiers else []),
            *([_privileged_cell(row)] if privileged else []),
        ]
        for row in rows
    ]
    return header, cells


def rich_table(rows: list[LeaderboardRow], title: str) -> Table:
    """The leaderboard as a terminal table (the victim as caption when there is only one)."""
    return _rich(rows, title, _grid)


def _rich(
    rows: list[LeaderboardRow],
    title: str,
    grid: Callable[[list[LeaderboardRow], bool], tuple[list[str], list[list[str]]]],
) -> Table:
    victims = {row.victim for row in rows}
    caption = f"victim {next(iter(victims))}" if len(victims) == 1 else None
    table = Table(title=title, caption=caption, header_style="bold")
    header, cells = grid(rows, caption is None)
    for name in header:
        left = name in ("victim", "defense", "strongest attack", *AXES)
        table.add_column(name, justify="left" if left else "right")
    for line in cells:
        table.add_row(*(escape(cell) for cell in line))  # '[ood pool]' is not markup
    return table


AXES = ("prevention", "detection", "attribution", "cost", "protects on")
"""the four axes' columns and the summary (:mod:`arena.protection_axes`)"""


def has_more_axes(rows: list[LeaderboardRow]) -> bool:
    """Whether any defense was measured on an axis besides prevention (a detector, a verifier
    or a proof of work in its chain): only then is the axes table worth showing."""
    return any(
        axis.value is not None
        for row in rows
        if row.axes is not None
        for axis in (row.axes.detection, row.axes.attribution, row.axes.cost)
    )


def _axis_cell(axis: Axis, number: str) -> str:
    if axis.value is None:
        return "—"
    note = f"; {axis.note}" if axis.note else ""
    return f"{number.format(axis.value)} vs {axis.adversary}{note}"


def _axes_grid(rows: list[LeaderboardRow], with_victim: bool) -> tuple[list[str], list[list[str]]]:
    """Per defense: its utility loss, each axis against its strongest adversary, and the axes
    it protects on."""
    header = ["#", *(["victim"] if with_victim else []), "defense", "utility loss (pts)", *AXES]
    cells = []
    for row in rows:
        axes = row.axes
        if axes is None:
            continue
        cells.append(
            [
                str(row.rank),
                *([row.victim] if with_victim else []),
                row.defense,
                f"{utility_loss_points(row):.2f}",
                _axis_cell(axes.prevention, "{:.4f}"),
                _axis_cell(axes.detection, "TPR {:.2f}"),
                _axis_cell(axes.attribution, "claimed {:.2f}"),
                _axis_cell(axes.cost, "{:.1f}×"),
                ", ".join(axes.protects_on()) or "none",
            ]
        )
    return header, cells


def axes_rich_table(rows: list[LeaderboardRow], title: str) -> Table:
    """The four axes as a terminal table."""
    return _rich(rows, title, _axes_grid)


def axes_markdown(rows: list[LeaderboardRow]) -> str:
    """The four axes as Markdown (the ``leaderboard_axes.md`` artifact)."""
    header, cells = _axes_grid(rows, True)
    return "\n".join(markdown_rows(header, (map(markdown_cell, line) for line in cells))) + "\n"


def markdown_table(rows: list[LeaderboardRow]) -> str:
    """The leaderboard as Markdown (logged to MLflow and pasted into docs)."""
    header, cells = _grid(rows, True)
    return "\n".join(markdown_rows(header, (map(markdown_cell, line) for line in cells))) + "\n"


def leaderboard_dict(rows: list[LeaderboardRow]) -> dict[str, Any]:
    return {"rows": [asdict(row) for row in rows]}


def compact_markdown(rows: list[LeaderboardRow]) -> str:
    """The leaderboard in six columns, narrow enough for MLflow's artifact viewer: rank, victim,
    defense, utility loss, the strongest attack and the protection it leaves (± over seeds).
    Every other figure stays in ``leaderboard.md`` and ``leaderboard.json``."""
    header = ["#", "victim", "defense", "utility loss (pts)", "strongest attack", "protection"]
    cells = [
        [
            str(row.rank),
            row.victim,
            row.defense,
            f"{utility_loss_points(row):.2f}",
            f"{row.strongest_attack} @{row.strongest_budget}",
            f"{row.protection:.4f} ± {row.stolen_std:.4f}",
        ]
        for row in rows
    ]
    return "\n".join(markdown_rows(header, (map(markdown_cell, line) for line in cells))) + "\n"


def utility_loss_points(row: LeaderboardRow) -> float:
    """Test-accuracy points the defense costs: undefended minus defended accuracy, times 100."""
    return (row.victim_accuracy - row.utility) * 100


def protection_utility_plot(rows: list[LeaderboardRow], path: Path, title: str) -> Path:
    """Protection against utility loss in points, one labelled point per defended victim, with
    the spread over seeds as error bars when there are several seeds. The axes keep a minimum
    span, so defenses that differ by a hundredth of a point are not stretched across the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    losses = [utility_loss_points(row) for row in rows]
    for i, (row, loss) in enumerate(zip(rows, losses, strict=True)):
        ax.errorbar(
            loss,
            row.protection,
            yerr=row.stolen_std if row.stolen_std > 0 else None,
            fmt="o",
            capsize=3,
            color=colours[i % len(colours)],
        )
        ax.annotate(
            plot_text(row.defense),
            (loss, row.protection),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    protections = [row.protection for row in rows]
    if rows:
        ax.set_xlim(*padded_limits(losses, min_span=2.0))
        ax.set_ylim(*padded_limits(protections, min_span=0.05))
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("utility loss (points of test accuracy below the undefended victim)")
    ax.set_ylabel("protection (1 − strongest stolen accuracy)")
    ax.set_title(plot_text(title))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def padded_limits(values: list[float], min_span: float) -> tuple[float, float]:
    """Axis limits around ``values``: padded by a tenth of their range, at least ``min_span``."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, (min_span - (high - low)) / 2)
    return low - pad, high + pad
