"""The one assembly of a victim service, for every way one is hosted.

A match in one process, a Ray actor (``orchestration.ray_service``) and ``arena serve`` all serve
a victim the same way: its defense chain built from the specs, training-time defenses applied
(prepared once and cached), the model as trained kept as the undefended reference when a
defense serves another model, and the chain naming itself in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from arena.data import DataSplits
from arena.defenses.chain import DefenseChain, build_chain
from arena.ledger import Ledger
from arena.oracle import InputSpec
from arena.service import VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import defended_model, load_or_train


@dataclass(frozen=True)
class ServedModels:
    """What a defended victim serves, and the model it is measured against."""

    model: nn.Module
    """the model answering queries (the trained one, or one a defense prepared)"""
    chain: DefenseChain
    undefended: nn.Module | None
    """the victim as trained when a defense serves another model; ``None`` when they are one"""


def served_models(
    victim: VictimSpec,
    trained: nn.Module,
    defenses: Sequence[PluginSpec],
    data: DataSplits | None = None,
    cache_dir: Path | None = None,
) -> ServedModels:
    """``trained`` behind ``defenses``: the chain built, training-time defenses applied (loaded
    from ``cache_dir`` or trained on ``data``, which only such defenses need)."""
    chain = build_chain(defenses)
    model = trained
    if chain.needs_preparation:
        if data is None:
            raise ValueError("defenses that prepare models need the victim's data")
        model = defended_model(victim, trained, chain, data, cache_dir)
    return ServedModels(model, chain, None if model is trained else trained)


def build_service(
    victim: VictimSpec,
    defenses: Sequence[PluginSpec],
    data: DataSplits,
    cache_dir: Path | None = None,
    device: str = "cpu",
    ledger: Ledger | None = None,
) -> VictimService:
    """A victim service in this process: the victim loaded from the cache (trained and cached
    the first time) behind ``defenses``."""
    trained = load_or_train(victim, data, cache_dir).model
    served = served_models(victim, trained, defenses, data, cache_dir)
    input_spec = InputSpec(shape=data.input_shape)
    return VictimService(
        served.model, served.chain, input_spec, data.num_classes, device, served.undefended, ledger
    )
