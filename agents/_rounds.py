"""Helpers shared by the round-based attacks (``jbda``, ``activethief``): query a planned batch
without ever overdrawing the budget, turn answers into training targets."""

from __future__ import annotations

import torch

from arena.oracle import Oracle


def ask(oracle: Oracle, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, bool]:
    """Query the rows of ``x`` that the budget still covers, in batches of ``batch_size``.

    Returns the answers (for the first ``len(answers)`` rows of ``x``) and whether the attack
    must stop asking: the budget is spent, or a detector refused a batch (the refusal charges
    nothing, and asking again would only be refused again).
    """
    wanted = min(int(x.shape[0]), oracle.remaining)
    if wanted == 0:
        return torch.empty(0, oracle.num_classes), True
    answers = oracle.query_all(x[:wanted], batch_size=batch_size, until_refused=True)
    refused = int(answers.shape[0]) < wanted
    return answers, refused or oracle.remaining == 0


def training_targets(answers: torch.Tensor, soft: bool) -> torch.Tensor:
    """The oracle's top-1 labels ``[N]``, or its rows ``[N, C]`` renormalised when ``soft``.

    Rows may be one-hot (label-only APIs) or zero outside the top-k; the soft cross-entropy
    multiplies them with the substitute's log-probabilities, so zeros never meet a log.
    """
    if not soft:
        return answers.argmax(dim=1)
    return answers / answers.sum(dim=1, keepdim=True).clamp_min(1e-12)
