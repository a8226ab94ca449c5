"""The protection-versus-utility frontier of tuning studies: read from Optuna storage, drawn as a
PNG (matplotlib) and an interactive HTML page (plotly), with the literature's default settings of
the same defense on the same axes; and across studies, which defense protects best at a floor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from orchestration.escaping import html_text, markdown_cell, plot_text

DEFAULTS_ATTR = "literature_defaults"
SCORES_ATTR = "scores"


@dataclass(frozen=True)
class Point:
    """One evaluated defense setting."""

    label: str
    params: dict[str, Any]
    utility: float
    protection: float
    feasible: bool
    strongest_attack: str
    false_positive_rate: float | None = None
    """share of the benign callers a detector flagged (``None``: no detector in the chain)"""


@dataclass(frozen=True)
class StudyView:
    """What a study found, as plain data."""

    name: str
    victim_accuracy: float
    points: list[Point]
    frontier: list[Point]
    """the Pareto set of feasible trials, by utility"""
    defaults: list[Point]
    utility_metric: str = "accuracy"
    """what utility measures: ``accuracy`` (defended test accuracy) or ``goodput`` (zoos)"""
    axis: str = "prevention"
    """the axis of protection the study maximised (:mod:`arena.protection_axes`)"""


UTILITY_NAMES = {
    "accuracy": "defended test accuracy",
    "goodput": "goodput: benign requests served within their targets",
}


AXIS_TITLES = {
    "prevention": "protection (1 − strongest attacker's stolen accuracy)",
    "detection": "detection (share of the least-flagged thief's accounts flagged)",
    "attribution": "attribution (share of the least-claimed thief's models claimed)",
    "cost": "cost (cheapest thief's work per query ÷ the benign callers')",
}


def _utility_name(views: Sequence[StudyView]) -> str:
    metrics = sorted({v.utility_metric for v in views})
    return " / ".join(UTILITY_NAMES.get(m, m) for m in metrics)


def _axis_title(views: Sequence[StudyView]) -> str:
    return " / ".join(AXIS_TITLES.get(a, a) for a in sorted({v.axis for v in views}))


def study_view(study: optuna.Study) -> StudyView:
    """Read a study's trials, feasible Pareto set (Optuna's own, honouring the utility
    constraint) and evaluated literature defaults."""
    defaults = [
        _point(f"default {_short(d['params'])}", d["params"], d)
        for d in study.user_attrs.get(DEFAULTS_ATTR, [])
    ]
    points: dict[int, Point] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        scores = trial.user_attrs.get(SCORES_ATTR)
        if scores is None:
            continue
        label = _trial_label(trial.number, dict(trial.params), defaults)
        points[trial.number] = _point(label, dict(trial.params), scores)
    front = [points[t.number] for t in study.best_trials if t.number in points]
    axes = {
        str(t.user_attrs[SCORES_ATTR].get("axis", "prevention"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if SCORES_ATTR in t.user_attrs
    }
    return StudyView(
        name=study.study_name,
        victim_accuracy=float(study.user_attrs.get("victim_accuracy", float("nan"))),
        points=list(points.values()),
        frontier=sorted(front, key=lambda p: p.utility),
        defaults=defaults,
        utility_metric=str(study.user_attrs.get("utility_metric", "accuracy")),
        axis=axes.pop() if len(axes) == 1 else "prevention",
    )


def _trial_label(number: int, params: dict[str, Any], defaults: list[Point]) -> str:
    """``trial N``, or the default's name when the trial played a literature default (studies
    seed their first trials with them), so a default is never shown as a bare trial number."""
    for default in defaults:
        if default.params and all(params.get(k) == v for k, v in default.params.items()):
            return f"{default.label} (trial {number})"
    return f"trial {number}"


def _point(label: str, params: dict[str, Any], scores: dict[str, Any]) -> Point:
    return Point(
        label,
        params,
        float(scores["utility"]),
        float(scores["protection"]),
        bool(scores["feasible"]),
        str(scores["strongest_attack"]),
        scores.get("false_positive_rate"),
    )


def _short(params: dict[str, Any]) -> str:
    if not params:
        return "(the plug-in's own settings)"
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def dominated_by_frontier(view: StudyView, default: Point) -> Point | None:
    """A feasible frontier point (another setting than the default itself, which may be a seed
    trial of the study) at least as good on both axes and better on one, if any."""
    for point in view.frontier:
        if point.params == default.params:
            continue
        at_least = point.utility >= default.utility and point.protection >= default.protection
        better = point.utility > default.utility or point.protection > default.protection
        if at_least and better:
            return point
    return None


def best_at_floor(views: Sequence[StudyView], floor: float) -> tuple[str, Point] | None:
    """The study (defense) whose frontier protects best with utility >= victim - ``floor``."""
    best: tuple[str, Point] | None = None
    for view in views:
        for point in view.frontier:
            if point.utility >= view.victim_accuracy - floor - 1e-12 and (
                best is None or point.protection > best[1].protection
            ):
                best = (view.name, point)
    return best


def frontier_table(view: StudyView) -> str:
    """The frontier and the literature defaults; the protection column is named by the study's
    axis, and a benign false-positive column appears when a detector was measured."""
    shown = sorted(view.frontier + view.defaults, key=lambda p: p.utility)
    with_fpr = any(p.false_positive_rate is not None for p in shown)
    protection = "protection" if view.axis == "prevention" else view.axis
    header = ["setting", "parameters", "utility", protection]
    header += ["benign FPR"] * with_fpr + ["strongest attack", "on frontier"]
    align = ["---", "---", "---:", "---:"] + ["---:"] * with_fpr + ["---", "---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    front = {p.label for p in view.frontier}
    for point in shown:
        on = "yes" if point.label in front else "default"
        if point in view.defaults:
            beaten = dominated_by_frontier(view, point)
            on = f"default, dominated by {beaten.label}" if beaten else "default, not dominated"
            on += "" if point.feasible else " (infeasible)"
        cells = [point.label, _short(point.params), f"{point.utility:.4f}"]
        cells += [f"{point.protection:.4f}"]
        if with_fpr:
            fpr = point.false_positive_rate
            cells += ["—" if fpr is None else f"{fpr:.2f}"]
        cells += [point.strongest_attack, on]
        lines.append("| " + " | ".join(map(markdown_cell, cells)) + " |")
    return "\n".join(lines) + "\n"


def plot_png(views: Sequence[StudyView], path: Path, floor: float | None = None) -> Path:
    """Every trial (x: below the utility floor), each frontier, each literature default (star);
    left the whole plane, right zoomed on the settings within reach of the floor."""
    figure, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes in (whole, zoom):
        for i, view in enumerate(views):
            _draw(axes, view, colours[i % len(colours)], floor)
        axes.set_xlabel(f"utility ({_utility_name(views)}) →")
        axes.set_ylabel(f"{_axis_title(views)} →")
    near = [
        p
        for view in views
        for p in view.points + view.defaults
        if floor is None or p.utility >= view.victim_accuracy - 2 * floor - 0.01
    ]
    if near:
        utilities, protections = [p.utility for p in near], [p.protection for p in near]
        pad_u = max(0.002, (max(utilities) - min(utilities)) * 0.1)
        pad_p = max(0.005, (max(protections) - min(protections)) * 0.1)
        zoom.set_xlim(min(utilities) - pad_u, max(utilities) + pad_u)
        zoom.set_ylim(min(protections) - pad_p, max(protections) + pad_p)
    whole.set_title("all trials (× infeasible: below the utility floor or over a bound, ★ default)")
    zoom.set_title("near the undefended utility (⋮ utility floor)")
    whole.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _draw(axes: Any, view: StudyView, colour: str, floor: float | None) -> None:
    feasible = [p for p in view.points if p.feasible]
    infeasible = [p for p in view.points if not p.feasible]
    axes.scatter(
        [p.utility for p in feasible],
        [p.protection for p in feasible],
        s=18,
        color=colour,
        alpha=0.45,
    )
    axes.scatter(
        [p.utility for p in infeasible],
        [p.protection for p in infeasible],
        s=18,
        color=colour,
        alpha=0.3,
        marker="x",
    )
    axes.plot(
        [p.utility for p in view.frontier],
        [p.protection for p in view.frontier],
        marker="o",
        color=colour,
        label=plot_text(f"{view.name} frontier"),
    )
    for d in view.defaults:
        axes.scatter(
            [d.utility],
            [d.protection],
            marker="*",
            s=160,
            color=colour,
            edgecolors="black",
            zorder=5,
        )
        axes.annotate(
            plot_text(_short(d.params)),
            (d.utility, d.protection),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if floor is not None and view.victim_accuracy == view.victim_accuracy:
        axes.axvline(view.victim_accuracy - floor, color=colour, linestyle=":", linewidth=1)


def plot_html(views: Sequence[StudyView], path: Path, floor: float | None = None) -> Path:
    """The interactive plot: trials, frontiers and defaults with their settings on hover, each
    study's utility floor as a dotted line, both axes inside [0, 1]."""
    figure = go.Figure()
    for view in views:
        for name, points, style in (
            (
                f"{html_text(view.name)}: trials",
                view.points,
                {"mode": "markers", "marker": {"size": 7, "opacity": 0.5}},
            ),
            (f"{html_text(view.name)}: frontier", view.frontier, {"mode": "lines+markers"}),
            (
                f"{html_text(view.name)}: literature defaults",
                view.defaults,
                {"mode": "markers", "marker": {"symbol": "star", "size": 14}},
            ),
        ):
            figure.add_trace(
                go.Scatter(
                    x=[p.utility for p in points],
                    y=[p.protection for p in points],
                    name=name,
                    text=[
                        f"{html_text(p.label)}: {html_text(json.dumps(p.params))}<br>"
                        f"strongest: {html_text(p.strongest_attack)}"
                        f"{'' if p.feasible else ' (infeasible)'}"
                        for p in points
                    ],
                    hoverinfo="text+x+y",
                    **style,
                )
            )
        if floor is not None and math.isfinite(view.victim_accuracy):
            figure.add_vline(
                x=view.victim_accuracy - floor,
                line_dash="dot",
                annotation_text=html_text(f"{view.name}: utility floor"),
            )
    every = [p for view in views for p in view.points + view.defaults]
    figure.update_layout(
        xaxis_title=f"utility ({_utility_name(views)})",
        yaxis_title=_axis_title(views),
        title="Protection vs utility",
        xaxis_range=unit_range([p.utility for p in every], 0.01),
        yaxis_range=unit_range(
            [p.protection for p in every], 0.02, bounded=all(v.axis != "cost" for v in views)
        ),
    )
    figure.write_html(path, include_plotlyjs=True)
    return path


def unit_range(values: Sequence[float], min_span: float, bounded: bool = True) -> list[float]:
    """An axis range around ``values`` at least ``min_span`` wide, padded by a tenth, inside
    [0, 1] (accuracies and protections never leave it, so neither should the axis) unless not
    ``bounded`` (the cost axis is a ratio: at least 0, with no upper end)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0, 1.0]
    low, high = min(finite), max(finite)
    pad = max((high - low) * 0.1, (min_span - (high - low)) / 2, 0.0)
    low, high = low - pad, high + pad
    if not bounded:
        return [max(0.0, low), high]
    shift = max(0.0, -low) - max(0.0, high - 1.0)  # slide the window back inside [0, 1]
    return [max(0.0, low + shift), min(1.0, high + shift)]
