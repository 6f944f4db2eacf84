"""Checkpoints that load with ``torch.load(weights_only=True)`` and carry a content checksum.

A checkpoint holds only tensors, numbers, strings, lists and dicts (state dicts, counters, RNG state) — no pickled
objects — so loading one never executes code. Every write goes to a temporary file in the same directory, is
flushed to disk, then renamed over the target: a crash leaves either the old or the new file, never half of one.

Integrity. A checkpoint is the zip archive ``torch.save`` writes, with the SHA-256 of that archive stored in the
archive's comment (the last bytes of the file: ``rankcraft-sha256:<64 hex digits>``). The file is still a plain
zip, so ``torch.load`` and any zip tool read it as before; :func:`load_checkpoint` first recomputes the digest (of the
archive with an empty comment) and compares. Any changed byte — in the tensors, the pickled structure, the zip
directory or the comment itself — makes the load a :class:`CheckpointError` ("corrupt: checksum mismatch"), where
``torch.load`` alone would often load flipped tensor bytes silently.

Checkpoints written before checksums existed (an archive with an empty comment) still load, without verification.
An archive whose comment is anything else is reported as corrupt rather than loaded unchecked.

Load errors never repeat torch's advice to retry with ``weights_only=False``: a file that the safe loader refuses is
corrupt or not ours, and loading it with the unsafe loader would run whatever code it holds.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from pathlib import Path

import torch

from rankcraft.errors import CheckpointError
from rankcraft.files import atomic_write_bytes

_MAGIC = b"rankcraft-sha256:"
_COMMENT_LEN = len(_MAGIC) + 64
_EOCD_SIG = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment
_EOCD_LEN = 22
_ZIP_SIG = b"PK\x03\x04"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` into memory, add the checksum, then an atomic write (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, add_checksum(buf.getvalue()))


def add_checksum(archive: bytes) -> bytes:
    """The zip ``archive`` (with an empty comment, as ``torch.save`` writes it) with its SHA-256 as the comment."""
    if archive[-_EOCD_LEN:-_EOCD_LEN + 4] != _EOCD_SIG or archive[-2:] != b"\x00\x00":
        raise ValueError("not a zip archive with an empty comment")
    comment = _MAGIC + hashlib.sha256(archive).hexdigest().encode()
    return archive[:-2] + struct.pack("<H", len(comment)) + comment


def verify_checksum(path: str | Path, data: bytes) -> bool:
    """Check the checksum of checkpoint bytes ``data`` (read from ``path``, named in errors).

    Returns True when the checksum is present and matches, False for a checkpoint without one (older format); raises
    :class:`CheckpointError` when it does not match or the file is not a checkpoint archive."""
    if not data.startswith(_ZIP_SIG):
        raise CheckpointError(f"{path}: not a checkpoint (not a zip archive written by torch.save)")
    eocd = len(data) - _EOCD_LEN
    if data[eocd:eocd + 4] == _EOCD_SIG and data[-2:] == b"\x00\x00":
        return False  # no comment: written before checksums existed
    eocd = len(data) - _EOCD_LEN - _COMMENT_LEN
    ok = eocd >= 0 and data[eocd:eocd + 4] == _EOCD_SIG and \
        struct.unpack("<H", data[eocd + 20:eocd + 22])[0] == _COMMENT_LEN and \
        re.fullmatch(rb"[0-9a-f]{64}", data[-64:]) is not None and data[eocd + 22:-64] == _MAGIC
    if not ok:
        raise CheckpointError(f"{path}: corrupt: checksum missing or damaged (the file's end is not a checkpoint "
                              "trailer; truncated or modified?)")
    digest = hashlib.sha256(data[:eocd + 20] + b"\x00\x00").hexdigest().encode()
    if digest != data[-64:]:
        raise CheckpointError(f"{path}: corrupt: checksum mismatch (the file was modified or damaged after it was "
                              "written)")
    return True


def load_checkpoint(path: str | Path) -> dict:
    """Verify and load a checkpoint with ``weights_only=True``; a missing, corrupt or foreign file is a
    :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    verify_checksum(path, data)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says enough
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {_torch_reason(exc)})") \
            from None


def _torch_reason(exc: Exception) -> str:
    """torch's error text on one line, without its advice to load with ``weights_only=False`` or to allow-list
    globals (both would load what the safe loader refused)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:  # "Weights only load failed. ... Re-running with weights_only=False ... error: <reason> ..."
        text = text.split(marker, 1)[1]
        text = text.split("Check the documentation of torch.load", 1)[0]
        text = "the file is not a safe (weights-only) checkpoint: " + " ".join(text.split())
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    kept = [s for s in sentences if not any(w in s for w in ("weights_only", "safe_globals", "Please "))]
    return " ".join(kept).strip() or "not a readable checkpoint"
