"""Bring your own victim: torchvision and user-factory architectures, victims from checkpoints.

Every model here is real: torchvision models built untrained (weights=None, nothing is
downloaded), factories imported from modules the tests write, checkpoints saved by the tests
from a trained digits victim in each of the three forms.
"""

from __future__ import annotations

import copy
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from arena_testkit import match_spec
from pydantic import ValidationError
from torch import nn

from arena.checkpoints import load_checkpoint
from arena.data import DataSplits
from arena.errors import ArenaError, InvalidParameters
from arena.knowledge import Knowledge
from arena.match_data import MatchData
from arena.models import build_model, lenet5, resolve_architecture
from arena.referee import referee_match
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.training import accuracy, predict_probs
from arena.victims import TrainedVictim, build_victim_model, cache_path, load_or_train

Save = Callable[[nn.Module, Path, torch.Tensor], None]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, message
    return message


# ---- architectures: torchvision/<name> ---------------------------------------------------------


@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_torchvision_resnet18_fits_grey_and_rgb_tasks_and_is_seeded(
    shape: tuple[int, ...], classes: int
) -> None:
    model = build_model("torchvision/resnet18", shape, classes, seed=7)
    conv = model.conv1
    assert isinstance(conv, nn.Conv2d)
    assert conv.in_channels == shape[0]
    # only the channels change: torchvision's stem is kept as it is
    assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        64,
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert conv.bias is None
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(4, *shape)).shape == (4, classes)
    assert _same_weights(model, build_model("torchvision/resnet18", shape, classes, seed=7))
    assert not _same_weights(model, build_model("torchvision/resnet18", shape, classes, seed=8))


def test_registered_architectures_build_exactly_as_before() -> None:
    """The resolver must not change a registered model's weights (victim caches depend on it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        direct = lenet5((1, 28, 28), 10)
    assert _same_weights(build_model("lenet5", (1, 28, 28), 10, seed=3), direct)


def test_a_model_too_big_for_the_images_is_an_error_when_built() -> None:
    with pytest.raises(InvalidParameters) as info:
        build_model("torchvision/inception_v3", (1, 28, 28), 10, seed=0)
    message = _one_line(info.value)
    assert "torchvision/inception_v3" in message and "[1, 28, 28]" in message


def test_an_unknown_torchvision_model_says_how_to_list_them() -> None:
    with pytest.raises(InvalidParameters) as info:
        resolve_architecture("torchvision/resnet9000")
    message = _one_line(info.value)
    assert "resnet9000" in message and "list_models" in message


def test_an_unknown_registered_name_lists_the_known_ones() -> None:
    with pytest.raises(ArenaError, match="lenet5"):
        resolve_architecture("lenet9000")


# ---- architectures: package.module:factory -----------------------------------------------------

FACTORY_MODULE = """
    import math
    from torch import nn

    def tiny(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    def five_classes(input_shape, num_classes):
        return tiny(input_shape, 5)

    def not_a_module(input_shape, num_classes):
        return "a string"

    def raises(input_shape, num_classes):
        raise KeyError("no such layer")

    class Builders:
        @staticmethod
        def wide(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    NOT_CALLABLE = 3
"""


def _write_module(root: Path, name: str, text: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of factories written to ``tmp_path`` and importable (a unique name per test)."""
    name = f"byo_nets_{tmp_path.name.replace('-', '_')}"
    _write_module(tmp_path, name, FACTORY_MODULE)
    _write_module(tmp_path, f"{name}_broken", "raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_user_factory_builds_victims_and_substitutes_deterministically(
    user_module: str,
) -> None:
    arch = f"{user_module}:tiny"
    model = build_model(arch, (1, 8, 8), 10, seed=1)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert _same_weights(model, build_model(arch, (1, 8, 8), 10, seed=1))
    assert not _same_weights(model, build_model(arch, (1, 8, 8), 10, seed=2))
    nested = build_model(f"{user_module}:Builders.wide", (1, 8, 8), 10, seed=1)
    assert isinstance(nested, nn.Sequential)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("five_classes", "logits [2, 10]"),
        ("not_a_module", "not a torch.nn.Module"),
        ("raises", "KeyError"),
        ("NOT_CALLABLE", "not callable"),
        ("missing", "has no attribute"),
    ],
)
def test_a_user_factory_that_does_not_fit_is_one_line(
    user_module: str, attribute: str, expected: str
) -> None:
    arch = f"{user_module}:{attribute}"
    with pytest.raises(InvalidParameters) as info:
        build_model(arch, (1, 8, 8), 10)
    message = _one_line(info.value)
    assert expected in message and attribute in message


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [("_broken:tiny", "broken on import"), ("_absent:tiny", "cannot import"), (":", "both parts")],
)
def test_a_factory_module_that_does_not_import_is_one_line(
    user_module: str, suffix: str, expected: str
) -> None:
    with pytest.raises(InvalidParameters) as info:
        resolve_architecture(user_module + suffix)
    assert expected in _one_line(info.value)


def test_substitutes_take_every_architecture_form(user_module: str) -> None:
    for arch in ("torchvision/resnet18", f"{user_module}:tiny", "mlp"):
        knowledge = Knowledge(
            pool=None,
            pool_name="none",
            input_shape=(1, 8, 8),
            num_classes=10,
            substitute_arch=arch,
        )
        first, again = knowledge.make_substitute(seed=4), knowledge.make_substitute(seed=4)
        assert _same_weights(first, again)
        assert first.eval()(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_a_defense_surrogate_takes_every_architecture_form(user_module: str) -> None:
    from arena.defenses import DEFENSES
    from arena.registry import build_plugin

    for arch in ("torchvision/resnet18", f"{user_module}:tiny"):
        build_plugin(DEFENSES, "mad", {"surrogate_arch": arch})
    with pytest.raises(InvalidParameters, match="surrogate_arch"):
        build_plugin(DEFENSES, "mad", {"surrogate_arch": "torchvision/resnet9000"})


# ---- victims from checkpoints ------------------------------------------------------------------


def _save_state_dict(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.save(model.state_dict(), path)


def _save_wrapped_state_dict(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.save({"state_dict": model.state_dict(), "epoch": torch.tensor(3)}, path)


def _save_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.jit.save(torch.jit.trace(model, example), str(path))  # type: ignore[no-untyped-call]


def _save_export(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


FORMS: dict[str, Save] = {
    "state_dict": _save_state_dict,
    "wrapped_state_dict": _save_wrapped_state_dict,
    "torchscript": _save_torchscript,
    "export": _save_export,
}


@pytest.fixture(scope="module")
def trained(digits_victim: TrainedVictim) -> nn.Module:
    """The session's trained digits MLP (its checkpoints are the tests' own files)."""
    return digits_victim.model.eval()


def _checkpoint_spec(path: Path, **fields: object) -> VictimSpec:
    return VictimSpec.model_validate(
        {"dataset": "digits", "arch": "mlp", "checkpoint": str(path), **fields}
    )


@pytest.mark.parametrize("form", FORMS)
def test_a_checkpoint_victim_serves_the_saved_model(
    form: str, trained: nn.Module, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / f"victim-{form}.bin"  # the form is read from the contents, not the name
    FORMS[form](trained, path, digits_data.test.x[:4])
    spec = _checkpoint_spec(path, epochs=1)  # training fields are ignored: it is never trained
    expected = predict_probs(trained, digits_data.test.x)
    cache = tmp_path / "cache"

    victim = load_or_train(spec, digits_data, cache)
    assert torch.allclose(predict_probs(victim.model, digits_data.test.x), expected, atol=1e-6)
    assert victim.test_accuracy == pytest.approx(accuracy(expected, digits_data.test.y))
    assert not victim.from_cache and cache_path(spec, cache).is_file()

    # the Ray path: rebuilt from its state alone, the file gone
    state = victim.model.state_dict()
    path.unlink()
    rebuilt = build_victim_model(spec, digits_data.input_shape, digits_data.num_classes, state)
    assert torch.allclose(predict_probs(rebuilt, digits_data.test.x), expected, atol=1e-6)
    again = load_or_train(spec, digits_data, cache)
    assert again.from_cache and again.test_accuracy == victim.test_accuracy
    assert torch.allclose(predict_probs(again.model, digits_data.test.x), expected, atol=1e-6)
    # a Ray task returns it pickled; a defense's surrogate may deep-copy it
    for copied in (pickle.loads(pickle.dumps(victim.model)), copy.deepcopy(victim.model)):
        assert torch.allclose(predict_probs(copied, digits_data.test.x), expected, atol=1e-6)


def test_a_checkpoint_key_follows_the_file_content(trained: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "victim.pt"
    torch.save(trained.state_dict(), path)
    first = _checkpoint_spec(path)
    assert first.key() == _checkpoint_spec(path).key()
    assert first.key() != VictimSpec(dataset="digits", arch="mlp").key()
    changed = {k: v + 1 for k, v in trained.state_dict().items()}
    torch.save(changed, path)
    second = _checkpoint_spec(path)
    assert second.key() != first.key()
    assert second.checkpoint_sha256 != first.checkpoint_sha256
    # a spec read back from a record keeps its hash (and key) even where the file is not
    path.unlink()
    restored = VictimSpec.model_validate(first.model_dump(mode="json"))
    assert restored.key() == first.key()


def test_a_stale_checkpoint_spec_is_refused(
    trained: nn.Module, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "victim.pt"
    torch.save(trained.state_dict(), path)
    spec = _checkpoint_spec(path)
    torch.save({k: v * 2 for k, v in trained.state_dict().items()}, path)
    with pytest.raises(InvalidParameters) as info:
        load_or_train(spec, digits_data, tmp_path / "cache")
    assert "changed since" in _one_line(info.value) and "victim.pt" in str(info.value)


def test_victim_keys_without_checkpoints_are_unchanged() -> None:
    """Computed on main before checkpoints existed: the keys (and seeds, caches) must not move."""
    assert VictimSpec().key() == "0ca814ff7df615c8"
    assert VictimSpec(dataset="digits", arch="mlp", epochs=20).key() == "d842788903f713da"
    tree = VictimSpec(dataset="digits", arch="decision_tree", max_depth=4)
    assert tree.key() == "04747d39ca173cb5"
    match = MatchSpec(
        victim=VictimSpec(),
        defenses=(PluginSpec(name="none"),),
        attack=PluginSpec(name="knockoff"),
        budget=100,
    )
    assert match.key() == "60ca8fab031a7a22"
    assert "checkpoint" not in VictimSpec().model_dump()


def test_a_missing_checkpoint_or_one_on_a_tree_is_a_spec_error(
    trained: nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="not found"):
        _checkpoint_spec(tmp_path / "nowhere.pt")
    path = tmp_path / "victim.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(ValidationError, match="neural network"):
        _checkpoint_spec(path, arch="decision_tree", max_depth=3)
    with pytest.raises(InvalidParameters, match="not found"):
        load_checkpoint(str(tmp_path / "nowhere.pt"), "mlp", (1, 8, 8), 10)


def _mlp(shape: tuple[int, ...], classes: int) -> nn.Sequential:
    model = build_model("mlp", shape, classes, seed=0).eval()
    assert isinstance(model, nn.Sequential)
    return model


def _write_mismatches(root: Path, trained: nn.Module) -> dict[str, tuple[Path, str, str]]:
    """Checkpoints that do not fit the digits task or their arch: name -> (file, arch, what
    the error must say)."""
    digits_batch = torch.rand(4, 1, 8, 8)
    files: dict[str, tuple[Path, str, str]] = {}

    def add(name: str, arch: str, expected: str, save: Callable[[Path], object]) -> None:
        path = root / f"{name}.pt"
        save(path)
        files[name] = (path, arch, expected)

    add(
        "other_arch",
        "softmax_regression",
        "unexpected keys",
        lambda p: torch.save(trained.state_dict(), p),
    )
    add(
        "missing_keys",
        "mlp",
        "missing keys",
        lambda p: torch.save(_mlp((1, 8, 8), 10)[:2].state_dict(), p),
    )
    add(
        "other_classes",
        "mlp",
        "in the file and",
        lambda p: torch.save(_mlp((1, 8, 8), 5).state_dict(), p),
    )
    add(
        "script_other_classes",
        "mlp",
        "logits [3, 10]",
        lambda p: _save_torchscript(_mlp((1, 8, 8), 5), p, digits_batch),
    )
    add(
        "script_other_images",
        "mlp",
        "shapes cannot be multiplied",
        lambda p: _save_torchscript(_mlp((1, 28, 28), 10), p, torch.rand(4, 1, 28, 28)),
    )
    add(
        "export_one_batch_size",
        "mlp",
        "dynamic batch",
        lambda p: torch.export.save(torch.export.export(trained, (digits_batch,)), p),
    )
    add("pickled_module", "mlp", "whole model", lambda p: torch.save(trained, p))
    add("not_a_model", "mlp", "not a state dict", lambda p: p.write_bytes(b"hello"))
    add("not_tensors", "mlp", "not a tensor", lambda p: torch.save({"w": [1, 2]}, p))
    return files


def test_checkpoints_that_do_not_fit_are_one_line_naming_the_file(
    trained: nn.Module, digits_data: DataSplits, tmp_path: Path
) -> None:
    for name, (path, arch, expected) in _write_mismatches(tmp_path, trained).items():
        spec = _checkpoint_spec(path, arch=arch)
        with pytest.raises(InvalidParameters) as info:
            load_or_train(spec, digits_data, tmp_path / "cache")
        message = _one_line(info.value)
        assert expected in message and path.name in message, (name, message)


def test_a_zoo_member_may_be_a_checkpoint(
    trained: nn.Module, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "member.pt"
    _save_torchscript(trained, path, digits_data.test.x[:4])
    member = _checkpoint_spec(path)
    zoo = VictimSpec(
        dataset="digits",
        arch="zoo",
        reference=0,
        members=(member, VictimSpec(dataset="digits", arch="softmax_regression", epochs=2)),
    )
    victim = load_or_train(zoo, digits_data, tmp_path / "cache")
    expected = predict_probs(trained, digits_data.test.x)
    assert victim.test_accuracy == pytest.approx(accuracy(expected, digits_data.test.y))
    state = victim.model.state_dict()
    path.unlink()
    rebuilt = build_victim_model(zoo, digits_data.input_shape, digits_data.num_classes, state)
    assert torch.allclose(predict_probs(rebuilt, digits_data.test.x), expected, atol=1e-6)


# ---- whole matches -----------------------------------------------------------------------------


def _play(spec: MatchSpec, data: DataSplits, cache: Path) -> tuple[float, float]:
    service = build_service(spec.victim, spec.defenses, data, cache)
    result = referee_match(spec, service, MatchData.from_splits(data, spec.pool))
    assert result.queries_used == spec.budget
    return result.victim_accuracy, result.stolen_accuracy


def test_a_match_against_a_torchscript_victim(
    trained: nn.Module, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "victim.pt"
    _save_torchscript(trained, path, digits_data.test.x[:4])
    spec = match_spec(_checkpoint_spec(path), ["rounding"], budget=200)
    victim_accuracy, stolen = _play(spec, digits_data, tmp_path / "cache")
    expected = accuracy(predict_probs(trained, digits_data.test.x), digits_data.test.y)
    assert victim_accuracy == pytest.approx(expected)
    assert stolen > 0.3  # the thief learns something from the served answers


def test_a_match_against_a_torchvision_victim(digits_data: DataSplits, tmp_path: Path) -> None:
    victim = VictimSpec(dataset="digits", arch="torchvision/resnet18", epochs=1, train_size=64)
    spec = match_spec(victim, budget=100).model_copy(update={"substitute_arch": "mlp"})
    victim_accuracy, stolen = _play(spec, digits_data, tmp_path / "cache")
    assert 0.0 <= victim_accuracy <= 1.0 and 0.0 <= stolen <= 1.0
    assert cache_path(victim, tmp_path / "cache").parent == tmp_path / "cache"
