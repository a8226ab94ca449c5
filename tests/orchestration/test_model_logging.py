"""``tracking.log_models``: a real (tiny) digits tournament on the session's Ray with a real
MLflow store logs its victim on the parent run and each match's scored substitute (after the
removal) on its child run, loadable and scoring exactly what the record says; off, no model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import pytest
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from torch import nn

from arena.data import DataSplits
from arena.home import ArenaHome
from arena.training import accuracy, predict_probs
from orchestration.config import parse_config
from orchestration.tournament import TournamentOutcome, run_tournament, victim_model_name
from orchestration.tracking import MATCH_KEY_TAG, SUBSTITUTE_MODEL, Tracker, default_tracking_uri

pytestmark = pytest.mark.ray


def _config(log_models: bool, removals: list[Any]) -> dict[str, Any]:
    """A digits tournament of one match per removal, its victim cheap to train."""
    return {
        "name": "models",
        "victims": [{"dataset": "digits", "arch": "mlp", "epochs": 3, "seed": 0}],
        "defenses": ["none"],
        "attacks": [{"name": "knockoff", "params": {"epochs": 3}}],
        "budgets": [100],
        "removals": removals,
        "ray": {"object_store_mb": 256},
        "tracking": {"experiment": "models", "log_models": log_models},
    }


def _run(tmp_path: Path, raw: dict[str, Any]) -> tuple[Tracker, TournamentOutcome]:
    tracker = Tracker(default_tracking_uri(tmp_path), "models", tmp_path / "artifacts")
    home = ArenaHome.at(tmp_path, victims=tmp_path.parent / "victims")
    return tracker, run_tournament(parse_config(raw), tracker, home)


def _children(client: MlflowClient, tracker: Tracker, parent: str) -> list[Any]:
    return list(
        client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'"
        )
    )


def test_log_models_puts_victim_on_parent_and_scored_substitute_on_each_child(
    ray_session: None, tmp_path: Path, digits: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    raw = _config(True, ["none", {"name": "prune", "params": {"amount": 0.5}}])
    tracker, outcome = _run(tmp_path / "on", raw)
    assert outcome.played == 2 and not outcome.failures
    # logging set MLflow's process-wide URI; subprocesses started later must not inherit it
    assert os.environ.get("MLFLOW_TRACKING_URI") == exported
    client = MlflowClient(tracker.tracking_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)  # for runs:/ URIs below
    test_x, test_y = digits.test.x, digits.test.y

    (victim_key,) = outcome.victims
    victim_uri = f"runs:/{outcome.parent_run_id}/{victim_model_name(victim_key)}"
    victim = mlflow.pytorch.load_model(victim_uri)
    assert accuracy(predict_probs(victim, test_x), test_y) == outcome.results[0].victim_accuracy
    assert get_model_info(victim_uri).signature is not None

    by_key = {r.match_key: r for r in outcome.results}
    children = _children(client, tracker, outcome.parent_run_id)
    assert len(children) == 2
    for child in children:
        record = by_key[child.data.tags[MATCH_KEY_TAG]]
        uri = f"runs:/{child.info.run_id}/{SUBSTITUTE_MODEL}"
        info = get_model_info(uri)
        assert info.signature is not None
        inputs, outputs = info.signature.inputs.to_dict(), info.signature.outputs.to_dict()
        assert tuple(inputs[0]["tensor-spec"]["shape"]) == (-1, *digits.input_shape)
        assert tuple(outputs[0]["tensor-spec"]["shape"]) == (-1, digits.num_classes)
        substitute = mlflow.pytorch.load_model(uri)
        # the logged model is the one scored: after the removal, not before it
        assert accuracy(predict_probs(substitute, test_x), test_y) == record.stolen_accuracy
        weights = [m.weight for m in substitute.modules() if isinstance(m, nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert (zeros >= 0.5) == (record.removal != "none")
    pruned = [r for r in outcome.results if r.removal != "none"]
    assert pruned and pruned[0].stolen_accuracy_before_removal is not None

    assert tracker.model_names(outcome.parent_run_id) == {victim_model_name(victim_key)}
    # a rerun plays nothing and logs no victim twice
    _, again = _run(tmp_path / "on", raw)
    assert again.played == 0 and again.skipped == 2
    models = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert sorted(m.name for m in models) == sorted(
        [victim_model_name(victim_key), SUBSTITUTE_MODEL, SUBSTITUTE_MODEL]
    )


def test_log_models_off_logs_no_model(ray_session: None, tmp_path: Path) -> None:
    tracker, outcome = _run(tmp_path / "off", _config(False, ["none"]))
    assert outcome.played == 1 and not outcome.failures
    client = MlflowClient(tracker.tracking_uri)
    assert not client.search_logged_models(experiment_ids=[tracker.experiment_id])
    runs = [
        outcome.parent_run_id,
        *(c.info.run_id for c in _children(client, tracker, outcome.parent_run_id)),
    ]
    for run_id in runs:
        paths = {a.path for a in client.list_artifacts(run_id)}
        assert not any(p.startswith(("victim-", SUBSTITUTE_MODEL)) for p in paths)
    assert not (tmp_path / "off" / "artifacts" / "models").exists()
