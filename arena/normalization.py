"""Per-dataset input normalisation, applied inside the model.

A dataset declares its per-channel mean and std once (:attr:`arena.data.DataSplits.normalization`);
the model builders wrap the network in :func:`normalized`, so the oracle's input domain stays
``[0, 1]`` images for every dataset while CIFAR or SVHN networks still see standardised inputs.
"""

from __future__ import annotations

import torch
from torch import nn

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""``(mean, std)``, one value per channel"""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer: the statistics travel with the weights."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A network behind its dataset's :class:`Normalize`. Its weights name both parts
    (``normalize.mean``, ``network.…``), so a model rebuilt from them knows it is one
    (:func:`rebuilt_normalized`)."""

    def __init__(self, normalize: Normalize, network: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(self.normalize(x))
        return out


def normalized(model: nn.Module, normalization: Normalization | None) -> nn.Module:
    """``model`` behind a first :class:`Normalize` layer; ``model`` itself (the same object, so
    its state-dict keys and outputs stay bit-identical) when the dataset declares none."""
    if normalization is None:
        return model
    mean, std = normalization
    return NormalizedModel(Normalize(mean, std), model)


def saved_normalization(state: dict[str, torch.Tensor]) -> Normalization | None:
    """The normalisation a saved model's weights carry (see :class:`NormalizedModel`), if any."""
    if "normalize.mean" not in state:
        return None
    mean = tuple(float(v) for v in state["normalize.mean"].flatten())
    std = tuple(float(v) for v in state["normalize.std"].flatten())
    return mean, std
