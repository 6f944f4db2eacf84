"""Data-parallel training on several processes with ``torch.distributed`` (gloo, CPU).

Every process holds a full replica of the model. For global batch ``b`` of ``B`` rows (the same permutation in
every process), process ``r`` of ``W`` trains on rows ``r, r + W, ...`` of it (``ColumnData.batches(shard=...)``);
``DistributedDataParallel`` averages the gradients over the processes in the backward pass, so a step's update is
the update of one process on the whole global batch (exactly, when ``W`` divides ``B``; the last, partial batch of
an epoch gives its rows' shards a few rows more or less). Sparse embedding gradients (``sparse: true`` embeddings)
are all-reduced as sparse tensors (gloo supports them). Every process evaluates the whole validation split (the
same numbers everywhere, so early stopping agrees without communication); rank 0 alone writes checkpoints,
metrics and the report.

:func:`spawn_workers` starts the processes on this machine (``--workers N``). When one fails or is killed, the
others are stopped and a :class:`~rankcraft.errors.WorkerError` names its rank; the run directory keeps rank 0's
last checkpoint, and ``--resume`` continues from it (with any number of workers: the cursor is global).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rankcraft.errors import RankcraftError, WorkerError


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_data_parallel(model: nn.Module) -> nn.Module:
    """``model`` under DistributedDataParallel (CPU). Its parameters are broadcast from rank 0 at wrapping, so
    every process starts from the same weights."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, fn: Callable, args: tuple, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(*args, **kwargs)
    except RankcraftError as exc:  # a user error: its message, not a traceback, reaches the parent
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
    finally:
        dist.destroy_process_group()


def spawn_workers(fn: Callable, workers: int, *args, threads: int | None = None, **kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` in ``workers`` new processes that form one gloo process group (ranks
    ``0..workers-1``); return when all have finished. ``threads``: torch threads per process (default: the
    machine's cores divided among the processes)."""
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.start_processes(_worker, args=(workers, free_port(), threads, fn, args, kwargs), nprocs=workers,
                             join=False, start_method="spawn")
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException as exc:
        how = f"was killed by signal {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
        raise WorkerError(f"worker rank {exc.error_index} {how}; the other workers were stopped. The run "
                          "directory keeps the last checkpoint: rerun with --resume", rank=exc.error_index) from None
    except mp.ProcessRaisedException as exc:
        last = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = last[-1] if last else "unknown error"
        raise WorkerError(f"worker rank {exc.error_index} failed: {reason}", rank=exc.error_index) from None
