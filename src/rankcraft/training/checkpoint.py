"""Checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings, lists and dicts (state dicts, counters, RNG state) — no pickled
objects — so loading one never executes code. Every write goes to a temporary file in the same directory, is
flushed to disk, then renamed over the target: a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from rankcraft.errors import CheckpointError
from rankcraft.files import atomic_write_bytes


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` into memory, then an atomic write (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
