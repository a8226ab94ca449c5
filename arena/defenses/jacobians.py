"""Per-sample Gram matrices of a surrogate's log-probability Jacobian, for gradient-aware defenses.

MAD and GRAD² reason about the gradient a thief's model would take from an answer ``y``: with
``G = d log F(x; w) / dw`` (``[C, D]``, one row per class), training on ``y`` moves the weights
along ``G^T y``. Everything both defenses need is an inner product between rows of ``G``, so they
only need the ``[C, C]`` Gram matrix ``K = G G^T`` per query.

Three ways to compute it, all exact:

* :func:`per_sample_gram` (used by the defenses): one backward pass per class over the whole batch
  gives each layer's per-sample output gradient ``delta_k``; for a linear layer the per-sample
  weight gradient is ``delta_k h^T`` (``h`` its input), so its share of ``K`` is
  ``(delta_k . delta_j)(|h|^2 + 1)`` without forming the gradient at all; a convolution's
  per-sample gradient is ``delta_k`` times its unfolded input patches, small enough to form.
  Models with other parametrised layers fall back to the next method.
* :func:`per_sample_gram_func`: ``torch.func`` — ``vmap`` over samples of ``jacrev`` over the
  parameters — which forms every ``[C, D]`` Jacobian (memory-bound when D is large).
* :func:`per_sample_gram_loop`: one sample and one class at a time with ``torch.autograd``; the
  reference the others are tested against and benchmarked with (``benchmarks/mad_jacobian.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

_LAYERS = (nn.Linear, nn.Conv2d)


def per_sample_gram(model: nn.Module, x: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """``[B, C, C]`` Gram matrices of the per-sample Jacobians of ``log_softmax(model(x))`` with
    respect to all of ``model``'s parameters; layer-wise when every parametrised module is a
    plain linear or convolution layer, else through ``torch.func``."""
    if not _layerwise_supported(model):
        return per_sample_gram_func(model, x)
    with _evaluating(model):
        parts = [
            _layerwise_gram(model, x[i : i + chunk_size]) for i in range(0, len(x), chunk_size)
        ]
    return torch.cat(parts) if parts else _empty(model, x)


def per_sample_gram_func(model: nn.Module, x: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """The same matrices with ``torch.func``: ``vmap`` over samples of ``jacrev``; any model."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def log_probs(weights: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, weights, (sample.unsqueeze(0),))
        return torch.log_softmax(logits, dim=1).squeeze(0)

    def gram(sample: torch.Tensor) -> torch.Tensor:
        jacobian = jacrev(log_probs)(params, sample)
        flat = torch.cat([j.reshape(j.shape[0], -1) for j in jacobian.values()], dim=1)
        return flat @ flat.T

    with _evaluating(model):
        grams = [vmap(gram)(x[i : i + chunk_size]) for i in range(0, len(x), chunk_size)]
    return torch.cat(grams) if grams else _empty(model, x)


def per_sample_gram_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same matrices one sample and one class at a time (the straightforward reference)."""
    params = list(model.parameters())
    out = []
    with _evaluating(model), torch.enable_grad():
        for sample in x:
            weights = [p.detach().requires_grad_(True) for p in params]
            names = [name for name, _ in model.named_parameters()]
            logits = functional_call(model, dict(zip(names, weights, strict=True)), (sample[None],))
            log_probs = torch.log_softmax(logits, dim=1).squeeze(0)
            rows = []
            for k in range(log_probs.shape[0]):
                grads = torch.autograd.grad(log_probs[k], weights, retain_graph=True)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
            jacobian = torch.stack(rows)
            out.append(jacobian @ jacobian.T)
    return torch.stack(out).detach() if out else _empty(model, x)


def _layerwise_supported(model: nn.Module) -> bool:
    for module in model.modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Conv2d):
            if (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                return False
        elif not isinstance(module, nn.Linear):
            return False
    return True


def _layerwise_gram(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in layers}

    def remember(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[module].append((inputs[0].detach(), output))

    hooks = [m.register_forward_hook(remember) for m in layers]
    try:
        with torch.enable_grad():
            log_probs = torch.log_softmax(model(x.detach().requires_grad_(True)), dim=1)
    finally:
        for hook in hooks:
            hook.remove()
    if any(len(calls) != 1 for calls in seen.values()):  # a layer used twice: no shortcut
        return per_sample_gram_func(model, x)
    outputs = [seen[m][0][1] for m in layers]
    classes = log_probs.shape[1]
    deltas: list[list[torch.Tensor]] = [[] for _ in layers]
    for k in range(classes):  # samples are independent, so summing over the batch keeps them apart
        grads = torch.autograd.grad(log_probs[:, k].sum(), outputs, retain_graph=k < classes - 1)
        for per_layer, grad in zip(deltas, grads, strict=True):
            per_layer.append(grad)
    gram = torch.zeros(len(x), classes, classes)
    for layer, per_class in zip(layers, deltas, strict=True):
        delta = torch.stack(per_class)  # [C, B, *output]
        inputs = seen[layer][0][0]
        if isinstance(layer, nn.Linear):
            if inputs.dim() != 2:
                return per_sample_gram_func(model, x)
            scale = inputs.pow(2).sum(dim=1) + (layer.bias is not None)
            gram += torch.einsum("kbo,jbo->bkj", delta, delta) * scale[:, None, None]
            continue
        padding = layer.padding
        if isinstance(padding, str):
            return per_sample_gram_func(model, x)
        patches = F.unfold(inputs, layer.kernel_size, layer.dilation, padding, layer.stride)
        delta = delta.flatten(3)  # [C, B, out_channels, positions]
        weight_grads = torch.einsum("kbop,bip->kboi", delta, patches)
        gram += torch.einsum("kboi,jboi->bkj", weight_grads, weight_grads)
        if layer.bias is not None:
            bias_grads = delta.sum(dim=3)
            gram += torch.einsum("kbo,jbo->bkj", bias_grads, bias_grads)
    return gram


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Run a model in eval mode (so samples are independent) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _empty(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        classes = int(model(torch.zeros(1, *x.shape[1:])).shape[1])
    return torch.empty(0, classes, classes)
