"""Proof of work for queries (hashcash-style), defined once for the service and every client.

A victim whose defense chain asks for work (:mod:`arena.defenses.proof_of_work`) hands out a
:class:`WorkChallenge` per (attacker, query id): a random nonce, a difficulty in leading zero
bits and the batch size it covers. The client solves it with :func:`solve`: for each query ``i``
of the batch a counter ``c_i`` such that ``sha256(nonce | i | c_i)`` starts with at least
``bits`` zero bits (2**bits hashes expected per query). The service checks a proof with
:func:`verify` at the cost of one hash per query.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

MAX_WORK_BITS = 32
"""the hardest puzzle a service may set (2**32 hashes a query is already hours of CPU)"""


@dataclass(frozen=True)
class WorkChallenge:
    """What a caller must solve before a batch of ``count`` queries is answered."""

    nonce: str
    """hex, fresh from :mod:`secrets` for every challenge"""
    bits: int
    """leading zero bits each query's hash must have"""
    count: int
    """queries in the batch it covers"""


@dataclass(frozen=True)
class WorkProof:
    """A solution: the challenge's nonce and one counter per query, in batch order."""

    nonce: str
    counters: tuple[int, ...]


@dataclass(frozen=True)
class Solved:
    """A proof and what finding it cost the client."""

    proof: WorkProof
    hashes: int
    seconds: float


def _digest(nonce: str, index: int, counter: int) -> bytes:
    return hashlib.sha256(f"{nonce}|{index}|{counter}".encode()).digest()


def solve(challenge: WorkChallenge) -> Solved:
    """Find a counter for every query of the challenge (real CPU work), timed."""
    start = time.perf_counter()
    counters: list[int] = []
    hashes = 0
    limit = 1 << (256 - challenge.bits)  # a digest below this has ``bits`` leading zeros
    for index in range(challenge.count):
        counter = 0
        while int.from_bytes(_digest(challenge.nonce, index, counter), "big") >= limit:
            counter += 1
        counters.append(counter)
        hashes += counter + 1
    proof = WorkProof(challenge.nonce, tuple(counters))
    return Solved(proof, hashes, time.perf_counter() - start)


def verify(challenge: WorkChallenge, proof: WorkProof) -> bool:
    """True when ``proof`` solves ``challenge`` (same nonce, one valid counter per query)."""
    if proof.nonce != challenge.nonce or len(proof.counters) != challenge.count:
        return False
    limit = 1 << (256 - challenge.bits)
    return all(
        isinstance(c, int) and c >= 0 and int.from_bytes(_digest(proof.nonce, i, c), "big") < limit
        for i, c in enumerate(proof.counters)
    )
