"""Per-sample Gram matrices of a surrogate's log-probability Jacobian, for gradient-aware defenses.

MAD and GRAD² reason about the gradient a thief's model would take from an answer ``y``: with
``G = d log F(x; w) / dw`` (``[C, D]``, one row per class), training on ``y`` moves the weights
along ``-G^T y``. Everything both defenses need is a function of inner products between the rows
of ``G``, so they only ever need the ``[C, C]`` Gram matrix ``K = G G^T`` per query, never the
``[C, D]`` Jacobian itself once it is reduced.

:func:`per_sample_gram` computes the Jacobians of a whole batch at once with ``torch.func``
(``vmap`` over ``jacrev``), in chunks so memory stays bounded; :func:`per_sample_gram_loop` is the
one-sample-at-a-time reference it is tested against and benchmarked with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap


def per_sample_gram(model: nn.Module, x: torch.Tensor, chunk_size: int = 32) -> torch.Tensor:
    """``[B, C, C]`` Gram matrices of the per-sample Jacobians of ``log_softmax(model(x))`` with
    respect to all of ``model``'s parameters, computed batched."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def log_probs(weights: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, weights, (sample.unsqueeze(0),))
        return torch.log_softmax(logits, dim=1).squeeze(0)

    def gram(sample: torch.Tensor) -> torch.Tensor:
        jacobian = jacrev(log_probs)(params, sample)
        flat = torch.cat([j.reshape(j.shape[0], -1) for j in jacobian.values()], dim=1)
        return flat @ flat.T

    was_training = model.training
    model.eval()
    try:
        grams = [vmap(gram)(x[i : i + chunk_size]) for i in range(0, len(x), chunk_size)]
    finally:
        model.train(was_training)
    if not grams:
        classes = _num_classes(model, x)
        return torch.empty(0, classes, classes)
    return torch.cat(grams)


def per_sample_gram_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same Gram matrices, one sample and one class at a time with ``torch.autograd`` (the
    straightforward way; kept as the reference for tests and the speed-up benchmark)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    out = []
    try:
        for sample in x:
            log_probs = torch.log_softmax(model(sample.unsqueeze(0)), dim=1).squeeze(0)
            rows = []
            for k in range(log_probs.shape[0]):
                grads = torch.autograd.grad(log_probs[k], params, retain_graph=True)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
            jacobian = torch.stack(rows)
            out.append(jacobian @ jacobian.T)
    finally:
        model.train(was_training)
    if not out:
        classes = _num_classes(model, x)
        return torch.empty(0, classes, classes)
    return torch.stack(out).detach()


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *x.shape[1:])).shape[1])
