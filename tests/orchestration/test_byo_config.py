"""Bring your own victim in configs, the CLI and on Ray: architecture forms checked with the
config, checkpoints checked before Ray starts (exit 2, one line naming the file), and a
checkpoint victim served by a Ray actor rebuilt from its state, the file gone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from torch import nn

from arena.data import DataSplits
from arena.errors import InvalidParameters
from arena.home import ArenaHome
from arena.models import build_model
from arena.oracle import InputSpec, Oracle
from arena.record import MatchResult
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.training import accuracy, predict_probs
from arena.victims import load_or_train
from orchestration.config import ConfigError, RaySettings, parse_config
from orchestration.ray_service import RayServiceProxy, start_victim_service
from orchestration.runtime import MatchRuntime

REPO = Path(__file__).resolve().parents[2]


def _digits_mlp(classes: int = 10) -> nn.Module:
    return build_model("mlp", (1, 8, 8), classes, seed=0).eval()


def _problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return dict(info.value.problems)


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"byo_config_nets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import math
            from torch import nn

            def tiny(input_shape, num_classes):
                return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_configs_accept_every_architecture_form(
    smoke_config_dict: dict[str, Any], factory_module: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "victim.pt"
    torch.save(_digits_mlp().state_dict(), checkpoint)
    smoke_config_dict["victims"] = [
        {"dataset": "digits", "arch": "torchvision/resnet18", "epochs": 1},
        {"dataset": "digits", "arch": f"{factory_module}:tiny"},
        {"dataset": "digits", "arch": "mlp", "checkpoint": str(checkpoint)},
    ]
    smoke_config_dict["substitute_arch"] = f"{factory_module}:tiny"
    config = parse_config(smoke_config_dict)
    assert {m.victim.arch for m in config.matches()} == {
        "torchvision/resnet18",
        f"{factory_module}:tiny",
        "mlp",
    }


def test_configs_report_unknown_architecture_forms_at_their_paths(
    smoke_config_dict: dict[str, Any],
) -> None:
    smoke_config_dict["victims"][0]["arch"] = "torchvision/resnet9000"
    smoke_config_dict["substitute_arch"] = "no_such_module_anywhere:factory"
    problems = _problems(smoke_config_dict)
    assert "list_models" in problems["victims.0.arch"]
    assert "cannot import" in problems["substitute_arch"]


def test_configs_report_checkpoints_that_do_not_fit_by_file(
    smoke_config_dict: dict[str, Any], tmp_path: Path
) -> None:
    five = tmp_path / "five-classes.pt"
    torch.save(_digits_mlp(classes=5).state_dict(), five)
    fits = tmp_path / "fits.pt"
    torch.save(_digits_mlp().state_dict(), fits)
    smoke_config_dict["victims"] = [
        {"dataset": "digits", "arch": "mlp", "checkpoint": str(fits)},
        {"dataset": "digits", "arch": "mlp", "checkpoint": str(five)},
    ]
    problems = _problems(smoke_config_dict)
    assert list(problems) == ["victims.1.checkpoint"]
    assert "five-classes.pt" in problems["victims.1.checkpoint"]
    assert "[5, 128]" in problems["victims.1.checkpoint"]
    # a missing file is a schema problem, reported with the others of its kind
    smoke_config_dict["victims"][1]["checkpoint"] = str(tmp_path / "nowhere.pt")
    assert "not found" in _problems(smoke_config_dict)["victims.1"]


def test_the_cli_refuses_a_checkpoint_that_does_not_fit_with_exit_2_before_ray(
    smoke_config_dict: dict[str, Any], tmp_path: Path
) -> None:
    five = tmp_path / "five-classes.pt"
    torch.save(_digits_mlp(classes=5).state_dict(), five)
    smoke_config_dict["victims"] = [{"dataset": "digits", "arch": "mlp", "checkpoint": str(five)}]
    (tmp_path / "byo.yaml").write_text(yaml.safe_dump(smoke_config_dict))
    home = tmp_path / "home"
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(f\"PROBE ray={'ray' in sys.modules}\", file=sys.stderr))\n"
        "sys.argv = ['arena', *sys.argv[1:]]\n"
        "from orchestration.cli import main\n"
        "main()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", probe, "tournament", "byo.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
    )
    assert result.returncode == 2, result.stderr
    lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert any(
        line.startswith("victims.0.checkpoint:") and "five-classes.pt" in line for line in lines
    ), result.stderr
    assert "PROBE ray=False" in result.stderr and "Traceback" not in result.stderr
    assert not home.exists()


def test_the_runtime_checks_checkpoints_before_starting_ray(
    digits: DataSplits, tmp_path: Path
) -> None:
    """A library caller skipping the config check still gets the error before Ray starts."""
    five = tmp_path / "five-classes.pt"
    torch.save(_digits_mlp(classes=5).state_dict(), five)
    victim = VictimSpec(dataset="digits", arch="mlp", checkpoint=str(five))
    with MatchRuntime(RaySettings(), ArenaHome.at(tmp_path / "home"), "byo") as runtime:
        with pytest.raises(InvalidParameters, match=r"five-classes\.pt"):
            runtime.ensure_victim(victim)
        assert not runtime._ray_ready  # start_ray was never called


@pytest.mark.ray
def test_a_checkpoint_victim_is_served_by_a_ray_actor_from_its_state(
    ray_session: None, digits: DataSplits, tmp_path: Path
) -> None:
    """The actor never reads the file (deleted before it starts): the archive is in the state."""
    model = load_or_train(
        VictimSpec(dataset="digits", arch="mlp", epochs=5), digits, tmp_path / "trained"
    ).model.eval()
    path = tmp_path / "victim.pt2"
    program = torch.export.export(
        model, (digits.test.x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, path)
    spec = VictimSpec(dataset="digits", arch="mlp", checkpoint=str(path))
    victim = load_or_train(spec, digits, tmp_path / "cache")
    path.unlink()
    handle = start_victim_service(
        spec,
        (PluginSpec(name="none"),),
        ray.put(victim.model.state_dict()),
        InputSpec(shape=digits.input_shape),
        digits.num_classes,
    )
    try:
        proxy = RayServiceProxy(handle)
        proxy.open_account("thief", 20)
        x = digits.test.x[:20]
        served = Oracle(proxy, "thief").query(x)
        assert torch.allclose(served, predict_probs(model, x), atol=1e-5)
    finally:
        ray.kill(handle)


@pytest.mark.ray
def test_a_match_on_ray_against_a_torchscript_victim(
    ray_session: None, digits: DataSplits, tmp_path: Path
) -> None:
    """The runtime's whole path: checkpoint read by the driver, weights to the actor, a match."""
    model = load_or_train(
        VictimSpec(dataset="digits", arch="mlp", epochs=5), digits, tmp_path / "trained"
    ).model.eval()
    path = tmp_path / "victim.ts"
    torch.jit.save(torch.jit.trace(model, digits.test.x[:4]), str(path))  # type: ignore[no-untyped-call]
    victim = VictimSpec(dataset="digits", arch="mlp", checkpoint=str(path))
    spec = MatchSpec(
        victim=victim,
        defenses=(PluginSpec(name="rounding"),),
        attack=PluginSpec(name="knockoff", params={"epochs": 2}),
        budget=100,
    )
    with MatchRuntime(RaySettings(), ArenaHome.at(tmp_path / "home"), "byo-ray") as runtime:
        runtime.submit(spec)
        path.unlink()  # from here on only the weights the driver holds serve the victim
        finished = runtime.next_finished()
    assert isinstance(finished.outcome, MatchResult), finished.outcome
    expected = accuracy(predict_probs(model, digits.test.x), digits.test.y)
    assert finished.outcome.victim_accuracy == pytest.approx(expected)
    assert finished.outcome.victim_key == victim.key()
