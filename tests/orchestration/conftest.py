"""Fixtures for the orchestration tests: one Ray instance for the whole session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from arena.data import DataSplits, load_dataset

REPO = Path(__file__).resolve().parents[2]
SMOKE_CONFIG = REPO / "configs" / "digits_smoke.yaml"


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Victims trained by the Ray service and fault tests (each is trained once a session)."""
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A small local Ray shared by every test that needs one (ray.init costs 5-8 s here)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        logging_level=logging.ERROR,
    )
    yield
    ray.shutdown()


@pytest.fixture()
def smoke_config_dict() -> dict[str, Any]:
    """The digits smoke tournament as a mutable dict (tests shrink or break it)."""
    data: dict[str, Any] = yaml.safe_load(SMOKE_CONFIG.read_text())
    return data
