"""C3 and the CLI's handling of user mistakes: clear messages, right exit codes, no tracebacks,
nothing created and no Ray started before the config is valid."""

from __future__ import annotations

import os
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
