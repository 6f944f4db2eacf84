"""Shared fixtures. Real data lives in ../shared/data; tests that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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


def adam_steps(model: torch.nn.Module, data: dict[str, torch.Tensor], *, steps: int, lr: float,
               batch: int) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on consecutive (wrapping) slices of ``data``; returns the losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = data["label"].shape[0]
    losses = []
    model.train()
    for step in range(steps):
        start = (step * batch) % n
        b = {k: v[start:start + batch] for k, v in data.items()}
        logits = model(b)
        assert logits.shape == (batch,) and logits.dtype == torch.float32
        loss = F.binary_cross_entropy_with_logits(logits, b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
