"""The plots and tables a person reads first: utility loss on axes with a sensible span, error
bars over seeds, a leaderboard narrow enough for MLflow's viewer, frontiers with the floor."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from arena_testkit import record as result

from orchestration.frontier import (
    Point,
    StudyView,
    _trial_label,
    frontier_table,
    plot_html,
    unit_range,
)
from orchestration.leaderboard import (
    build_leaderboard,
    compact_markdown,
    padded_limits,
    protection_utility_plot,
    utility_loss_points,
)

matplotlib.use("Agg")


def test_utility_loss_is_in_points_below_the_undefended_victim() -> None:
    (row,) = build_leaderboard([result("mad", "knockoff", 1000, 0.6, utility=0.875)])
    assert utility_loss_points(row) == pytest.approx(2.5)


def test_axes_keep_a_minimum_span_around_nearly_equal_values() -> None:
    low, high = padded_limits([0.0001, 0.0002], min_span=2.0)
    assert high - low == pytest.approx(2.0) and low < 0.0001 < 0.0002 < high
    low, high = padded_limits([0.0, 10.0], min_span=2.0)  # a wide range is padded, not cut
    assert low == pytest.approx(-1.0) and high == pytest.approx(11.0)


def test_the_plot_draws_error_bars_over_seeds(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    results = [
        result("none", "knockoff", 1000, 0.80, seed=0, match_key="a"),
        result("none", "knockoff", 1000, 0.84, seed=1, match_key="b"),
        result("top_k", "knockoff", 1000, 0.70, match_key="c"),
    ]
    rows = build_leaderboard(results)
    calls: list[object] = []
    original = plt.Axes.errorbar

    def spy(self: plt.Axes, *args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("yerr"))
        return original(self, *args, **kwargs)

    plt.Axes.errorbar = spy  # type: ignore[method-assign]
    try:
        path = protection_utility_plot(rows, tmp_path / "p.png", "t")
    finally:
        plt.Axes.errorbar = original  # type: ignore[method-assign]
    assert path.stat().st_size > 0
    spreads = sorted(c for c in calls if c is not None)
    assert len(calls) == 2 and spreads == [pytest.approx(0.02)]  # one seed: no bar


def test_the_compact_leaderboard_has_six_columns() -> None:
    rows = build_leaderboard([result("top_k", "knockoff", 1000, 0.7, utility=0.89)])
    header, separator, line = compact_markdown(rows).splitlines()
    assert header.count("|") == 7 and separator.count("|") == 7
    assert "1.00" in line and "knockoff @1000" in line and "0.3000 ± 0.0000" in line


def test_a_trial_that_played_a_default_is_named_after_it() -> None:
    default = Point("default beta=1, gamma=0.2", {"beta": 1.0, "gamma": 0.2}, 0.9, 0.1, True, "k")
    assert _trial_label(0, {"beta": 1.0, "gamma": 0.2}, [default]) == (
        "default beta=1, gamma=0.2 (trial 0)"
    )
    assert _trial_label(3, {"beta": 0.5, "gamma": 0.2}, [default]) == "trial 3"
    own = Point("default (the plug-in's own settings)", {}, 0.9, 0.1, True, "k")
    assert _trial_label(4, {"beta": 0.5}, [own]) == "trial 4"  # an empty default matches nothing


def test_the_frontier_page_draws_the_floor_inside_unit_axes(tmp_path: Path) -> None:
    tied = [Point(f"trial {i}", {"x": i}, 1.0, 0.2 + i / 100, True, "k") for i in range(3)]
    view = StudyView(name="s", victim_accuracy=1.0, points=tied, frontier=tied, defaults=[])
    page = plot_html([view], tmp_path / "f.html", floor=0.01).read_text()
    assert "s: utility floor" in page and '"x0":0.99' in page
    low, high = unit_range([1.0, 1.0], 0.01)
    assert high == 1.0 and low == pytest.approx(0.99)  # never past accuracy 1
    assert unit_range([], 0.01) == [0.0, 1.0]


def test_a_detection_studys_table_names_its_axis_and_shows_benign_false_positives(
    tmp_path: Path,
) -> None:
    quiet = Point("trial 1", {"delta": 0.9}, 0.9, 0.0, True, "jbda", false_positive_rate=0.0)
    loud = Point("trial 2", {"delta": 0.97}, 0.9, 1.0, False, "jbda", false_positive_rate=0.25)
    view = StudyView("d", 0.9, [quiet, loud], [quiet], [], axis="detection")
    header, _, row = frontier_table(view).splitlines()
    assert "| detection | benign FPR |" in header and "| 0.0000 | 0.00 | jbda |" in row
    assert "share of the least-flagged thief" in plot_html([view], tmp_path / "d.html").read_text()
    assert unit_range([2.5, 40.0], 0.02, bounded=False)[1] > 40  # a cost ratio is not clipped
