"""Defenses that train models are prepared once, in a Ray task ahead of the victim services, and
cached beside the victim: chains that differ only in serving parameters share the training, and a
second tournament trains nothing. Detector chains carry their detection fields into MLflow."""

from __future__ import annotations

import uuid
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


BROKEN_DEFENSE = '''
"""A training-time defense whose preparation always fails."""
from dataclasses import dataclass
from typing import ClassVar

from arena.defenses import DEFENSES, Defense


@DEFENSES.register("{name}")
@dataclass(frozen=True)
class Broken(Defense):
    """Fails while preparing."""

    needs_training: ClassVar[bool] = True

    def prepare(self, model, context):
        raise RuntimeError("broken on purpose")
'''


def test_a_failed_preparation_fails_only_the_matches_that_needed_it(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / "broken.py").write_text(BROKEN_DEFENSE.format(name=name))
    raw = dict(smoke_config_dict)
    raw.update(
        name="prep-broken",
        plugins=[str(tmp_path / "broken.py")],
        defenses=["none", name, [{"name": "adaptive_misinformation", "params": {"tau": 0.5}}]],
        attacks=[{"name": "knockoff", "params": {"epochs": 1}}],
        budgets=[100],
    )
    tracker = Tracker(default_tracking_uri(tmp_path), "prep", artifact_root=tmp_path / "art")
    outcome = run_tournament(parse_config(raw), tracker, ArenaHome.at(tmp_path))
    # the undefended match and the one whose preparation worked still play
    assert outcome.played == 2
    assert {r.defense for r in outcome.results} == {"none", "adaptive_misinformation"}
    [failure] = outcome.failures
    assert "preparing its defenses failed" in failure.reason
    assert "broken on purpose" in failure.reason
