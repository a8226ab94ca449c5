"""Helpers for tests that look at the Ray cluster a run leaves behind."""

from __future__ import annotations

import time
from typing import Any

import ray

from orchestration.ray_service import SERVICE_NAMESPACE


def live_project_actors(timeout_s: float = 20.0) -> list[Any]:
    """Named victim-service actors still alive, waiting up to ``timeout_s`` for them to go
    (``ray.kill`` is asynchronous, and a dead driver's actors are reclaimed later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == SERVICE_NAMESPACE
        ]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)
