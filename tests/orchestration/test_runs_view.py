"""The MLflow runs table shows the arena's figures at first sight (issue 19): every experiment
the tracker opens carries saved views (``mlflow.sharedViewState.<key>`` experiment tags) whose
metric columns and sort MLflow 3's UI applies when the printed link names their key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestration.tracking import (
    MATCHES_VIEW,
    SHARED_VIEW_PREFIX,
    TRIALS_VIEW,
    Tracker,
    default_tracking_uri,
)


def _view_state(client: MlflowClient, experiment_id: str, key: str) -> tuple[str, Any]:
    """The name and decoded state of a saved view, read as the UI reads it: a JSON envelope
    with a string ``name``, a number ``createdAt`` and ``state`` as a JSON string."""
    tag = client.get_experiment(experiment_id).tags[f"{SHARED_VIEW_PREFIX}{key}"]
    envelope = json.loads(tag)
    assert isinstance(envelope["createdAt"], int) and isinstance(envelope["updatedAt"], int)
    assert isinstance(envelope["state"], str)
    return envelope["name"], json.loads(envelope["state"])


def test_new_experiment_gets_the_matches_and_trials_views(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "views", artifact_root=tmp_path / "a")
    client = MlflowClient(uri)

    name, state = _view_state(client, tracker.experiment_id, MATCHES_VIEW)
    assert name == "Arena matches"
    columns = ["metrics.`stolen_accuracy`", "metrics.`fidelity`", "metrics.`utility`"]
    assert state == {
        "orderByKey": "metrics.`stolen_accuracy`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
    }
    name, state = _view_state(client, tracker.experiment_id, TRIALS_VIEW)
    assert name == "Arena trials"
    assert state["orderByKey"] == "metrics.`protection`"
    assert "metrics.`utility`" in state["selectedColumns"]
    assert "metrics.`protection`" in state["selectedColumns"]


def test_runs_url_opens_a_view_and_carries_no_search_setting(tmp_path: Path) -> None:
    """The UI skips a shared view when the URL also has orderByKey/searchFilter/...: the sort
    must come from the view, not from the link."""
    tracker = Tracker(default_tracking_uri(tmp_path), "links", artifact_root=tmp_path / "a")
    base = f"http://h:1/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert tracker.runs_url("http://h:1") == f"{base}&viewStateShareKey=arena-matches"
    assert tracker.runs_url("http://h:1", TRIALS_VIEW) == f"{base}&viewStateShareKey=arena-trials"
    assert "orderByKey" not in tracker.runs_url()
    with pytest.raises(ValueError, match="unknown view"):
        tracker.runs_url(view="nope")


def test_existing_experiment_gains_missing_views_and_keeps_a_changed_one(tmp_path: Path) -> None:
    """An experiment made before the views gets them on its next open; a view the user has
    overridden in the UI is not put back."""
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("older")
    mine = json.dumps({"name": "mine", "createdAt": 1, "state": "{}"})
    client.set_experiment_tag(experiment_id, f"{SHARED_VIEW_PREFIX}{MATCHES_VIEW}", mine)

    Tracker(uri, "older", artifact_root=tmp_path / "a")

    tags = client.get_experiment(experiment_id).tags
    assert tags[f"{SHARED_VIEW_PREFIX}{MATCHES_VIEW}"] == mine
    assert json.loads(tags[f"{SHARED_VIEW_PREFIX}{TRIALS_VIEW}"])["name"] == "Arena trials"
