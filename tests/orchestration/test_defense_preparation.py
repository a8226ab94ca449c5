"""Defenses that train models are prepared once, in a Ray task ahead of the victim services, and
cached beside the victim: chains that differ only in serving parameters share the training, and a
second tournament trains nothing. Detector chains carry their detection fields into MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arena.home import ArenaHome
from orchestration.config import parse_config
from orchestration.tournament import run_tournament
from orchestration.tracking import Tracker, default_tracking_uri

pytestmark = pytest.mark.ray


def _config(raw: dict[str, Any], name: str) -> dict[str, Any]:
    raw["name"] = name
    raw["victims"][0]["epochs"] = 10
    raw["defenses"] = [
        [{"name": "adaptive_misinformation", "params": {"tau": 0.5}}],
        [{"name": "adaptive_misinformation", "params": {"tau": 0.9}}],
        [{"name": "prada", "params": {"response": "refuse"}}, "reverse_sigmoid"],
    ]
    raw["attacks"] = [{"name": "knockoff", "params": {"epochs": 2}}]
    raw["budgets"] = [200]
    return raw


def _artefacts(cache: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("defense-*.pt")}


def test_training_defenses_are_prepared_once_and_cached(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    cache = tmp_path / "victims"
    first_config = parse_config(_config(dict(smoke_config_dict), "prep-1"))
    tracker = Tracker(default_tracking_uri(tmp_path), "prep", artifact_root=tmp_path / "art")
    first = run_tournament(first_config, tracker, ArenaHome.at(tmp_path, victims=cache))
    assert not first.failures, [f.reason for f in first.failures]
    assert first.played == 3
    artefacts = _artefacts(cache)
    # two thresholds, one training: the outlier-exposure victim and the misinformation model
    assert len(artefacts) == 2, artefacts

    second_config = parse_config(_config(dict(smoke_config_dict), "prep-2"))
    second = run_tournament(second_config, tracker, ArenaHome.at(tmp_path, victims=cache))
    assert not second.failures and second.played == 3
    assert _artefacts(cache) == artefacts  # nothing retrained, nothing rewritten

    by_defense = {r.defense: r for r in second.results}
    watched = by_defense["prada(response=refuse) -> reverse_sigmoid"]
    assert watched.benign_flagged is not None
    assert watched.chain_steps.count("us_per_query") == 2
    for label, record in by_defense.items():
        if label.startswith("adaptive_misinformation"):
            assert record.benign_flagged is None and not record.detected
    # records rebuilt from MLflow carry the same detection fields
    rebuilt = tracker.finished_results(second.parent_run_id)
    assert {r.match_key: r for r in second.results} == rebuilt
