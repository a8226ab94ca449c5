"""The defense registry (kept apart from the plug-ins so they can import it)."""

from __future__ import annotations

from arena.defenses.base import Defense
from arena.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")
