"""Scoring an exported artifact: ONNX with numpy, pyarrow and ONNX Runtime only (no torch), or a ``pt2``
(``torch.export``) program with torch: the serving side.

:class:`Artifact` loads ``manifest.json``, the encoders and ``model.onnx``; :meth:`Artifact.score_rows` encodes raw
rows (dicts of raw values, as in the training files) with the run's encoders and returns one probability array per
head. Unseen categories map to the OOV id (or their hash bucket), missing values to the schema's fill values, as in
training. This module must not import torch (``tests/test_export.py`` checks it in a fresh interpreter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from rankcraft.data.encoders import Encoders, validate_table
from rankcraft.data.readers import RawTable
from rankcraft.data.windows import (
    WINDOWS_FILE,
    group_column,
    read_windows,
    serve_windows,
)
from rankcraft.errors import ConfigError, DataError

SUPPORTED_FORMATS = (1,)


class Artifact:
    """An exported model ready to score (thread-safe: ONNX Runtime sessions may be run concurrently)."""

    def __init__(self, directory: str | Path, *, threads: int = 1):
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        try:
            self.manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.directory}: not an exported artifact (no manifest.json); export a run with "
                              "`rankcraft export RUN --out DIR`") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: unreadable manifest ({exc})") from None
        if self.manifest.get("format") not in SUPPORTED_FORMATS:
            raise ConfigError(f"{path}: artifact format {self.manifest.get('format')} is not supported by this "
                              f"version (supports {SUPPORTED_FORMATS})")
        self.encoders = Encoders.from_json((self.directory / "encoders.json").read_text())
        self.schema = self.encoders.schema
        self.heads: list[str] = list(self.manifest["heads"])
        self.kind = self.manifest.get("kind", "onnx")
        if self.kind == "pt2":  # a torch.export program: needs torch (not rankcraft's model code)
            import torch

            torch.set_num_threads(threads)
            self._module = torch.export.load(str(self.directory / "model.pt2")).module()
            self.inputs = [i["name"] for i in self.manifest["inputs"]]
            self.session = None
        else:
            try:
                import onnxruntime as ort
            except ImportError:
                raise ConfigError("scoring an ONNX artifact needs onnxruntime: pip install 'rankcraft[serve]'") \
                    from None
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.directory / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
        #: the raw columns a request must be able to provide (labels are not needed)
        self.raw_columns = [c for c in self.schema.required_columns() if c not in self.schema.label_columns]
        #: (interpolator, config, anchor heads) when the run serves any conversion window, else None
        self.windows = read_windows(self.directory) if (self.directory / WINDOWS_FILE).exists() else None
        features = json.loads((self.directory / "features.json").read_text())["features"]
        self.categorical = [f["name"] for f in features if f["kind"] == "categorical"]

    def score_windows(self, columns: dict[str, np.ndarray], scores: dict[str, np.ndarray], windows: list[str]
                      ) -> np.ndarray:
        """The conversion probability within each row's window (``windows[i]``, e.g. ``"3d"``) from the
        anchor heads' ``scores``; a window the artifact cannot serve is a ConfigError naming it."""
        if self.windows is None:
            raise ConfigError("this model serves no conversion window (export a run trained with fixed-window "
                              "heads and a 'windows:' section)")
        wi, cfg, heads = self.windows
        groups = group_column(self.categorical, columns["cat"], cfg.get("group"))
        return serve_windows(wi, heads, scores, windows, groups, cfg.get("max_window_days")).astype(np.float32)

    @property
    def version(self) -> str:
        return f"{self.manifest['model']}@{self.manifest.get('source_run', '')}"

    def encode(self, table: pa.Table, origin: str = "<request>", shared: pa.Table | None = None
               ) -> dict[str, np.ndarray]:
        """Encoded input columns for a table of raw values (strings or numbers per raw column). ``shared``: a
        one-row table of columns common to every row (a request's user/context values), encoded once and
        broadcast."""
        have = set(table.column_names) | (set(shared.column_names) if shared is not None else set())
        missing = [c for c in self.raw_columns if c not in have]
        if missing:
            raise DataError(f"missing feature(s): {', '.join(missing)}", path=origin)
        raw = self._validated(table, [c for c in self.raw_columns if c in table.column_names and
                                      (shared is None or c not in shared.column_names)], origin)
        one = self._validated(shared, [c for c in self.raw_columns if c in shared.column_names], origin + " (shared)") \
            if shared is not None else None
        return self.encoders.transform(raw, labels=False, shared=one)

    def _validated(self, table: pa.Table, columns: list[str], origin: str) -> RawTable:
        strings = pa.table({c: (table.column(c) if pa.types.is_string(table.column(c).type)
                                else table.column(c).cast(pa.string())) for c in columns}) if columns else \
            pa.table({"__rows": pa.array([""] * table.num_rows, pa.string())})  # keeps the row count
        raw = validate_table(RawTable(strings, origin, 0, "memory"), self.schema, labels=False, partial=True)
        if raw.num_rows != strings.num_rows:  # on_error: skip would drop rows and misalign the scores
            line, why = raw.skipped[0]
            raise DataError(f"a value cannot be used: {why}", path=origin)
        return raw

    def score_columns(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            import torch

            with torch.no_grad():
                outs = [t.numpy() for t in self._module(*(torch.from_numpy(columns[k]) for k in self.inputs))]
        else:
            outs = self.session.run(self.heads, {k: columns[k] for k in self.inputs})
        return {h: np.asarray(o, dtype=np.float32) for h, o in zip(self.heads, outs)}

    def score_table(self, table: pa.Table, origin: str = "<request>", shared: pa.Table | None = None
                    ) -> dict[str, np.ndarray]:
        return self.score_columns(self.encode(table, origin, shared))

    def score_rows(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """One probability per row and head: ``{head: float32[len(rows)]}``."""
        table = pa.table({c: pa.array([_text(r.get(c)) for r in rows], pa.string()) for c in self.raw_columns})
        return self.score_table(table)


def _text(v) -> str:
    """A raw JSON value as the text a data file would hold (None → empty: missing)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (list, tuple)):
        raise DataError("a list value must be given as the separator-joined text the schema declares")
    return str(v)
