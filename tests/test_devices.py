"""The one device choice, training where the model is, and mixed precision, all on the CPU.

No GPU here: these tests check which device each part asks for and that the CPU path computes
exactly what it computed before devices existed; nothing in them runs CUDA code.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from arena_testkit import ServiceFactory
from torch import nn

from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.devices import CPU, DeviceUnavailable, autocast_dtype, choose_device
from arena.match_data import MatchData
from arena.models import build_model
from arena.oracle import Oracle
from arena.registry import build_plugin
from arena.training import TrainRecipe, accuracy, model_device, predict_probs, train_classifier


def test_no_gpus_means_the_cpu_whatever_cuda_says() -> None:
    assert choose_device(0) == CPU
    assert choose_device(0.0, cuda_available=lambda: True) == CPU


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1, 2])
def test_gpus_given_pick_cuda_when_torch_has_it(gpus: float) -> None:
    assert choose_device(gpus, cuda_available=lambda: True) == torch.device("cuda")


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1])
def test_gpus_given_without_cuda_is_a_clear_error_not_a_fallback(gpus: float) -> None:
    with pytest.raises(DeviceUnavailable, match=r"given .* GPU.* no CUDA"):
        choose_device(gpus, cuda_available=lambda: False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_half_a_gpu_on_this_cpu_only_machine_is_refused() -> None:
    with pytest.raises(DeviceUnavailable):
        choose_device(0.5)


@pytest.mark.parametrize("gpus", [-0.25, math.nan])
def test_a_negative_or_nan_share_is_a_value_error(gpus: float) -> None:
    with pytest.raises(ValueError, match="gpus"):
        choose_device(gpus)


def test_autocast_precision_per_device() -> None:
    assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype(torch.device("cuda")) == torch.float16


def _reference_fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, seed: int
) -> nn.Module:
    """The fit ``train_classifier`` ran before devices existed, spelled out: CPU shuffles,
    Adam, cosine schedule, cross-entropy, every op in float32. Its weights are the bar the
    default path must match bit for bit."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    n = int(x.shape[0])
    steps = recipe.epochs * -(-n // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
    return model.eval()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_full_precision_training_is_bit_identical_to_the_pre_device_loop(
    digits_data: DataSplits,
) -> None:
    x, y = digits_data.victim_train.x[:300], digits_data.victim_train.y[:300]
    recipe = TrainRecipe(epochs=2, batch_size=32)
    shape = digits_data.input_shape
    reference = _reference_fit(build_model("mlp", shape, 10, seed=3), x, y, recipe, 5)
    default = train_classifier(build_model("mlp", shape, 10, seed=3), x, y, recipe, seed=5)
    explicit = train_classifier(
        build_model("mlp", shape, 10, seed=3), x, y, recipe, 5, "cpu", mixed_precision=False
    )
    for trained in (default, explicit):
        for got, want in zip(_weights(trained), _weights(reference), strict=True):
            assert torch.equal(got, want)


class _DtypeProbe:
    """Records the dtype of a layer's output on every training forward pass."""

    def __init__(self, layer: nn.Module) -> None:
        self.seen: set[torch.dtype] = set()
        layer.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if module.training:
            self.seen.add(output.dtype)


def test_mixed_precision_trains_under_bf16_autocast_and_still_learns(
    digits_data: DataSplits,
) -> None:
    recipe = TrainRecipe(epochs=8, batch_size=64, lr=3e-3)
    train, test = digits_data.victim_train, digits_data.test
    models = {}
    for mixed in (False, True):
        model = build_model("mlp", digits_data.input_shape, 10, seed=0)
        first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
        probe = _DtypeProbe(first_linear)
        models[mixed] = train_classifier(
            model, train.x, train.y, recipe, seed=1, mixed_precision=mixed
        )
        assert probe.seen == ({torch.bfloat16} if mixed else {torch.float32})
    mixed_accuracy = accuracy(predict_probs(models[True], test.x), test.y)
    assert mixed_accuracy > 0.5, mixed_accuracy  # ten classes: chance is 0.1
    # the weights stay float32 (autocast casts per op) and differ from the full-precision run
    params = list(models[True].parameters())
    assert all(p.dtype == torch.float32 for p in params)
    full = list(models[False].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(params, full, strict=True))


def test_training_follows_the_model_and_predictions_come_back_on_the_cpu(
    digits_data: DataSplits,
) -> None:
    model = build_model("softmax_regression", digits_data.input_shape, 10, seed=0)
    x, y = digits_data.victim_train.x[:64], digits_data.victim_train.y[:64]
    train_classifier(model, x, y, TrainRecipe(epochs=1), seed=0)
    assert model_device(model) == CPU
    assert predict_probs(model, x).device == CPU
    assert model_device(nn.Sequential()) == CPU  # no parameters: the CPU, not StopIteration


def test_knowledge_defaults_to_the_cpu_and_carries_the_match_settings(
    digits_data: DataSplits,
) -> None:
    knowledge = MatchData.from_splits(digits_data).knowledge("mlp", upper_bound=False)
    assert (knowledge.device, knowledge.mixed_precision) == ("cpu", False)
    assert model_device(knowledge.make_substitute(0)) == CPU


@pytest.mark.parametrize("attack", ["knockoff", "jbda", "dfme"])
def test_the_mixed_precision_switch_reaches_the_thief(
    digits_data: DataSplits, make_service: ServiceFactory, attack: str
) -> None:
    """Through Knowledge the flag changes the thief's substitute (proof it is used); off, an
    explicit ``device="cpu"`` knowledge steals exactly what the default one steals."""
    service = make_service()
    params = {"knockoff": {"epochs": 2}, "jbda": {"epochs": 2, "round_epochs": 2, "seed_size": 40}}
    params["dfme"] = {"replay_steps": 20}
    pool = "none" if attack == "dfme" else "in_distribution"
    base = MatchData.from_splits(digits_data, pool).knowledge("mlp", upper_bound=False)
    knowledges = {
        "default": base,
        "cpu": replace(base, device="cpu"),
        "mixed": replace(base, mixed_precision=True),
    }
    stolen = {}
    for name, knowledge in knowledges.items():
        attacker = build_plugin(ATTACKS, attack, params[attack])
        service.open_account(f"{attack}-{name}", 200)
        oracle = Oracle(service, f"{attack}-{name}")
        model = attacker.steal(oracle, knowledge, np.random.default_rng(0))
        assert model_device(model) == CPU
        stolen[name] = _weights(model)
    same = [torch.equal(a, b) for a, b in zip(stolen["default"], stolen["cpu"], strict=True)]
    assert all(same)
    differs = [torch.equal(a, b) for a, b in zip(stolen["default"], stolen["mixed"], strict=True)]
    assert not all(differs)


def test_batch_norm_models_skip_a_last_batch_of_one_image() -> None:
    """A ResNet on 32x32 images has 1x1 features at its last block: batch norm cannot train on
    one such image, so a transfer set of ``batch_size * k + 1`` images must not crash it; models
    without batch norm still train on that last image (their training is unchanged)."""
    from arena.models import build_model
    from arena.training import TrainRecipe, train_classifier

    x = torch.rand(33, 3, 32, 32)
    y = torch.arange(33) % 10
    recipe = TrainRecipe(epochs=1, lr=1e-3, batch_size=32)
    resnet = build_model("torchvision/resnet18", (3, 32, 32), 10, seed=0)
    train_classifier(resnet, x, y, recipe, seed=0)  # raised ValueError before

    plain = build_model("mlp", (3, 32, 32), 10, seed=0)
    before = [p.detach().clone() for p in plain.parameters()]
    train_classifier(plain, x[:1], y[:1], TrainRecipe(epochs=1, lr=1e-3, batch_size=32), seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, plain.parameters(), strict=True))
