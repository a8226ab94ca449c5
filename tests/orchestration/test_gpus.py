"""GPU plumbing checked on a machine without a GPU: the settings, the Ray resources every task
and actor asks for, the device a Ray process then picks, and one real match at zero GPUs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import ray

from arena.data import DataSplits
from arena.home import ArenaHome
from arena.record import MatchResult
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from orchestration.config import ConfigError, RaySettings, parse_config
from orchestration.resources import (
    assigned_device,
    defense_preparation_resources,
    gpu_shortfall,
    match_resources,
    victim_service_resources,
    victim_training_resources,
)
from orchestration.runtime import MatchRuntime

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=5, seed=0)


def _ray_problems(raw: dict[str, Any], ray_settings: dict[str, Any]) -> dict[str, str]:
    raw["ray"] = ray_settings
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return dict(info.value.problems)


def test_defaults_ask_for_no_gpu_and_full_precision(smoke_config_dict: dict[str, Any]) -> None:
    settings = parse_config(smoke_config_dict).ray
    assert (settings.gpus_per_match, settings.gpus_per_victim) == (0, 0)
    assert settings.mixed_precision is False


@pytest.mark.parametrize("share", [0.25, 0.5, 1])
def test_a_share_of_a_gpu_per_match_validates(
    smoke_config_dict: dict[str, Any], share: float
) -> None:
    smoke_config_dict["ray"] = {"gpus_per_match": share, "mixed_precision": True}
    settings = parse_config(smoke_config_dict).ray
    assert settings.gpus_per_match == share and settings.mixed_precision is True


@pytest.mark.parametrize("share", [-0.25, 1.5, float("nan"), "lots"])
def test_a_bad_gpu_share_is_reported_at_its_dotted_path(
    smoke_config_dict: dict[str, Any], share: object
) -> None:
    problems = _ray_problems(smoke_config_dict, {"gpus_per_match": share})
    assert set(problems) == {"ray.gpus_per_match"}, problems


def test_each_task_and_actor_asks_ray_for_its_configured_share() -> None:
    settings = RaySettings(
        cpus_per_match=2, cpus_per_victim=0.5, gpus_per_match=0.25, gpus_per_victim=0.5
    )
    assert match_resources(settings) == {"num_cpus": 2, "num_gpus": 0.25}
    assert victim_service_resources(settings) == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert victim_training_resources(settings) == {"num_cpus": 2, "num_gpus": 0.5}
    assert defense_preparation_resources(settings) == {"num_cpus": 2, "num_gpus": 0}


def test_without_gpu_settings_nothing_asks_ray_for_a_gpu() -> None:
    settings = RaySettings()
    for build in (
        match_resources,
        victim_service_resources,
        victim_training_resources,
        defense_preparation_resources,
    ):
        assert build(settings)["num_gpus"] == 0, build.__name__


def test_gpus_the_cluster_lacks_are_named() -> None:
    assert gpu_shortfall(RaySettings(), cluster_gpus=0) is None
    assert gpu_shortfall(RaySettings(gpus_per_match=0.25), cluster_gpus=1) is None
    message = gpu_shortfall(RaySettings(gpus_per_match=0.25, gpus_per_victim=1), cluster_gpus=0)
    assert message is not None
    assert "ray.gpus_per_match = 0.25" in message and "ray.gpus_per_victim = 1" in message
    only_victim = gpu_shortfall(RaySettings(gpus_per_victim=2), cluster_gpus=1)
    assert only_victim is not None and "gpus_per_match" not in only_victim


@ray.remote
def _device_inside() -> tuple[str, list[Any]]:
    return str(assigned_device()), list(ray.get_gpu_ids())


def test_a_task_given_the_match_resources_of_zero_gpus_computes_on_the_cpu(
    ray_session: None,
) -> None:
    assert str(assigned_device()) == "cpu"  # the driver: Ray assigned it nothing
    options = match_resources(RaySettings(gpus_per_match=0))
    device, gpu_ids = ray.get(_device_inside.options(**options).remote())
    assert (device, gpu_ids) == ("cpu", [])


def test_a_joined_cluster_without_the_gpus_asked_for_is_warned_about(
    ray_session: None, tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's Ray was not started by the runtime (a cluster it joined may still gain GPU
    nodes): a warning, not an error, and nothing is scheduled on GPUs."""
    settings = RaySettings(gpus_per_match=0.25)
    home = ArenaHome.at(tmp_path, victims=cache_dir)
    with (
        caplog.at_level(logging.WARNING, logger="orchestration.runtime"),
        MatchRuntime(settings, home, "gpu-warn") as runtime,
    ):
        runtime.ensure_victim(VICTIM)
    assert any("ray.gpus_per_match = 0.25" in r.getMessage() for r in caplog.records)


def test_a_real_match_at_zero_gpus_on_local_ray_matches_the_in_process_one(
    ray_session: None, tmp_path: Path, cache_dir: Path, digits: DataSplits
) -> None:
    spec = MatchSpec(
        victim=VICTIM,
        defenses=(PluginSpec(name="none"),),
        attack=PluginSpec(name="knockoff", params={"epochs": 2}),
        budget=100,
    )
    settings = RaySettings(gpus_per_match=0, gpus_per_victim=0)
    with MatchRuntime(settings, ArenaHome.at(tmp_path, victims=cache_dir), "gpu-zero") as rt:
        rt.submit(spec)
        finished = rt.next_finished()
    assert isinstance(finished.outcome, MatchResult), finished.outcome
    local = play_match(spec, digits, cache_dir)
    for field in ("stolen_accuracy", "fidelity", "victim_accuracy", "queries_used"):
        assert getattr(finished.outcome, field) == getattr(local, field), field


def test_mixed_precision_reaches_a_real_match_on_local_ray(
    ray_session: None, tmp_path: Path, cache_dir: Path, digits: DataSplits
) -> None:
    """The switch travels with the match task: the thief's substitute trains under bf16 autocast
    in the Ray worker, and the match completes with a full record."""
    spec = MatchSpec(
        victim=VICTIM,
        defenses=(PluginSpec(name="none"),),
        attack=PluginSpec(name="knockoff", params={"epochs": 5}),
        budget=300,
    )
    settings = RaySettings(mixed_precision=True)
    with MatchRuntime(settings, ArenaHome.at(tmp_path, victims=cache_dir), "gpu-amp") as rt:
        rt.submit(spec)
        outcome = rt.next_finished().outcome
    assert isinstance(outcome, MatchResult), outcome
    assert outcome.queries_used == 300 and outcome.stolen_accuracy > 0.2  # chance: 0.1
