"""H6 without Ray: names with quotes reach MLflow's search as they are (a name is never pasted
into a filter string), and user text in generated Markdown, HTML and plots is escaped."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestration.escaping import html_text, markdown_cell, plot_text
from orchestration.frontier import StudyView, plot_html
from orchestration.tracking import TOURNAMENT_TAG, Tracker, default_tracking_uri

QUOTED = ["o'brien smoke", 'say "cheese"', "both ' and \"", "back\\slash'", "o'brien"]


def test_H6_names_with_quotes_reopen_their_own_parent_run(tmp_path: Path) -> None:
    tracker = Tracker(default_tracking_uri(tmp_path), "t-names", artifact_root=tmp_path / "a")
    first = {name: tracker.open_tournament(name, {"name": name}) for name in QUOTED}
    assert len(set(first.values())) == len(QUOTED)  # no two names share a parent run
    for name, run_id in first.items():
        tracker.close(run_id, "FINISHED")
        assert tracker.open_tournament(name, {"name": name}) == run_id  # the rerun finds it
    client = MlflowClient(tracker.tracking_uri)
    for name, run_id in first.items():
        run = client.get_run(run_id)
        assert run.data.tags[TOURNAMENT_TAG] == name and run.info.run_name == name
    # a study of the same name is another parent run
    assert tracker.open_parent("study", "o'brien", {}) not in first.values()


def test_H6_user_text_is_escaped_for_markdown_html_and_plots(tmp_path: Path) -> None:
    assert markdown_cell("a|b <i>x</i>\nc") == "a\\|b &lt;i&gt;x&lt;/i&gt; c"
    assert html_text("<script>o'brien & co</script>") == (
        "&lt;script&gt;o&#x27;brien &amp; co&lt;/script&gt;"
    )
    assert plot_text("cost $5 to $6") == r"cost \$5 to \$6"
    name = "<b>o'brien</b>"
    view = StudyView(name=name, victim_accuracy=0.9, points=[], frontier=[], defaults=[])
    page = plot_html([view], tmp_path / "frontier.html").read_text()
    # plotly writes "/" as \u002f inside its JSON; the name itself arrives as entities
    assert '"name":"&lt;b&gt;o&#x27;brien&lt;\\u002fb&gt;: frontier"' in page
    assert "<b>o'brien" not in page
