"""Classifier architectures for victims and substitutes, registered by name.

Each factory takes the input shape ``(C, H, W)`` and the number of classes and returns a module
producing logits. Models are small on purpose: on this CPU a LeNet-5 costs a tenth of a
32/64-channel CNN per image.

Wherever an architecture is named (a victim's ``arch``, ``substitute_arch``, a defense's
surrogate) three forms are accepted, all through :func:`resolve_architecture`: a registered
name (``lenet5``), ``torchvision/<name>`` and ``package.module:factory``
(:mod:`arena.external_archs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from arena.errors import InvalidParameters
from arena.external_archs import TORCHVISION_PREFIX, imported_factory, torchvision_factory
from arena.registry import Registry

ArchFactory = Callable[[tuple[int, ...], int], nn.Module]
ARCHITECTURES: Registry[ArchFactory] = Registry("architecture")


@ARCHITECTURES.register("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling (two 5x5 convs, three dense layers); inputs >= 12 px."""
    channels, height, width = input_shape
    if min(height, width) < 12:
        raise InvalidParameters(
            f"lenet5 needs images of at least 12x12 pixels, not {height}x{width}"
        )
    # conv(5, pad 2) keeps size, pool halves, conv(5) loses 4, pool halves.
    out_h, out_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * out_h * out_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


@ARCHITECTURES.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two hidden layers of 256 and 128 ReLU units on the flattened image; any input size."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@ARCHITECTURES.register("softmax_regression")
def softmax_regression(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression on the flattened image (the Tramèr et al. target)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@ARCHITECTURES.register("resnet18_cifar")
def resnet18_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool): the 32x32 victim."""
    from torchvision.models import resnet18

    if min(input_shape[1:]) < 16:
        raise InvalidParameters(
            f"resnet18_cifar needs images of at least 16x16 pixels (its last block halves them "
            f"three times), not {input_shape[1]}x{input_shape[2]}; use lenet5 or mlp"
        )
    # torchvision's ImageNet stem (7x7 stride 2, then a max-pool) shrinks a 32x32 image to 8x8
    # before the first block; the usual CIFAR ResNet keeps it at 32x32 (about 15x the compute)
    model: nn.Module = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@ARCHITECTURES.register("decision_tree")
def decision_tree(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A depth-limited scikit-learn decision tree (victims only: fitted, never built untrained)."""
    raise InvalidParameters(
        "decision_tree models are fitted by scikit-learn from a VictimSpec with max_depth "
        "(arena.trees); they cannot be built untrained or trained by gradient descent, so they "
        "cannot be a substitute or a defense's neural copy of the victim: choose a neural "
        "architecture such as mlp (e.g. substitute_arch: mlp)"
    )


@ARCHITECTURES.register("zoo")
def zoo(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model zoo: several victims behind one service (victims only: see arena.zoo)."""
    raise InvalidParameters(
        "a zoo is built from its members (a VictimSpec with arch zoo and members), never "
        "untrained: it cannot be a substitute; choose a neural architecture such as lenet5"
    )


def resolve_architecture(arch: str) -> ArchFactory:
    """The factory an architecture name stands for, in any of its three forms; a name that
    stands for none is a typed error (unknown name, unknown torchvision model, a factory that
    cannot be imported). The one check configs and builders share."""
    if arch.startswith(TORCHVISION_PREFIX):
        return torchvision_factory(arch.removeprefix(TORCHVISION_PREFIX))
    if ":" in arch:
        return imported_factory(arch)
    return ARCHITECTURES.get(arch)


def build_model(
    arch: str, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build an architecture (any form); with ``seed`` its initial weights are reproducible."""
    factory = resolve_architecture(arch)
    if seed is None:
        return factory(input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes)
