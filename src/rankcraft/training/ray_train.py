"""The same training job on a Ray cluster, through Ray Train (``rankcraft train ... --ray-address ADDR``).

Ray Train starts ``workers`` processes on the cluster and forms their ``torch.distributed`` process group (gloo on
CPU); each process then runs the ordinary :func:`rankcraft.training.run.train`, which sees the initialised group
and trains its shard of every global batch exactly as with ``--workers`` on one machine (rank 0 writes the run
directory). Requirements on a real cluster: the extra ``rankcraft[distributed]`` on every node, and the data, the
cache directory and the run directory on paths that every node sees (a shared file system), given as absolute
paths. ``address="local"`` starts a private Ray instance on this machine (what the tests use).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from rankcraft.errors import ConfigError, WorkerError
from rankcraft.training.run import (
    RunConfig,
    RunResult,
    _result_of,
    read_run_config,
    train,
)


def _worker_loop(cfg: dict) -> None:
    train(RunConfig.parse(cfg["config"]), out=cfg["out"], resume=cfg["resume"], cache_dir=cfg["cache_dir"])


def train_on_ray(config: RunConfig | dict, *, out: str | Path, address: str = "local", workers: int = 2,
                 resume: bool = False, cache_dir: str | Path | None = None) -> RunResult:
    """Train with ``workers`` Ray Train workers on the cluster at ``address`` (``local``: a private local
    instance; ``auto``: the running cluster; ``ray://host:10001``: a remote one); return the run's result."""
    try:
        import ray
        from ray.train import RunConfig as RayRunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as exc:
        raise ConfigError(f"--ray-address needs Ray Train: pip install 'rankcraft[distributed]' ({exc})") from None
    run_dir = Path(out).resolve()
    if resume:
        config = read_run_config(run_dir)
    elif isinstance(config, dict):
        config = RunConfig.parse(config)
    config = config.model_copy(update={"data": config.data.with_absolute_paths()})
    cache = str(Path(cache_dir).resolve()) if cache_dir is not None else None
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # keep relative recipe look-ups working on this machine
    started = False
    sigint = signal.getsignal(signal.SIGINT)  # Ray Train installs its own handler in the driver: restored below
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        started = True
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": config.to_dict(), "out": str(run_dir), "resume": resume,
                               "cache_dir": cache},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RayRunConfig(name=f"rankcraft-{run_dir.name}", storage_path=str(run_dir.parent / ".ray")),
        )
        try:
            trainer.fit()
        except Exception as exc:  # Ray wraps the worker's error (TrainingFailedError and friends)
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise WorkerError(f"Ray Train run failed: {type(cause).__name__}: {cause}; the run directory keeps the "
                              "last checkpoint: rerun with --resume") from None
    finally:
        if started:
            ray.shutdown()
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    return _result_of(run_dir, cache)
