"""Architectures from outside the registry: torchvision classifiers and users' own factories.

Two ``arch`` forms name them (:func:`arena.models.resolve_architecture` tells them apart):

* ``torchvision/<name>``: any classification model of ``torchvision.models`` built untrained
  (``weights=None``: nothing is ever downloaded) with the task's class count. When the images
  do not have 3 channels the model's first ``Conv2d`` is replaced by one taking the task's
  channels, every other setting kept; the rest of the model is torchvision's as is (a ResNet
  on 28x28 or 32x32 images works through its adaptive pooling).
* ``package.module:factory``: ``factory(input_shape, num_classes) -> nn.Module``, imported by
  dotted path (the module must be importable wherever the model is built, Ray workers too).

Both are checked when built: one small batch goes through the new model, so an input too small
for it or a factory returning the wrong thing is one clear error before any training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from arena.errors import InvalidParameters, brief, one_line

Factory = Callable[[tuple[int, ...], int], nn.Module]

TORCHVISION_PREFIX = "torchvision/"
LIST_HINT = (
    "python -c 'import torchvision; print(torchvision.models.list_models("
    "module=torchvision.models))'"
)
"""how a user sees the valid torchvision names"""
REASON_LIMIT = 160
"""characters of an underlying exception's message quoted in an error"""


def _reason(exc: BaseException) -> str:
    """An exception as one short line (its first line: torch's messages run over many)."""
    lines = str(exc).strip().splitlines()
    return one_line(f"{type(exc).__name__}: {lines[0] if lines else ''}", REASON_LIMIT)


@cache
def torchvision_names() -> frozenset[str]:
    """The classification models torchvision can build (not its detection or video ones)."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def torchvision_factory(name: str) -> Factory:
    """The factory of ``torchvision/<name>``; an unknown name says how to list the valid ones."""
    if name not in torchvision_names():
        raise InvalidParameters(
            f"unknown torchvision classification model {brief(name)}; list them with {LIST_HINT}"
        )
    label = f"{TORCHVISION_PREFIX}{name}"

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return checked(
            label, _torchvision_model(name, input_shape, num_classes), input_shape, num_classes
        )

    return build


def _torchvision_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    import torchvision

    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if getattr(model, "aux_logits", False):
        # GoogLeNet and Inception v3 return auxiliary outputs while training; a victim or a
        # substitute is trained on its logits alone
        model = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, aux_logits=False
        )
    channels = input_shape[0]
    if channels != 3:
        _adapt_first_conv(model, channels, f"{TORCHVISION_PREFIX}{name}")
    return model


def _adapt_first_conv(model: nn.Module, channels: int, label: str) -> None:
    """Replace the first ``Conv2d`` (the stem) by one taking ``channels`` inputs, all else kept."""
    first = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise InvalidParameters(
            f"{label} has no Conv2d layer to adapt to {channels}-channel images; "
            "use 3-channel images or another model"
        )
    path, module = first
    if module.groups != 1:
        raise InvalidParameters(
            f"{label}: its first convolution is grouped ({module.groups} groups) and cannot "
            f"take {channels} channels; use 3-channel images or another model"
        )
    replacement = nn.Conv2d(
        channels,
        module.out_channels,
        kernel_size=module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, replacement)


def imported_factory(arch: str) -> Factory:
    """The user factory ``package.module:factory`` names; any failure to find it is one line."""
    module_name, _, attr_path = arch.partition(":")
    form = "an architecture package.module:factory"
    if not module_name or not attr_path:
        raise InvalidParameters(f"architecture {brief(arch)}: write {form} (both parts)")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # anything a user's module raises on import is reported
        raise InvalidParameters(
            f"architecture {brief(arch)}: cannot import {brief(module_name)} ({_reason(exc)}); "
            f"{form} needs the module on the Python path"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(found, part):
            raise InvalidParameters(
                f"architecture {brief(arch)}: {brief(module_name)} has no attribute "
                f"{brief(attr_path)}; {form} names a function of the module"
            )
        found = getattr(found, part)
    if not callable(found):
        raise InvalidParameters(
            f"architecture {brief(arch)}: {brief(attr_path)} is a {type(found).__name__}, not "
            f"callable; {form} names a function (input_shape, num_classes) -> nn.Module"
        )
    factory = found

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        try:
            model = factory(input_shape, num_classes)
        except InvalidParameters:
            raise
        except Exception as exc:
            raise InvalidParameters(
                f"architecture {brief(arch)}: the factory raised {_reason(exc)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise InvalidParameters(
                f"architecture {brief(arch)}: the factory returned a {type(model).__name__}, "
                "not a torch.nn.Module"
            )
        return checked(arch, model, input_shape, num_classes)

    return build


PROBE_BATCH = 2
"""images in the batch a newly built external model is checked on"""


def checked(
    label: str, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """``model`` once a small batch went through it (in eval mode, so nothing it holds changes)
    with logits of the right shape out; otherwise one line saying what does not fit."""
    shape = tuple(input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(PROBE_BATCH, *shape))
    except Exception as exc:
        raise InvalidParameters(
            f"{brief(label)} cannot take images of shape {list(shape)} ({_reason(exc)}); "
            "use a dataset with larger images or another architecture"
        ) from None
    finally:
        model.train(was_training)
    wanted = [PROBE_BATCH, num_classes]
    if not isinstance(out, torch.Tensor) or list(out.shape) != wanted:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameters(
            f"{brief(label)} gives outputs {got} for {PROBE_BATCH} images of shape {list(shape)}; "
            f"a classifier of {num_classes} classes must give logits {wanted}"
        )
    return model
