"""Using a trained run: metrics on a labelled file and scores for every row of a file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from rankcraft.data.dataset import encode_file
from rankcraft.data.encoders import describe_skips
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_bytes
from rankcraft.training.evaluation import evaluate as evaluate_data
from rankcraft.training.evaluation import predict_proba
from rankcraft.training.run import load_run


def evaluate(run_dir: str | Path, file: str | Path) -> dict:
    """Metrics of a run's model on a labelled file (auc, logloss, ne, calibration, rows, gauc with a user column)."""
    run = load_run(run_dir)
    data, raw = encode_file(run.encoders, file)
    m = evaluate_data(run.model, data, batch_size=run.config.train.eval_batch_size)
    m.pop("inference_rows_per_s", None)
    if raw.skipped:
        m["skipped"] = describe_skips(raw)
    return m


def predict(run_dir: str | Path, file: str | Path, out: str | Path | None = None) -> np.ndarray:
    """Scores (probabilities) for every row of ``file`` in input order; labels may be absent. With ``out``, a CSV
    with one ``score`` column is written atomically."""
    run = load_run(run_dir)
    data, raw = encode_file(run.encoders, file, require_labels=False)
    if raw.skipped:
        raise ConfigError(f"{file}: {len(raw.skipped)} row(s) could not be read; predictions must cover every row "
                          f"({describe_skips(raw)})")
    p = predict_proba(run.model, data, batch_size=run.config.train.eval_batch_size)
    if out is not None:
        buf = io.BytesIO()
        pacsv.write_csv(pa.table({"score": pa.array(p.astype(np.float64))}), buf)
        atomic_write_bytes(out, buf.getvalue())
    return p
