"""Typed, hashable specs: what a victim is, which plug-in with which settings, what a match is.

Specs are pydantic models so configs validate with dotted error paths, and canonical JSON gives
stable keys: the same spec always hashes to the same key on every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from arena.errors import brief
from arena.pool_source import pool_text

PoolName = Literal["in_distribution", "out_of_distribution", "none"]
"""the built-in query pools a threat model can grant (:mod:`arena.pools`)"""
PoolChoice = Annotated[str, BeforeValidator(pool_text)]
"""a built-in pool or another dataset's, ``dataset:NAME[?resize=..&channels=..]``, as canonical
text (:mod:`arena.pool_source`): the built-in names hash as they always did"""


class Spec(BaseModel):
    """Frozen, strict-keyed base for all specs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ()
    """plug-in version fields: shown in every dump (run params), but left out of the key form
    while at version 1, so the keys (and the seeds derived from them) of plug-ins that were never
    bumped are the ones they had before versions existed; a bump changes the key"""

    @model_serializer(mode="wrap")
    def _key_form(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict) and isinstance(info.context, dict) and info.context.get("key"):
            for name in self.VERSION_FIELDS:
                if data.get(name) == 1:
                    del data[name]
        return data

    def key(self) -> str:
        """Stable short hash of the canonical JSON form."""
        form = self.model_dump(mode="json", context={"key": True})
        canonical = json.dumps(form, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class PluginSpec(Spec):
    """A registered plug-in by name with its hyperparameters."""

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("version",)

    name: str = Field(min_length=1)
    """the registered name (``arena list``)"""
    params: dict[str, Any] = Field(default_factory=dict)
    """hyperparameters; those left out take the plug-in's defaults"""
    version: PositiveInt = 1
    """the registered plug-in's version when the spec was made (:mod:`arena.versions`)"""


class VictimSpec(Spec):
    """A victim: dataset, architecture and training recipe. Trained deterministically from it.

    ``arch="decision_tree"`` is a scikit-learn decision tree (:mod:`arena.trees`): it needs
    ``max_depth`` and ignores ``epochs``, ``lr`` and ``batch_size`` (trees are not trained by
    gradient descent); ``train_size`` and ``seed`` apply as for the other architectures.

    With ``checkpoint`` the victim is an already-trained model read from that file and never
    trained (:mod:`arena.checkpoints`): ``epochs``, ``lr``, ``batch_size`` and ``train_size`` are
    ignored. ``arch`` builds the model of a state-dict checkpoint; a TorchScript or torch.export
    archive carries its own, and ``arch`` is then only the architecture the thieves' substitutes
    (unless ``substitute_arch`` is set) and the defenses' own models are built from.
    """

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("arch_version", "dataset_version")
    TREE_ARCH: ClassVar[str] = "decision_tree"
    ZOO_ARCH: ClassVar[str] = "zoo"
    MAX_TREE_DEPTH: ClassVar[int] = 16
    """deepest servable tree: the serving layout holds ``2**max_depth`` leaves"""

    dataset: str = "fashion_mnist"
    """a registered dataset, ``imagefolder:PATH`` or ``npz:PATH``"""
    arch: str = "lenet5"
    """a registered architecture, ``torchvision/<name>`` or ``package.module:factory``"""
    epochs: PositiveInt = 15
    """training epochs of the victim"""
    lr: PositiveFloat = 3e-3
    """the victim's training learning rate"""
    batch_size: PositiveInt = 128
    """the victim's training batch size"""
    train_size: PositiveInt | None = None
    """use only the first N images of the victim split (small test victims)"""
    seed: NonNegativeInt = 0
    """the victim's training seed"""
    checkpoint: str | None = Field(default=None, min_length=1, exclude_if=lambda v: v is None)
    """a trained model to serve (a path, relative to the working directory of the process
    reading it: the driver). Left out of the canonical form while unset, like max_depth"""
    checkpoint_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", exclude_if=lambda v: v is None
    )
    """the checkpoint's SHA-256, read from the file when the spec is made unless given: part of
    the key, so a changed file is a new victim (and a stale spec is refused when loading)"""
    max_depth: int | None = Field(
        default=None, ge=1, le=MAX_TREE_DEPTH, exclude_if=lambda v: v is None
    )
    """decision trees only, and required there: the tree's depth limit, 1..16. Left out of the
    canonical form (and so of every key) while unset, so the keys of other victims are the ones
    they had before trees existed"""
    members: tuple[VictimSpec, ...] | None = Field(
        default=None, min_length=2, exclude_if=lambda v: v is None
    )
    """model zoos only (``arch: zoo``), and required there: the victims behind the zoo, of the
    zoo's dataset (:mod:`arena.zoo`). Left out of the canonical form while unset"""
    reference: int | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    """model zoos only: the index in ``members`` of the model the owner protects, against which
    fidelity, utility and the victim's accuracy are measured; unset: the most accurate member"""
    arch_version: PositiveInt = 1
    """the registered architecture's version (:mod:`arena.versions`); a bump retrains"""
    dataset_version: PositiveInt = 1
    """the registered dataset's version (:mod:`arena.versions`); a bump retrains"""

    @model_validator(mode="before")
    @classmethod
    def _hash_checkpoint(cls, data: Any) -> Any:
        """Key a checkpoint victim by its file's content (a spec read back from a record keeps
        the hash it was made with, even where the file is not)."""
        if isinstance(data, dict) and data.get("checkpoint") and not data.get("checkpoint_sha256"):
            path = data["checkpoint"]
            if isinstance(path, str) and Path(path).expanduser().is_file():
                return {**data, "checkpoint_sha256": _file_sha256(Path(path).expanduser())}
        return data

    @model_validator(mode="after")
    def _checkpoint_of_a_network(self) -> VictimSpec:
        if self.checkpoint is None:
            if self.checkpoint_sha256 is not None:
                raise ValueError("checkpoint_sha256 applies to a victim with a checkpoint only")
            return self
        if self.checkpoint_sha256 is None:
            raise ValueError(
                f"checkpoint file {brief(self.checkpoint)} not found; give the path of a saved "
                "model (relative paths are from the working directory)"
            )
        if self.arch in (self.TREE_ARCH, self.ZOO_ARCH):
            raise ValueError(
                f"a checkpoint is a neural network: arch {self.arch!r} cannot have one; name "
                "the checkpoint's architecture (e.g. lenet5, torchvision/resnet18)"
            )
        return self

    @model_validator(mode="after")
    def _max_depth_for_trees_only(self) -> VictimSpec:
        if self.arch == self.TREE_ARCH and self.max_depth is None:
            raise ValueError(
                f"arch {self.TREE_ARCH!r} needs max_depth, an integer in 1..{self.MAX_TREE_DEPTH}"
            )
        if self.arch != self.TREE_ARCH and self.max_depth is not None:
            raise ValueError(
                f"max_depth applies to arch {self.TREE_ARCH!r} only, not to {self.arch!r}"
            )
        return self

    @model_validator(mode="after")
    def _members_for_zoos_only(self) -> VictimSpec:
        zoo = self.ZOO_ARCH
        if self.arch != zoo:
            if self.members is not None or self.reference is not None:
                raise ValueError(f"members and reference apply to arch {zoo!r} only")
            return self
        if self.members is None:
            raise ValueError(f"arch {zoo!r} needs members: a list of at least 2 victims")
        for i, member in enumerate(self.members):
            if member.arch == zoo:
                raise ValueError(f"members.{i}: a zoo cannot contain another zoo")
            if member.dataset != self.dataset:
                raise ValueError(
                    f"members.{i}: dataset {member.dataset!r} differs from the zoo's "
                    f"{self.dataset!r} (a zoo serves one task)"
                )
        if self.reference is not None and self.reference >= len(self.members):
            raise ValueError(
                f"reference {self.reference} is not a member index (0..{len(self.members) - 1})"
            )
        return self

    @property
    def is_zoo(self) -> bool:
        return self.arch == self.ZOO_ARCH


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class BenignSpec(Spec):
    """Benign callers sharing the victim service with the thief, each with its own account: the
    population a detector's false positives and a proof of work's benign cost are measured on.

    Callers stream test images in random orders (each its own), at the batch sizes listed (caller
    ``i`` uses ``batch_sizes[i % len]``); the last ``boundary_callers`` of them stream the test
    images nearest the victim's class boundaries (smallest margin between its top two
    probabilities, the hardest honest traffic there is) instead of all of them."""

    callers: PositiveInt = 4
    """benign accounts per match"""
    batch_sizes: tuple[PositiveInt, ...] = Field(default=(16, 64, 256), min_length=1)
    """query batch sizes, assigned to callers in turn"""
    boundary_callers: NonNegativeInt = 1
    """of the callers, how many stream near-boundary images (the most ambiguous fifth of the
    test set)"""
    queries: PositiveInt | None = None
    """queries per caller; ``None``: as many as the match's budget. A caller never sends an image
    twice, so it stops early when it runs out of images"""

    @model_validator(mode="after")
    def _boundary_within_callers(self) -> BenignSpec:
        if self.boundary_callers > self.callers:
            raise ValueError(
                f"boundary_callers ({self.boundary_callers}) cannot exceed callers ({self.callers})"
            )
        return self


class MatchSpec(Spec):
    """One match: a victim behind a defense chain, one attacker, one budget, one seed."""

    victim: VictimSpec
    defenses: tuple[PluginSpec, ...]
    attack: PluginSpec
    budget: PositiveInt
    seed: NonNegativeInt = 0
    pool: PoolChoice = "in_distribution"
    """the attacker's unlabeled query pool (DESIGN §1 knowledge; see :mod:`arena.pools`)"""
    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("substitute_arch_version",)

    substitute_arch: str | None = None
    """the thief's architecture; ``None`` means the victim's"""
    substitute_arch_version: PositiveInt = 1
    """the registered substitute architecture's version (:mod:`arena.versions`)"""
    removal: PluginSpec | None = Field(default=None, exclude_if=lambda v: v is None)
    """a watermark-removal attack the thief applies to its model before it is checked
    (:mod:`arena.removal`); ``None``: none, and left out of the key"""
    benign: BenignSpec | None = Field(default=None, exclude_if=lambda v: v is None)
    """the benign callers beside the thief when the chain has a detector (:mod:`arena.benign`);
    ``None``: one caller streaming the test set in random order at batch 256, as many queries as
    the budget, and left out of the key"""
