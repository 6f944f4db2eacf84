"""Shared fixtures. Real data lives in ../shared/data; tests that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RANKCRAFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own processed-data cache (never the user's ~/.cache)."""
    old = os.environ.get("RANKCRAFT_CACHE")
    os.environ["RANKCRAFT_CACHE"] = str(tmp_path_factory.mktemp("rankcraft-cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
    if old is None:
        os.environ.pop("RANKCRAFT_CACHE", None)
    else:
        os.environ["RANKCRAFT_CACHE"] = old


def shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test if it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def shared_data():
    return shared
