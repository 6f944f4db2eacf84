"""Shared fixtures. Real data lives in ../shared/data; tests that need it skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rankcraft.data.features import FeatureInfo

#: the feature layout the zoo tests train on: four categorical, two numeric and one multi-valued feature
ZOO_FEATURES = (
    FeatureInfo("c0", "categorical", vocab_size=30),
    FeatureInfo("c1", "categorical", vocab_size=40),
    FeatureInfo("c2", "categorical", vocab_size=20),
    FeatureInfo("c3", "categorical", vocab_size=50),
    FeatureInfo("n0", "numeric"),
    FeatureInfo("n1", "numeric"),
    FeatureInfo("m0", "multi_categorical", vocab_size=25, max_len=4),
)

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


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test, on the server named by ``RANKCRAFT_TEST_POSTGRES_URL`` (an
    SQLAlchemy URL, e.g. ``postgresql+psycopg://postgres@/postgres?host=/tmp/pgsock&port=54329``); the test is
    skipped when the variable is unset. The database is dropped afterwards."""
    import uuid

    server = os.environ.get("RANKCRAFT_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("RANKCRAFT_TEST_POSTGRES_URL is not set (no PostgreSQL server for this test)")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    url = sqlalchemy.engine.make_url(server)
    name = f"rankcraft_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that train with ``threads=N`` call ``torch.set_num_threads``; restore the count afterwards so that a
    later test comparing an in-process run with a subprocess run (default threads) sees the same arithmetic."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
