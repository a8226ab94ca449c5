"""Plug-ins from outside the package (arena.plugins): a config's ``plugins:`` list, installed
entry points, the import error as one config problem, loading on Ray workers, and a bumped
version replaying its matches while the others stay skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.tracking import MlflowClient

from arena.defenses import DEFENSES
from arena.home import ArenaHome
from arena.plugins import ENTRY_POINT_GROUP, import_plugin, loaded_sources
from orchestration.config import ConfigError, parse_config
from orchestration.tournament import run_tournament
from orchestration.tracking import MATCH_KEY_TAG, Tracker, default_tracking_uri

REPO = Path(__file__).resolve().parents[2]


def plugin_text(prefix: str, version: int = 1, scale: float = 0.5) -> str:
    """A plug-in file registering a defense, an attack and an architecture named ``prefix_*``."""
    return textwrap.dedent(
        f'''
        """A test plug-in."""
        from dataclasses import dataclass

        import torch
        from torch import nn

        from agents.knockoff import Knockoff
        from arena.attacker import ATTACKS
        from arena.defenses import DEFENSES, Defense
        from arena.models import ARCHITECTURES


        @DEFENSES.register("{prefix}_flatten", version={version})
        @dataclass(frozen=True)
        class Flatten(Defense):
            """Mixes every answer with the uniform distribution."""

            scale: float = {scale}

            def respond(self, probs, x, state):
                return (1 - self.scale) * probs + self.scale / probs.shape[1]


        @ATTACKS.register("{prefix}_thief")
        @dataclass(frozen=True)
        class Thief(Knockoff):
            """Knockoff under another name."""


        @ARCHITECTURES.register("{prefix}_net")
        def net(input_shape, num_classes):
            """A one-hidden-layer net."""
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(),
                                 nn.Linear(32, num_classes))
        '''
    )


def tournament_doc(plugins: list[str], prefix: str) -> dict[str, Any]:
    return {
        "name": f"plugins-{prefix}",
        "plugins": plugins,
        "victims": [{"dataset": "digits", "arch": f"{prefix}_net", "epochs": 5}],
        "defenses": ["none", f"{prefix}_flatten"],
        "attacks": [
            {"name": f"{prefix}_thief", "params": {"epochs": 3}},
            {"name": "knockoff", "params": {"epochs": 3}},
        ],
        "budgets": [60],
        "tracking": {"experiment": f"plugins-{prefix}"},
    }


def unique_prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


def test_config_plugins_register_before_validation(tmp_path: Path) -> None:
    prefix = unique_prefix()
    (tmp_path / "mine.py").write_text(plugin_text(prefix))
    config_file = tmp_path / "t.yaml"
    config_file.write_text("")
    # a relative file is taken from the config's folder, whatever the working directory
    config = parse_config(tournament_doc(["mine.py"], prefix), str(config_file))
    assert f"{prefix}_flatten" in DEFENSES
    names = {(m.attack.name, tuple(d.name for d in m.defenses)) for m in config.matches()}
    assert (f"{prefix}_thief", (f"{prefix}_flatten",)) in names
    assert [s.ref for s in loaded_sources()][-1] == str(tmp_path / "mine.py")


def test_unknown_names_without_the_plugin_fail_by_path() -> None:
    prefix = unique_prefix()
    with pytest.raises(ConfigError) as caught:
        parse_config(tournament_doc([], prefix))
    where = dict(caught.value.problems)
    assert "unknown defense" in where["defenses.1.0.name"]
    assert "unknown attack" in where["attacks.0.name"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("no_such_module_xyz", "ModuleNotFoundError"),
        ("broken.py", "ZeroDivisionError: division by zero"),
        ("syntax.py", "SyntaxError"),
        ("missing.py", "cannot read"),
        ("not a module", "not a module name"),
    ],
)
def test_a_plugin_that_fails_to_import_is_one_config_problem(
    tmp_path: Path, entry: str, expected: str
) -> None:
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    (tmp_path / "syntax.py").write_text("def (:\n")
    config_file = tmp_path / "t.yaml"
    config_file.write_text("")
    doc = tournament_doc([entry], unique_prefix())
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, str(config_file))
    assert [where for where, _ in caught.value.problems] == ["plugins.0"]
    message = caught.value.problems[0][1]
    assert entry in message and expected in message and "\n" not in message


def test_a_broken_plugin_at_the_cli_exits_2_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency_abc\n")
    config = tmp_path / "t.yaml"
    config.write_text(
        "name: x\nplugins: [broken.py]\nvictims: [{dataset: digits}]\n"
        "defenses: [none]\nattacks: [knockoff]\nbudgets: [10]\n"
    )
    env = dict(os.environ, ARENA_HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", "tournament", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "plugins.0" in result.stderr and "no_such_dependency_abc" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "mlruns.db").exists()


def test_installed_plugins_load_through_the_entry_point_group(tmp_path: Path) -> None:
    """A distribution on the path (the dist-info layout pip writes) declaring the group."""
    prefix = unique_prefix()
    site = tmp_path / "site"
    (site / f"{prefix}_pkg").mkdir(parents=True)
    (site / f"{prefix}_pkg" / "__init__.py").write_text(plugin_text(prefix))
    info = site / f"{prefix}_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmine = {prefix}_pkg\n")
    probe = (
        "from arena.plugins import load_installed_plugins\n"
        "from arena.defenses import DEFENSES\n"
        "load_installed_plugins()\n"
        f"print(DEFENSES.version('{prefix}_flatten'))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_module_plugins_import_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = unique_prefix()
    (tmp_path / f"{prefix}_mod.py").write_text(plugin_text(prefix))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = import_plugin(f"{prefix}_mod")
    assert module.__name__ == f"{prefix}_mod" and f"{prefix}_thief" in ray_free_attacks()
    assert import_plugin(f"{prefix}_mod") is module  # once per process


def ray_free_attacks() -> list[str]:
    from arena.attacker import ATTACKS

    return ATTACKS.names()


@pytest.mark.ray
def test_plugin_plays_on_ray_workers(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's Ray workers never imported the file: each task and actor loads the source
    the driver shipped (the victim is of the plug-in's architecture, the thief and one defense
    are the plug-in's)."""
    prefix = unique_prefix()
    (tmp_path / "mine.py").write_text(plugin_text(prefix))
    config = parse_config(tournament_doc([str(tmp_path / "mine.py")], prefix))
    tracker = Tracker(
        default_tracking_uri(tmp_path),
        config.tracking.experiment,
        artifact_root=tmp_path / "artifacts",
    )
    summary = run_tournament(config, tracker, ArenaHome.at(tmp_path))
    assert not summary.failures and summary.played == 4
    assert {r.attack.split("(")[0] for r in summary.results} == {f"{prefix}_thief", "knockoff"}
    client = MlflowClient(default_tracking_uri(tmp_path))
    runs = client.search_runs([tracker.experiment_id])
    matches = [r for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert len(matches) == 4 and all(r.info.status == "FINISHED" for r in matches)
    versions = {(r.data.tags["arena.attack"], r.data.params["attack.version"]) for r in matches}
    assert versions == {(f"{prefix}_thief", "1"), ("knockoff", "2")}
    assert ray.is_initialized()


def run_cli_tournament(config: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestration", "tournament", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


def test_bumping_a_plugin_version_replays_its_matches_only(tmp_path: Path) -> None:
    """Same config twice through the CLI; between the runs the plug-in's defense changes its
    behaviour and its version: its matches play again, the others stay skipped."""
    import yaml

    prefix = unique_prefix()
    plugin = tmp_path / "mine.py"
    plugin.write_text(plugin_text(prefix, version=1, scale=0.5))
    doc = tournament_doc(["mine.py"], prefix)
    doc["victims"][0]["arch"] = "mlp"
    doc["attacks"] = [{"name": "knockoff", "params": {"epochs": 2}}]
    doc["ray"] = {"object_store_mb": 256}
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump(doc))
    home = tmp_path / "home"

    first = run_cli_tournament(config, home)
    assert first.returncode == 0, first.stderr
    assert "2 match(es) to play, 0 already finished" in first.stdout

    plugin.write_text(plugin_text(prefix, version=2, scale=0.9))
    second = run_cli_tournament(config, home)
    assert second.returncode == 0, second.stderr
    assert "1 match(es) to play, 1 already finished" in second.stdout

    client = MlflowClient(default_tracking_uri(home))
    experiment = client.get_experiment_by_name(doc["tracking"]["experiment"])
    assert experiment is not None
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("arena.kind") == "match"
    ]
    keys = [r.data.tags[MATCH_KEY_TAG] for r in runs]
    assert len(runs) == 3 and len(set(keys)) == 3
    versions = sorted(r.data.params.get("defenses.0.version", "") for r in runs)
    assert versions == ["1", "1", "2"]
