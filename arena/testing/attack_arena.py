"""The victims attacks are checked against: the digits MLP and a digits model zoo, trained in
this process (seconds, nothing written to disk) and served behind any defense chain."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from copy import deepcopy as copy_module

import torch
from torch import nn

from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.knowledge import API, DATA_ACCESS, MODEL_ACCESS, Knowledge
from arena.oracle import InputSpec
from arena.service import VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import train_victim
from arena.zoo import ZooModule, ZooProfile

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=20)
ZOO_MEMBERS = (
    VictimSpec(dataset="digits", arch="softmax_regression", epochs=2, train_size=300),
    VictimSpec(dataset="digits", arch="softmax_regression", epochs=20),
    VICTIM,
)
ZOO_LATENCY_MS = (0.02, 0.05, 0.1)
"""pinned, not measured: which member serves a request must not depend on timing noise, or a
zoo thief could not replay its own match"""


class AttackArena:
    """A dataset, a victim and a zoo around it; each service is fresh (new accounts, new
    ledger). Without a zoo given, one is trained the first time a zoo thief needs it."""

    def __init__(self, data: DataSplits, victim: nn.Module, zoo: ZooModule | None = None) -> None:
        self.data = data
        self.victim = victim
        self._zoo = zoo

    @property
    def zoo(self) -> ZooModule:
        if self._zoo is None:
            self._zoo = train_zoo(self.data, self.victim)
        return self._zoo

    def service(self, defenses: Sequence[PluginSpec] = (), zoo: bool = False) -> VictimService:
        """The victim (or the zoo) behind ``defenses``, which must not need preparing."""
        chain = build_chain(defenses)
        model = self.zoo if zoo else self.victim
        spec = InputSpec(shape=self.data.input_shape)
        return VictimService(model, chain, spec, self.data.num_classes)

    def knowledge(
        self, pool: bool = True, pool_labels: bool = False, threat_model: str = API
    ) -> Knowledge:
        """What the referee grants a thief: the attacker pool (its labels only to an upper
        bound), an MLP substitute, and to a privileged threat model its privilege: a copy of
        the victim (``model_access``) or the victim's training split (``data_access``)."""
        granted = self.data.attacker_pool
        copy = copy_module(self.victim) if threat_model == MODEL_ACCESS else None
        return Knowledge(
            pool=granted.x if pool else None,
            pool_name="in_distribution",
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
            substitute_arch="mlp",
            pool_labels=granted.y if pool and pool_labels else None,
            victim_copy=copy,
            victim_train=self.data.victim_train if threat_model == DATA_ACCESS else None,
        )


def train_zoo(data: DataSplits, victim: nn.Module) -> ZooModule:
    """Two softmax regressions (an under-trained one and a trained one, the reference) beside
    ``victim``, with pinned latencies."""
    members = [train_victim(spec, data) for spec in ZOO_MEMBERS[:-1]]
    models = [*(m.model for m in members), victim]
    accuracy = (*(m.test_accuracy for m in members), accuracy_of(victim, data))
    return ZooModule(models, ZooProfile(accuracy, ZOO_LATENCY_MS, 1)).eval()


@functools.cache
def digits_arena() -> AttackArena:
    """The digits arena, its victim trained once per process."""
    data = load_dataset("digits")
    return AttackArena(data, train_victim(VICTIM, data).model)


def accuracy_of(model: nn.Module, data: DataSplits) -> float:
    """Top-1 accuracy of ``model`` on the test split."""
    with torch.no_grad():
        predictions = model(data.test.x).argmax(dim=1)
    return float((predictions == data.test.y).float().mean())
