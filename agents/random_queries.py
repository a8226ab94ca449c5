"""Baseline: queries of uniform random noise (the data-free floor every real attack must beat).

The thief has no images at all: it draws each pixel uniformly from the input range, asks the
victim, and trains its substitute on the answers. Tramèr et al. (2016) use such queries for
equation solving and retraining; against a deep image classifier they carry little signal,
which is what makes them the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from agents._transfer import TransferSetAttack
from arena.attacker import ATTACKS
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed


@ATTACKS.register("random_queries", version=2)
@dataclass(frozen=True)
class RandomQueries(TransferSetAttack):
    """Baseline: uniform-noise images as queries, substitute trained on the returned answers."""

    needs_pool: ClassVar[bool] = False

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        spec = oracle.input_spec
        shape = (oracle.remaining, *knowledge.input_shape)
        noise = rng.uniform(spec.low, spec.high, size=shape).astype(np.float32)
        queries = torch.from_numpy(noise)
        answers = oracle.query_all(queries, batch_size=self.query_batch, until_refused=True)
        x = queries[: len(answers)]
        return self.fit_substitute(knowledge, x, answers, torch_seed(rng), self.targets)
