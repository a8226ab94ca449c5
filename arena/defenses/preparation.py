"""What a defense may use while preparing a victim, and the on-disk cache for what it trains.

Defenses that train models (an outlier-exposure victim, a misinformation model) are as expensive as
the victim itself, so their models are cached like victims: keyed by the victim's key, the
defense's name and the hyperparameters that change training (never the serving-only ones), and
written atomically. A second tournament with the same victim and training settings loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.data import Split
from arena.models import build_model


@dataclass(frozen=True)
class PrepareContext:
    """The victim's identity, training data and cache, as seen by :meth:`Defense.prepare`."""

    victim_key: str
    """the victim spec's key: cached artefacts of different victims never mix"""
    victim_arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: Split
    """the victim's training split (the defender's data; never the attacker's pool)"""
    seed: int = 0
    cache_dir: Path | None = None
    """where trained artefacts are cached; ``None`` trains every time (tests)"""
    public: Split | None = None
    """images of the task the victim was not trained on (the dataset's test split, which the
    defender owns): dataset inference contrasts them with ``train``"""

    def new_model(self, arch: str | None = None, seed: int | None = None) -> nn.Module:
        """A freshly initialised model for this task (the victim's architecture by default)."""
        chosen = self.seed if seed is None else seed
        return build_model(arch or self.victim_arch, self.input_shape, self.num_classes, chosen)

    def artefact_path(self, tag: str, params: Mapping[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        blob = json.dumps({"victim": self.victim_key, "tag": tag, **params}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self.cache_dir / f"defense-{tag}-{digest}.pt"

    def cached_model(
        self,
        tag: str,
        params: Mapping[str, Any],
        make: Callable[[], nn.Module],
        train: Callable[[nn.Module], None],
    ) -> nn.Module:
        """Load the model cached under (victim, ``tag``, ``params``) or build it with ``make``,
        train it in place with ``train`` and cache it. ``params`` must be JSON-serialisable and
        hold every hyperparameter that changes training."""
        model = make()
        path = self.artefact_path(tag, params)
        if path is not None and path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        train(model)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        return model.eval()
