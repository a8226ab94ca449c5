"""The example plug-in package, installed (``scripts/test.sh`` installs it with pip, as a user
installs theirs): its entry point registers its plug-ins in a fresh process, ``arena check``
passes it, and a tournament on local Ray plays its defense, attack and architecture to FINISHED
runs in MLflow."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from arena.plugins import ENTRY_POINT_GROUP
from orchestration.tracking import default_tracking_uri

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "arena-example-plugins"


@pytest.fixture(scope="module")
def installed() -> None:
    """The package must be installed: scripts/test.sh does it; a bare pytest says how."""
    groups = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if not any(e.value == "arena_example_plugins" for e in groups):
        pytest.fail(f"install the example package first: pip install -e {EXAMPLE}")


def arena(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_arena_check_passes_the_installed_example(installed: None, tmp_path: Path) -> None:
    result = arena("check", "arena_example_plugins", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("confidence_cap", "margin_thief", "tiny_cnn"):
        assert name in result.stdout


def test_example_tournament_plays_to_finished_runs(installed: None, tmp_path: Path) -> None:
    result = arena("tournament", "tournament.yaml", home=tmp_path, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 match(es) to play" in result.stdout
    client = MlflowClient(default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("example-plugins-digits")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    matches = [r for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert len(matches) == 8 and all(r.info.status == "FINISHED" for r in matches)
    played = {(r.data.params["attack.name"], r.data.params.get("defenses.0.name")) for r in matches}
    assert ("margin_thief", "confidence_cap") in played
    assert {r.data.params["victim.arch"] for r in matches} == {"tiny_cnn"}
