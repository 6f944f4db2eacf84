"""Using a trained run: metrics on a labelled file and scores for every row of a file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from rankcraft.data.dataset import encode_file
from rankcraft.data.delays import window_suffix
from rankcraft.data.encoders import describe_skips
from rankcraft.data.windows import check_window, serve_windows, window_days
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_bytes
from rankcraft.training.evaluation import evaluate as evaluate_data
from rankcraft.training.evaluation import predict_heads
from rankcraft.training.run import load_run
from rankcraft.training.windows import group_ids, load_windows


def nest_by_head(metrics: dict) -> dict:
    """``{"ctr/auc": .., "cvr/auc": ..}`` → ``{"ctr": {"auc": ..}, "cvr": {"auc": ..}}``; keys without a head stay
    at the top (a one-head run's metrics are returned unchanged)."""
    out: dict = {}
    for k, v in metrics.items():
        head, sep, name = k.rpartition("/")
        if sep:
            out.setdefault(head, {})[name] = v
        else:
            out[k] = v
    return out


def evaluate(run_dir: str | Path, file: str | Path) -> dict:
    """Metrics of a run's model on a labelled file: for a one-head run ``{auc, logloss, ne, calibration, rows[,
    gauc]}``; for a multi-task run the same per task, keyed by task (``{"ctr": {...}, "cvr": {...}, "mean":
    {...}}``). Every label the objective uses must be in the file."""
    run = load_run(run_dir)
    data, raw = encode_file(run.encoders, file)
    m = evaluate_data(run.model, data, run.objective, batch_size=run.config.train.eval_batch_size, progress=True)
    m.pop("inference_rows_per_s", None)
    m = nest_by_head(m)
    if raw.skipped:
        m["skipped"] = describe_skips(raw)
    return m


def predict(run_dir: str | Path, file: str | Path, out: str | Path | None = None, *,
            window: str | None = None) -> np.ndarray | dict:
    """Predictions for every row of ``file`` in input order; labels are not needed (absent or blank label columns
    are fine). A one-head run returns the probabilities as an array; a multi-head run a ``{head: array}`` dict.
    ``window`` (e.g. ``"3d"``, a run with fixed-window heads and a ``windows`` section): the conversion probability
    within that window as one column ``window_<T>``, interpolated from the heads (training/windows.py).
    With ``out``, a CSV with one column per head (``score`` for a one-head model) is written atomically."""
    run = load_run(run_dir)
    wi = None
    if window is not None:
        wi, wcfg, wheads = load_windows(Path(run_dir))
        check_window(wi, wcfg.max_window_days, window_days(window), window)  # before any scoring
    data, raw = encode_file(run.encoders, file, require_labels=False)
    if raw.skipped:
        raise ConfigError(f"{file}: {len(raw.skipped)} row(s) could not be read; predictions must cover every row "
                          f"({describe_skips(raw)})")
    heads = predict_heads(run.model, data, run.objective, batch_size=run.config.train.eval_batch_size,
                          progress=True)
    if wi is not None:
        groups = group_ids(run.features, data.columns, wcfg.group)
        p = serve_windows(wi, wheads, heads, [window] * len(data), groups, wcfg.max_window_days)
        heads = {f"window_{window_suffix(window)}": p}
    if out is not None:
        buf = io.BytesIO()
        pacsv.write_csv(pa.table({h: pa.array(p.astype(np.float64)) for h, p in heads.items()}), buf)
        atomic_write_bytes(out, buf.getvalue())
    if len(heads) == 1:
        return next(iter(heads.values()))
    return heads
