"""What a thief detector does once it has flagged a caller: one rule for every detector.

A detector (PRADA, SEAT, a query-distribution detector) decides *when* a caller is a thief; what
happens next is the same choice for all of them, so it lives here once:

- ``flag``: keep answering as before (the record says when the caller was flagged);
- ``refuse``: refuse every later batch before the model runs, charging nothing;
- ``misinformation``: answer every later query with a wrong top-1 label (the classes shifted by
  one), so a thief that keeps querying trains on lies.

The detector keeps the count of queries it has seen and the query after which it flagged the
caller; :func:`respond_after_flag` and :func:`refusal_after_flag` turn those into answers and
refusals.
"""

from __future__ import annotations

import torch

RESPONSES = ("flag", "refuse", "misinformation")
"""what a detector does after flagging a caller (see the module docstring)"""


def respond_after_flag(
    response: str, probs: torch.Tensor, seen: int, flagged_after: int | None
) -> torch.Tensor:
    """The answers to a batch whose last query was the caller's ``seen``-th, for a caller flagged
    after ``flagged_after`` queries (``None``: not flagged). Only ``misinformation`` changes
    answers, and only those of queries after the flag."""
    if response != "misinformation" or flagged_after is None:
        return probs
    first_lied = max(0, flagged_after - (seen - len(probs)))
    answers = probs.clone()
    answers[first_lied:] = probs[first_lied:].roll(1, dims=1)
    return answers


def refusal_after_flag(response: str, flagged_after: int | None, reason: str) -> str | None:
    """Why the caller's next batch is refused: only ``refuse`` refuses, and only once flagged;
    ``reason`` says what the detector saw."""
    if response != "refuse" or flagged_after is None:
        return None
    return f"{reason} flagged this caller after {flagged_after} queries"
