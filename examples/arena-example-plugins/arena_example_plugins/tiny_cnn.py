"""A small CNN for any image size of at least 4x4: two 3x3 convolutions, then a fixed 2x2
pooling, so its head is the same size whatever the input."""

from __future__ import annotations

from torch import nn

from arena.errors import InvalidParameters
from arena.models import ARCHITECTURES


@ARCHITECTURES.register("tiny_cnn", version=1)
def tiny_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 conv layers (8 and 16 channels), 2x2 adaptive pooling, one linear layer."""
    channels, height, width = input_shape
    if min(height, width) < 4:
        raise InvalidParameters(f"tiny_cnn needs images of at least 4x4, not {height}x{width}")
    return nn.Sequential(
        nn.Conv2d(channels, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, num_classes),
    )
