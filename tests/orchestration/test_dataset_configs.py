"""Configs naming the new datasets and pools: what validation accepts and rejects before anything
runs, and a missing pool dataset failing the runtime before Ray starts."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from arena.errors import DatasetMissing
from arena.home import ArenaHome
from orchestration.config import ConfigError, RaySettings, parse_config
from orchestration.runtime import MatchRuntime

BASE: dict[str, Any] = {
    "name": "t",
    "victims": [{"dataset": "cifar10", "arch": "mlp", "epochs": 1}],
    "defenses": ["none"],
    "attacks": ["knockoff"],
    "budgets": [100],
}


def config(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **changes}


def run_arena(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``arena`` command in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )


def problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return dict(info.value.problems)


def test_dataset_pools_in_both_forms_become_canonical_match_pools() -> None:
    parsed = parse_config(
        config(
            pools=[
                "in_distribution",
                "dataset:cifar100",
                {"dataset": "mnist", "channels": "repeat", "resize": "bilinear"},
            ]
        )
    )
    assert sorted({m.pool for m in parsed.matches()}) == [
        "dataset:cifar100",
        "dataset:mnist?resize=bilinear&channels=repeat",
        "in_distribution",
    ]
    assert parsed.download is False
    assert parse_config(config(download=True)).download is True


@pytest.mark.parametrize(
    "pool, says",
    [
        ("dataset:imagenet", "unknown dataset"),
        ("dataset:mnist", "add resize=bilinear"),
        ({"dataset": "mnist", "resize": "bilinear"}, "add channels=repeat"),
        ("dataset:cifar10", "in_distribution"),
        ({"dataset": "mnist", "resize": "sideways"}, "resize='sideways'"),
        ("imagenet", "unknown pool"),
    ],
)
def test_bad_pools_are_config_errors_at_their_path(pool: Any, says: str) -> None:
    found = problems(config(pools=["in_distribution", pool]))
    assert says in found["pools.1"]


def test_user_dataset_forms_pass_validation_and_plain_unknown_names_do_not() -> None:
    victims = [
        {"dataset": "npz:/data/mine.npz", "arch": "mlp"},
        {"dataset": "imagefolder:photos", "arch": "mlp"},
    ]
    top = {"name": "top_k", "params": {"k": 50}}  # classes unknown until loaded: not checked
    parsed = parse_config(config(victims=victims, defenses=[top]))
    assert [v.dataset for v in parsed.victims] == ["npz:/data/mine.npz", "imagefolder:photos"]
    found = problems(config(victims=[{"dataset": "imagenet", "arch": "mlp"}]))
    assert "unknown dataset 'imagenet'" in found["victims.0.dataset"]
    assert "cifar100" in found["victims.0.dataset"] and "svhn" in found["victims.0.dataset"]
    found = problems(config(victims=[{"dataset": "npz:", "arch": "mlp"}]))
    assert "victims.0.dataset" in found


def test_class_checks_use_the_new_datasets_class_counts() -> None:
    top = {"name": "top_k", "params": {"k": 50}}
    assert "top_k" in problems(config(defenses=[top]))["defenses.0.0.params"]
    parse_config(config(victims=[{"dataset": "cifar100", "arch": "mlp"}], defenses=[top]))


def test_a_missing_pool_dataset_fails_before_ray_starts(tmp_path: Path) -> None:
    was_running = ray.is_initialized()  # the session's shared Ray may be up already
    raw = config(
        victims=[{"dataset": "digits", "arch": "mlp", "epochs": 1}],
        pools=[{"dataset": "cifar10", "resize": "area", "channels": "luminance"}],
    )
    specs = parse_config(raw).matches()
    home = ArenaHome.at(tmp_path / "home")
    with MatchRuntime(RaySettings(), home, "run") as runtime, pytest.raises(DatasetMissing) as info:
        runtime.ensure(specs)
    assert str(home.data_dir / "cifar-10-batches-py") in str(info.value)
    assert ray.is_initialized() == was_running  # the runtime did not start one


def test_arena_attack_takes_dataset_pools_and_names_what_is_missing(tmp_path: Path) -> None:
    common = ["attack", "--url", "http://127.0.0.1:9", "--token", "t", "--attack", "knockoff"]
    common += ["--dataset", "digits", "--home", str(tmp_path / "home")]
    bogus = run_arena(*common, "--pool", "imagenet")
    assert bogus.returncode == 2 and "--pool: unknown pool 'imagenet'" in bogus.stderr
    missing = run_arena(*common, "--pool", "dataset:svhn?resize=area&channels=luminance")
    assert missing.returncode == 2, missing.stderr
    assert "SVHN is not readable" in missing.stderr and "Traceback" not in missing.stderr
    listed = run_arena("list").stdout
    for name in ("cifar100", "svhn", "kmnist", "imagefolder", "npz"):
        assert name in listed


@pytest.mark.ray
def test_a_tournament_with_a_dataset_pool_plays_on_ray(
    ray_session: None, tmp_path: Path, cache_dir: Path
) -> None:
    """The runtime loads the pool's dataset beside the victim's and ships the mapped pool."""
    from orchestration.tournament import run_tournament
    from orchestration.tracking import Tracker, default_tracking_uri

    path = tmp_path / "pool.npz"
    images = (np.random.default_rng(4).random((30, 16, 16)) * 255).astype(np.uint8)
    labels = np.arange(30) % 3
    np.savez(path, x_train=images, y_train=labels, x_test=images[:3], y_test=labels[:3])
    raw = config(
        victims=[{"dataset": "digits", "arch": "mlp", "epochs": 20, "lr": 0.003}],
        attacks=[{"name": "knockoff", "params": {"epochs": 2}}],
        pools=[{"dataset": f"npz:{path}", "resize": "area"}],
    )
    tracker = Tracker(default_tracking_uri(tmp_path), "t-pool", artifact_root=tmp_path / "a")
    outcome = run_tournament(
        parse_config(raw), tracker, ArenaHome.at(tmp_path / "home", victims=cache_dir)
    )
    assert outcome.played == 1 and not outcome.failures
    (result,) = outcome.results
    assert result.pool == f"dataset:npz:{path}?resize=area" and result.queries_used == 100
