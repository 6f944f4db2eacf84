"""Experiment trackers: where the per-epoch metrics go besides the run directory's ``metrics.jsonl``.

``train.report_to`` lists them: ``jsonl`` (always on: ``metrics.jsonl`` in the run directory), ``tensorboard``
(event files under ``<run_dir>/tensorboard``; needs the ``tensorboard`` extra) and ``mlflow`` (a run in the
current MLflow tracking URI — ``MLFLOW_TRACKING_URI``, default ``./mlruns``; needs the ``mlflow`` extra). Trackers
are optional dependencies and are imported only when asked for; a missing one is a one-line error naming the
extra to install. Metric names keep their ``task/metric`` form (both trackers group on ``/``); ``None`` values
(undefined metrics) are not logged.
"""

from __future__ import annotations

from pathlib import Path

from rankcraft.errors import ConfigError


class Reporter:
    def log_epoch(self, metrics: dict, epoch: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


class TensorBoardReporter(Reporter):
    def __init__(self, run_dir: Path | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.report_to: tensorboard needs the tensorboard package: "
                              "pip install 'rankcraft[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str((run_dir or Path("runs")) / "tensorboard"))

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        for k, v in _numbers(metrics).items():
            self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowReporter(Reporter):
    def __init__(self, run_dir: Path | None, params: dict | None = None):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("train.report_to: mlflow needs the mlflow package: pip install 'rankcraft[mlflow]'") \
                from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_dir.name if run_dir is not None else None)
        if params:
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        self.mlflow.log_metrics(_numbers(metrics), step=epoch)

    def close(self) -> None:
        self.mlflow.end_run()


def make_reporters(names: list[str], run_dir: Path | None, params: dict | None = None) -> list[Reporter]:
    """The trackers ``names`` asks for (``jsonl`` is the run directory's own file and needs none)."""
    out: list[Reporter] = []
    for n in dict.fromkeys(names):
        if n == "tensorboard":
            out.append(TensorBoardReporter(run_dir))
        elif n == "mlflow":
            out.append(MLflowReporter(run_dir, params))
    return out
