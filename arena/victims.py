"""Victims: trained deterministically from their spec and cached on disk by the spec's hash.

A victim with a ``checkpoint`` is read from its file instead (never trained) and cached the same
way; its key holds the file's SHA-256, so a changed file is a new cache entry.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from arena.checkpoints import CHECK_BATCH, ArchiveModel, is_archive_state, load_checkpoint
from arena.data import DataSplits, Split
from arena.defenses.chain import DefenseChain
from arena.defenses.preparation import PrepareContext
from arena.home import ArenaHome
from arena.models import build_model
from arena.normalization import normalized, saved_normalization
from arena.specs import VictimSpec
from arena.training import TrainRecipe, accuracy, predict_probs, train_classifier
from arena.trees import DecisionTreeModule, fit_tree
from arena.zoo import ZooModule, ZooProfile, request_latency_ms


@dataclass(frozen=True)
class TrainedVictim:
    """A victim model with the figures measured when it was trained."""

    spec: VictimSpec
    model: nn.Module
    test_accuracy: float
    train_seconds: float
    from_cache: bool


def default_victim_cache() -> Path:
    """The victim cache of ``ARENA_HOME`` (for callers without a home: notebooks, scripts)."""
    return ArenaHome.from_environment().victims


def cache_path(spec: VictimSpec, cache_dir: Path) -> Path:
    """``<dataset>-<arch>-<key>.pt``: the key names the entry, the rest is for people. Dataset
    forms (``npz:/data/x.npz``) and architecture forms (``torchvision/resnet18``) hold characters
    a file name must not, and may be long: they are replaced and cut (registered names have none,
    so their entries keep their names)."""
    dataset, arch = (_file_safe(part) for part in (spec.dataset, spec.arch))
    return cache_dir / f"{dataset}-{arch}-{spec.key()}.pt"


def _file_safe(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[-limit:]


def build_victim_model(
    spec: VictimSpec, input_shape: tuple[int, ...], num_classes: int, state: dict[str, torch.Tensor]
) -> nn.Module:
    """Rebuild a victim's module from its weights (used wherever the victim is served). A
    checkpoint's archive travels in its state (:class:`arena.checkpoints.ArchiveModel`): the
    file itself is not read here."""
    if spec.checkpoint is not None and is_archive_state(state):
        return ArchiveModel.from_state(state).eval()
    if spec.arch == VictimSpec.TREE_ARCH:
        return DecisionTreeModule.from_state(state)
    if spec.members is not None:
        members = [
            build_victim_model(member, input_shape, num_classes, _substate(state, f"members.{i}."))
            for i, member in enumerate(spec.members)
        ]
        profile = ZooProfile(
            tuple(state["accuracy"].tolist()),
            tuple(state["latency_ms"].tolist()),
            int(state["reference_index"]),
        )
        return ZooModule(members, profile).eval()
    model = normalized(build_model(spec.arch, input_shape, num_classes), saved_normalization(state))
    model.load_state_dict(state)
    return model.eval()


def _substate(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_cached(spec: VictimSpec, data: DataSplits, cache_dir: Path) -> TrainedVictim | None:
    path = cache_path(spec, cache_dir)
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_victim_model(spec, data.input_shape, data.num_classes, saved["state_dict"])
    return TrainedVictim(spec, model, float(saved["test_accuracy"]), 0.0, from_cache=True)


def train_victim(
    spec: VictimSpec, data: DataSplits, cache_dir: Path | None = None, device: str = "cpu"
) -> TrainedVictim:
    """Train the victim from scratch; the same spec always gives the same weights on one setup.

    ``device``: where a neural victim trains (:func:`arena.devices.choose_device`); it is built
    on the CPU (the same initial weights anywhere) and returned there, ready to be cached.

    A ``decision_tree`` victim is fitted by scikit-learn instead (:func:`arena.trees.fit_tree`);
    a zoo loads or trains each member (cached as a victim of its own) and profiles them; a
    checkpoint victim is read from its file (:func:`load_checkpoint_victim`).
    """
    if spec.members is not None:
        return build_zoo(spec, data, cache_dir)
    if spec.checkpoint is not None:
        return load_checkpoint_victim(spec, data)
    training = victim_training_split(spec, data)
    x, y = training.x, training.y
    start = time.perf_counter()
    model: nn.Module
    if spec.arch == VictimSpec.TREE_ARCH:
        assert spec.max_depth is not None  # VictimSpec requires it for trees
        model = fit_tree(x, y, data.num_classes, spec.max_depth, spec.seed)
    else:
        network = build_model(spec.arch, data.input_shape, data.num_classes, seed=spec.seed)
        model = normalized(network, data.normalization)
        recipe = TrainRecipe(epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size)
        train_classifier(model, x, y, recipe, seed=spec.seed, device=device)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(predict_probs(model, data.test.x), data.test.y)
    return TrainedVictim(spec, model.cpu(), test_accuracy, seconds, from_cache=False)


def load_checkpoint_victim(spec: VictimSpec, data: DataSplits) -> TrainedVictim:
    """The victim a checkpoint file holds, checked on the first test images and its accuracy
    measured on the test split; its file must still have the content the spec is keyed by."""
    assert spec.checkpoint is not None
    start = time.perf_counter()
    model = load_checkpoint(
        spec.checkpoint,
        spec.arch,
        data.input_shape,
        data.num_classes,
        sha256=spec.checkpoint_sha256,
        batch=data.test.x[:CHECK_BATCH],
    )
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(predict_probs(model, data.test.x), data.test.y)
    return TrainedVictim(spec, model, test_accuracy, seconds, from_cache=False)


def build_zoo(spec: VictimSpec, data: DataSplits, cache_dir: Path | None) -> TrainedVictim:
    """A zoo's members (from the cache when there) profiled here: their test accuracy, and the
    latency of a single-image request measured on this machine. The zoo is then cached whole, so
    every later match selects with the same profile."""
    assert spec.members is not None
    start = time.perf_counter()
    members = [load_or_train(member, data, cache_dir) for member in spec.members]
    example = data.test.x[:1]
    latencies = tuple(request_latency_ms(m.model, example) for m in members)
    accuracies = tuple(m.test_accuracy for m in members)
    reference = spec.reference
    if reference is None:
        reference = max(range(len(members)), key=lambda i: (accuracies[i], -i))
    model = ZooModule([m.model for m in members], ZooProfile(accuracies, latencies, reference))
    seconds = time.perf_counter() - start
    return TrainedVictim(spec, model.eval(), accuracies[reference], seconds, from_cache=False)


def save_victim(victim: TrainedVictim, cache_dir: Path) -> Path:
    """Write atomically (temp file + rename) so a killed run never leaves a torn cache entry."""
    path = cache_path(victim.spec, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    payload = {
        "state_dict": victim.model.state_dict(),
        "test_accuracy": victim.test_accuracy,
        "spec": victim.spec.model_dump(mode="json"),
    }
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_or_train(
    spec: VictimSpec, data: DataSplits, cache_dir: Path | None = None
) -> TrainedVictim:
    """Load the cached victim for ``spec`` or train and cache it."""
    cache_dir = cache_dir or default_victim_cache()
    cached = load_cached(spec, data, cache_dir)
    if cached is not None:
        return cached
    victim = train_victim(spec, data, cache_dir)
    save_victim(victim, cache_dir)
    return victim


def victim_training_split(spec: VictimSpec, data: DataSplits) -> Split:
    """The images the victim is trained on: its split, cut to ``train_size`` when set. Defenses
    that train beside the victim, or take its training points as private (dataset inference),
    see exactly these."""
    train = data.victim_train
    if spec.train_size is None:
        return train
    return Split(train.x[: spec.train_size], train.y[: spec.train_size])


def prepare_context(spec: VictimSpec, data: DataSplits, cache_dir: Path | None) -> PrepareContext:
    """What the victim's defenses may train on: the victim's own split, cached beside it."""
    return PrepareContext(
        victim_key=spec.key(),
        victim_arch=spec.arch,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        train=victim_training_split(spec, data),
        seed=spec.seed,
        cache_dir=cache_dir or default_victim_cache(),
        public=data.test,
    )


def defended_model(
    spec: VictimSpec,
    model: nn.Module,
    chain: DefenseChain,
    data: DataSplits,
    cache_dir: Path | None = None,
) -> nn.Module:
    """The model a defended victim serves: its defenses prepared (trained or loaded from cache)."""
    return chain.prepare(model, prepare_context(spec, data, cache_dir))
