"""Persistent trial store of an architecture search, on Optuna's relational storage.

Every evaluated candidate is one Optuna trial of a study whose objectives are all minimised. A search's store
has two::

    values[0]  the quality objective of the candidate (e.g. validation logloss)
    values[1]  its cost: FLOPs per example

and a store opened with ``objectives=k`` (``rankcraft tune``: one quality objective, or several such as
``1-auc``, FLOPs and latency) has ``k``, passed to :meth:`TrialStore.complete` as ``values``.

and everything else about it is kept as JSON trial user attributes: ``key`` (the candidate key, e.g.
``"standalone-1f3a…"``), ``strategy``, ``arch``, ``hparams``, ``fidelity``, ``metrics``, ``params``, ``flops``,
``timings``, ``error`` and ``extra``. Search-level metadata (the resolved config, the elapsed time, …) are study
user attributes (:meth:`TrialStore.set_meta`). The storage is a SQLite file by default or any SQLAlchemy URL
(``postgresql://user:pw@host/db``) for a database shared by several machines; the study can be inspected with
the usual Optuna tools (``optuna-dashboard sqlite:///trials.db``).

Life cycle of a trial and crash safety:

* :meth:`TrialStore.start` creates a RUNNING trial holding the candidate's description, in one transaction,
  before the candidate is trained;
* :meth:`TrialStore.complete` stores the results and then moves the trial to COMPLETE with
  ``values = (objective, flops)``; :meth:`TrialStore.fail` moves it to FAIL with an error message. A
  non-finite objective (a diverged candidate's NaN logloss) or non-finite FLOPs make the trial FAIL with an
  explanatory error instead: Optuna refuses NaN values;
* a process killed at any moment (``kill -9``) leaves only completed trials with all their data and at most the
  trials it was running, still RUNNING: :meth:`TrialStore.recover` marks those FAIL (error ``"interrupted"``)
  so that the resumed search re-runs them. Call it only when no other process is working on the same study.

Every stored value is converted to plain JSON first (numpy scalars and arrays become numbers and lists, tuples
become lists, non-string dict keys become strings; NaN is kept), so what :meth:`TrialStore.trials` returns is
exactly what a reopened store returns.

Optuna (the ``search`` extra: ``pip install 'rankcraft[search]'``) is imported when a store is opened; its
per-trial INFO logs are silenced.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from rankcraft.errors import ConfigError, RankcraftError

DIRECTIONS = ("minimize", "minimize")  # (quality objective, FLOPs / example)
STATUSES = ("complete", "failed", "running")
MAX_ERROR_CHARS = 20_000  # error messages (tracebacks) are cut to this length: MySQL TEXT holds 64 KiB

_TRIAL_FIELDS = ("key", "strategy", "arch", "hparams", "fidelity", "metrics", "params", "flops", "timings",
                 "error", "extra")


@dataclass
class TrialRecord:
    """One evaluated (or running, or failed) candidate, as stored."""

    number: int  # optuna trial number (0-based, creation order)
    key: str  # candidate key, unique within the study for completed trials
    status: str  # "complete" | "failed" | "running"
    strategy: str
    arch: dict  # architecture JSON (plain dict)
    hparams: dict
    fidelity: dict  # e.g. {"epochs": 1, "max_steps": 300}
    metrics: dict  # e.g. {"auc": .., "logloss": .., "ne": ..}
    flops: float | None  # FLOPs / example
    params: int | None
    timings: dict  # e.g. {"train_seconds": ..}
    error: str | None
    extra: dict = field(default_factory=dict)
    objective: float | None = None  # values[0] of a completed trial
    values: list[float] | None = None  # all objective values of a completed trial


_QUIETED = False


def _optuna():
    """The optuna module (its per-trial INFO logs silenced once), or a ConfigError naming the extra."""
    global _QUIETED
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigError("the trial store needs Optuna and SQLAlchemy: pip install 'rankcraft[search]'") from None
    if not _QUIETED:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _QUIETED = True
    return optuna


def redact(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host`` replaced by ``***`` (for messages)."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def storage_url(storage: str | Path) -> str:
    """The SQLAlchemy URL of ``storage``: a string containing ``://`` is a URL, anything else a file path
    (``~`` expanded) of a SQLite database, ``sqlite:///<absolute path>``."""
    if isinstance(storage, str) and "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).expanduser().resolve()}"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///…`` URL (None for other URLs and in-memory SQLite)."""
    m = re.fullmatch(r"sqlite(?:\+\w+)?:///([^?]+)(?:\?.*)?", url)
    if not m or m.group(1) in ("", ":memory:"):
        return None
    return Path(m.group(1))


def _reason(exc: BaseException) -> str:
    """A one-line description of a storage error (the DB-API error rather than SQLAlchemy's wrapper)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, ImportError):
        first = f"the database driver is not installed ({exc.__cause__ or first})"
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def _json_default(obj: Any, name: str) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise ConfigError(f"trial store: field '{name}' is not JSON-serialisable ({type(obj).__name__}: {obj!r:.80})")


def _plain(value: Any, name: str) -> Any:
    """``value`` as plain JSON data (what a reopened store will return)."""
    try:
        return json.loads(json.dumps(value, default=lambda o: _json_default(o, name)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trial store: field '{name}' is not JSON-serialisable: {exc}") from None


def _finite(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class TrialStore:
    """The trials of one search (an Optuna study with directions ``["minimize", "minimize"]``).

    ``storage`` is a file path (a SQLite database, created with its parent directories) or a SQLAlchemy URL
    (used as is).
    With ``create=False`` a missing SQLite file or a missing study is a :class:`ConfigError` instead (for
    read-only use such as reports). A URL that cannot be opened, an unreachable database or a study with other
    directions is a :class:`ConfigError` naming the storage.
    """

    def __init__(self, storage: str | Path, study: str = "search", *, create: bool = True, objectives: int = 2,
                 sampler=None):
        optuna = _optuna()
        if objectives < 1:
            raise ConfigError("a trial store needs at least one objective")
        directions = ["minimize"] * objectives
        self.objectives = objectives
        sampler = sampler if sampler is not None else optuna.samplers.RandomSampler(seed=0)
        self._url = storage_url(storage)
        self._name = study
        where = f"trial store '{redact(self._url)}'"
        self._where = where
        db_file = _sqlite_file(self._url)
        if db_file is not None:
            if not create and not db_file.exists():
                raise ConfigError(f"{where}: no such file {db_file}")
            if create and not (isinstance(storage, str) and "://" in storage):  # a path, not a URL
                try:
                    db_file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(f"{where}: cannot create directory {db_file.parent}: {exc}") from None
        engine_kwargs = {"connect_args": {"timeout": 60}} if db_file is not None else None
        try:
            self._rdb = optuna.storages.RDBStorage(self._url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to open is reported as a config problem
            raise ConfigError(f"{where}: cannot open the storage: {_reason(exc)}") from None
        try:
            if create:
                self._study = optuna.create_study(storage=self._rdb, study_name=study, directions=directions,
                                                  sampler=sampler, load_if_exists=True)
            else:
                self._study = optuna.load_study(storage=self._rdb, study_name=study, sampler=sampler)
        except KeyError:
            self.close()
            names = sorted(s.study_name for s in self._rdb.get_all_studies())
            raise ConfigError(f"{where}: no study '{study}' (studies: {', '.join(names) or 'none'})") from None
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise ConfigError(f"{where}: cannot open study '{study}': {_reason(exc)}") from None
        got = [d.name.lower() for d in self._study.directions]
        if got != directions:
            self.close()
            raise ConfigError(f"{where}: study '{study}' has directions {got}, not {directions}: it was not "
                              f"created by a rankcraft search with {objectives} objective(s)")
        self._study_id = self._rdb.get_study_id_from_name(study)

    # -- plumbing ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the storage (``sqlite:///<absolute path>`` for a file)."""
        return self._url

    @property
    def study_name(self) -> str:
        return self._name

    @property
    def study(self):
        """The underlying :class:`optuna.Study` (for Optuna's own tools)."""
        return self._study

    def close(self) -> None:
        """Release the database connections (the store must not be used afterwards)."""
        rdb = getattr(self, "_rdb", None)
        if rdb is not None:
            with contextlib.suppress(Exception):
                rdb.remove_session()
                rdb.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrialStore({redact(self._url)!r}, study={self._name!r})"

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Database failures during ``action`` as a :class:`RankcraftError` naming the storage."""
        import sqlalchemy.exc

        try:
            yield
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise RankcraftError(f"{self._where}: {action} failed: {_reason(exc)}") from None

    def _trial_id(self, number: int) -> int:
        try:
            return self._rdb.get_trial_id_from_study_id_trial_number(self._study_id, int(number))
        except KeyError:
            raise RankcraftError(f"{self._where}: study '{self._name}' has no trial {number}") from None

    def _running(self, number: int, action: str):
        """``(trial id, FrozenTrial)`` of trial ``number``, which must be RUNNING."""
        optuna = _optuna()
        tid = self._trial_id(number)
        frozen = self._rdb.get_trial(tid)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            raise RankcraftError(f"{self._where}: cannot {action} trial {number}: it is already "
                                 f"{_status(frozen.state)}")
        return tid, frozen

    @staticmethod
    def _attrs(key: str, arch, hparams, fidelity, strategy, extra) -> dict:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"trial store: a trial key must be a non-empty string, not {key!r}")
        return {"key": key, "strategy": str(strategy or ""), "arch": _plain(arch, "arch"),
                "hparams": _plain(hparams or {}, "hparams"), "fidelity": _plain(fidelity or {}, "fidelity"),
                "extra": _plain(extra or {}, "extra")}

    def _values(self, objective, flops, values) -> list:
        """The trial's objective values: ``values`` as given, else ``(objective, flops)`` for a two-objective
        store and ``(objective,)`` for a one-objective store."""
        if values is None:
            values = [objective, flops] if self.objectives == 2 else [objective]
        values = list(values)
        if len(values) != self.objectives:
            raise ConfigError(f"{self._where}: a trial of study '{self._name}' has {self.objectives} objective "
                              f"value(s), not {len(values)}")
        return values

    def _results(self, values, flops, metrics, params, timings) -> tuple[dict, str | None]:
        """Result attributes and, for a non-finite objective value, the error that fails the trial."""
        res = {"metrics": _plain(metrics or {}, "metrics"), "params": None if params is None else int(params),
               "flops": _plain(flops, "flops"), "timings": _plain(timings or {}, "timings")}
        for i, v in enumerate(values):
            if _finite(v) is None:
                if i == 1 and self.objectives == 2 and v is flops:
                    return res, f"non-finite FLOPs/example {v!r}"
                return res, (f"non-finite objective {v!r} (diverged training?)" if i == 0
                             else f"non-finite objective value {i} {v!r}")
        return res, None

    # -- writing ---------------------------------------------------------------------------------------------
    def start(self, key: str, *, arch: dict, hparams: dict | None = None, fidelity: dict | None = None,
              strategy: str = "", extra: dict | None = None) -> int:
        """Create a RUNNING trial for candidate ``key`` (one transaction); returns its trial number."""
        return self._create(self._attrs(key, arch, hparams, fidelity, strategy, extra), values=None, error=None)

    def ask(self, distributions: dict, *, strategy: str = "", key_prefix: str = "trial") -> tuple[int, dict]:
        """A new RUNNING trial whose parameters the study's sampler draws from ``distributions`` (Optuna
        distributions by name; the sampler sees every earlier trial of the study, also those of earlier
        processes); returns ``(trial number, sampled parameters)``. Its key is ``<key_prefix>-<number>``; describe
        the candidate with :meth:`describe`."""
        with self._guard("asking for a trial"):
            trial = self._study.ask(distributions)
            attrs = self._attrs(f"{key_prefix}-{trial.number}", {}, None, None, strategy, None)
            for name, value in attrs.items():
                self._rdb.set_trial_user_attr(trial._trial_id, name, value)
            return trial.number, dict(trial.params)

    def describe(self, number: int, *, arch: dict | None = None, hparams: dict | None = None,
                 fidelity: dict | None = None) -> None:
        """Set the candidate description of RUNNING trial ``number`` (after :meth:`ask`)."""
        with self._guard(f"describing trial {number}"):
            tid, _ = self._running(number, "describe")
            for name, value in (("arch", arch), ("hparams", hparams), ("fidelity", fidelity)):
                if value is not None:
                    self._rdb.set_trial_user_attr(tid, name, _plain(value, name))

    def complete(self, number: int, *, objective: float | None = None, flops: float | None = None,
                 metrics: dict, params: int | None = None, timings: dict | None = None, extra: dict | None = None,
                 values: list[float] | None = None) -> None:
        """Store the results of RUNNING trial ``number`` and mark it COMPLETE with values
        ``(objective, flops)`` (or ``values``, one per objective of the store); a non-finite value marks it FAIL
        instead (with the reason as error). ``extra`` is merged into the trial's extra attributes."""
        values = self._values(objective, flops, values)
        with self._guard(f"completing trial {number}"):
            tid, frozen = self._running(number, "complete")
            res, error = self._results(values, flops, metrics, params, timings)
            if extra:
                res["extra"] = {**frozen.user_attrs.get("extra", {}), **_plain(extra, "extra")}
            for name, value in res.items():  # results first: the state change below commits the trial
                self._rdb.set_trial_user_attr(tid, name, value)
            if error is not None:
                self._fail(number, tid, error)
            else:
                self._study.tell(int(number), [float(v) for v in values])

    def fail(self, number: int, error: str) -> None:
        """Mark RUNNING trial ``number`` FAIL with ``error`` (e.g. a traceback)."""
        with self._guard(f"failing trial {number}"):
            self._fail(number, self._running(number, "fail")[0], error)

    def _fail(self, number: int, tid: int, error: str) -> None:
        optuna = _optuna()
        text = str(error)
        if len(text) > MAX_ERROR_CHARS:
            text = text[:MAX_ERROR_CHARS] + " … (truncated)"
        self._rdb.set_trial_user_attr(tid, "error", text)
        self._study.tell(int(number), state=optuna.trial.TrialState.FAIL)

    def record(self, key: str, *, arch: dict, objective: float | None = None, flops: float | None = None,
               metrics: dict, hparams: dict | None = None, fidelity: dict | None = None, strategy: str = "",
               params: int | None = None, timings: dict | None = None, extra: dict | None = None,
               values: list[float] | None = None) -> int:
        """:meth:`start` + :meth:`complete` in one transaction; returns the trial number."""
        values = self._values(objective, flops, values)
        attrs = self._attrs(key, arch, hparams, fidelity, strategy, extra)
        res, error = self._results(values, flops, metrics, params, timings)
        return self._create({**attrs, **res}, values=None if error else [float(v) for v in values], error=error)

    def _create(self, attrs: dict, *, values: list[float] | None, error: str | None) -> int:
        optuna = _optuna()
        TrialState = optuna.trial.TrialState
        if error is not None:
            attrs["error"] = error
            state = TrialState.FAIL
        else:
            state = TrialState.RUNNING if values is None else TrialState.COMPLETE
        # A template trial is written with all its attributes in one transaction (study.ask() followed by
        # set_user_attr would commit once per attribute and could leave a half-described trial behind).
        template = optuna.trial.create_trial(state=state, values=values, user_attrs=attrs)
        with self._guard(f"adding trial '{attrs['key']}'"):
            tid = self._rdb.create_new_trial(self._study_id, template_trial=template)
            return self._rdb.get_trial_number_from_id(tid)

    def recover(self) -> int:
        """Mark the trials left RUNNING by a crashed process FAIL with error ``"interrupted"``; returns how
        many. Only call it when no other process is working on this study (its running trials would be
        failed too)."""
        optuna = _optuna()
        n = 0
        with self._guard("recovering interrupted trials"):
            for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                try:
                    self._fail(t.number, self._trial_id(t.number), "interrupted")
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    continue  # finished meanwhile
                n += 1
        return n

    # -- search-level metadata -------------------------------------------------------------------------------
    def set_meta(self, name: str, value: Any) -> None:
        """Store JSON-able search metadata ``name`` (a study user attribute)."""
        with self._guard(f"setting metadata '{name}'"):
            self._study.set_user_attr(name, _plain(value, name))

    def get_meta(self, name: str, default: Any = None) -> Any:
        with self._guard(f"reading metadata '{name}'"):
            return self._study.user_attrs.get(name, default)

    # -- reading ---------------------------------------------------------------------------------------------
    def _frozen(self, status: str | None) -> list:
        optuna = _optuna()
        S = optuna.trial.TrialState
        states = {None: None, "complete": (S.COMPLETE,), "failed": (S.FAIL, S.PRUNED),
                  "running": (S.RUNNING, S.WAITING)}
        if status not in states:
            raise ValueError(f"trial status must be one of {STATUSES} or None, not {status!r}")
        with self._guard("reading trials"):
            return self._study.get_trials(deepcopy=False, states=states[status])

    def trials(self, status: str | None = "complete") -> list[TrialRecord]:
        """The trials with ``status`` (``"complete"``, ``"failed"``, ``"running"``; None = all), ordered by
        trial number."""
        return [_to_record(t) for t in self._frozen(status)]

    def get(self, key: str) -> TrialRecord | None:
        """The completed trial with candidate ``key`` (the latest if several), or None."""
        for t in reversed(self._frozen("complete")):
            if t.user_attrs.get("key") == key:
                return _to_record(t)
        return None

    def completed_keys(self) -> set[str]:
        return {t.user_attrs.get("key", "") for t in self._frozen("complete")}

    def __len__(self) -> int:
        """The number of completed trials."""
        return len(self._frozen("complete"))

    def __bool__(self) -> bool:  # an empty store is still a store (``if store:`` must not call __len__)
        return True


def _status(state) -> str:
    name = state.name
    return {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "failed"}.get(name, "running")


def _to_record(t) -> TrialRecord:
    ua = copy.deepcopy(t.user_attrs)
    status = _status(t.state)
    values = t.values if status == "complete" else None
    flops = _finite(ua.get("flops"))
    if values and len(values) == 2 and flops is None:
        flops = values[1]
    params = ua.get("params")
    return TrialRecord(number=t.number, key=ua.get("key", ""), status=status, strategy=ua.get("strategy", ""),
                       arch=ua.get("arch") or {}, hparams=ua.get("hparams") or {}, fidelity=ua.get("fidelity") or {},
                       metrics=ua.get("metrics") or {}, flops=None if flops is None else float(flops),
                       params=None if params is None else int(params), timings=ua.get("timings") or {},
                       error=ua.get("error"), extra=ua.get("extra") or {},
                       objective=float(values[0]) if values else None,
                       values=[float(v) for v in values] if values else None)


__all__ = ["TrialRecord", "TrialStore", "redact", "storage_url"]
