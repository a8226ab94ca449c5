"""C3 and the CLI's handling of user mistakes: clear messages, right exit codes, no tracebacks,
nothing created and no Ray started before the config is valid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_arena(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if home is not None:
        env["ARENA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_C3_help_exits_0_without_ray() -> None:
    for args in (["--help"], ["tournament", "--help"], ["list", "--help"]):
        result = run_arena(*args)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
    assert "--address" in run_arena("tournament", "--help").stdout


def test_C3_bad_flag_exits_2_with_usage() -> None:
    result = run_arena("tournament", "configs/digits_smoke.yaml", "--no-such-flag")
    assert result.returncode == 2
    assert "Usage" in result.stderr and "Traceback" not in result.stderr
    assert run_arena("no-such-command").returncode == 2


def test_list_shows_every_registered_plugin() -> None:
    import agents  # noqa: F401
    from arena.attacker import ATTACKS
    from arena.defenses import DEFENSES

    out = run_arena("list").stdout
    for name in [*DEFENSES.names(), *ATTACKS.names()]:
        assert name in out


def test_C1_bad_config_exits_before_anything_is_created(
    tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    smoke_config_dict["budgets"] = [-1, 100]
    smoke_config_dict["attacks"] = ["knockof"]
    smoke_config_dict["typo_key"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(smoke_config_dict))
    home = tmp_path / "home"
    result = run_arena("tournament", str(bad), "--home", str(home))
    assert result.returncode == 2
    assert "budgets.0" in result.stderr and "typo_key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not home.exists(), "nothing may be created for an invalid config"


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = run_arena("tournament", str(tmp_path / "nope.yaml"), "--home", str(tmp_path / "h"))
    assert result.returncode == 2
    assert "file not found" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_tracking_server_is_one_clear_line(tmp_path: Path) -> None:
    # port 9 (discard) on loopback: nothing listens there
    result = run_arena(
        "tournament",
        "configs/digits_smoke.yaml",
        "--tracking-uri",
        "http://127.0.0.1:9",
        "--home",
        str(tmp_path / "h"),
    )
    assert result.returncode == 1
    assert "not reachable" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_tracking_uri_is_one_clear_line(tmp_path: Path) -> None:
    result = run_arena(
        "tournament",
        "configs/digits_smoke.yaml",
        "--tracking-uri",
        "foo://bar",
        "--home",
        str(tmp_path),
    )
    assert result.returncode == 1
    assert "cannot use tracking URI 'foo://bar'" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_mid_tournament_loses_nothing_and_rerun_completes(tmp_path: Path) -> None:
    """D4/D5 at the command line: SIGTERM during a run marks the parent KILLED and keeps every
    finished match; the same command then plays only the rest, one run per match key."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import MATCH_KEY_TAG, default_tracking_uri

    home = tmp_path / "home"
    env = dict(os.environ, ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "orchestration", "tournament", "configs/digits_smoke.yaml"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    finished_before_kill = 0
    for line in proc.stdout:  # wait for two matches to finish, then stop the run
        finished_before_kill += "stolen" in line
        if finished_before_kill == 2:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest

    client = MlflowClient(default_tracking_uri(home))
    experiment = client.get_experiment_by_name("digits-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("arena.kind") == "tournament"]
    matches = [r for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert [p.info.status for p in parents] == ["KILLED"]
    assert 2 <= len(matches) < 16 and all(m.info.status == "FINISHED" for m in matches)

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{16 - len(matches)} match(es) to play, {len(matches)} already finished" in again.stdout
    runs = client.search_runs([experiment.experiment_id])
    keys = [r.data.tags[MATCH_KEY_TAG] for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert len(keys) == len(set(keys)) == 16
    parent = [r for r in runs if r.data.tags.get("arena.kind") == "tournament"]
    assert [p.info.status for p in parent] == ["FINISHED"]
