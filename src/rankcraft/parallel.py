"""Parallel evaluation of search candidates, sequentially in-process or through Ray.

An architecture search evaluates batches of candidates; evaluating one means calling ``fn(item)`` where ``fn`` is a
plain module-level (picklable) function and ``item`` a plain picklable object (typically a dict holding the
candidate and its seed) and the result is a metrics dict. An :class:`Executor` maps ``fn`` over a list of items:

* results come back **in the order of the items**, whatever order the tasks finish in;
* a task that raises does not kill the batch: its slot holds a :class:`Failure` (``"ExcType: message"`` plus the
  traceback); test for it with :func:`is_failure`;
* every task runs with ``torch.set_num_threads(threads_per_task)``, in-process or in a Ray worker, so a task fully
  determined by its arguments gives the same result with :class:`SequentialExecutor` and :class:`RayExecutor`.

:class:`RayExecutor` starts a private local Ray instance by default (``num_cpus = workers * threads_per_task``,
no dashboard, worker output not forwarded to the driver) and shuts it down on :meth:`~Executor.close`. Given an
address (``"auto"``: the cluster in ``RAY_ADDRESS`` or started by ``ray start`` on this machine;
``"host:6379"``; ``"ray://host:10001"`` for Ray Client) it connects to that cluster and on close only disconnects.
If Ray is already initialised in this process (by the caller), that instance is used, whatever the address, and
left running. An address is first probed with a plain TCP connect (``CONNECT_TIMEOUT_S``) and Ray then makes a
single connection attempt, so a wrong address fails with a :class:`~rankcraft.errors.ConfigError` within seconds
(at most ~45 s for a port that accepts connections but is not Ray) instead of Ray's retry loop of many minutes.

Workers must import ``rankcraft`` (the task wrapper lives here) and the module of ``fn``: on a local instance they
run the driver's interpreter, so an installed (also editable) rankcraft is found without ``PYTHONPATH``; on a
cluster, rankcraft must be installed on every node. ``RANKCRAFT_CACHE`` is forwarded to the workers when it is set
in the driver's environment (so they find the same processed-data cache), together with any ``env`` given.

Ray writes its session files (logs, sockets; a few hundred KB per start, never removed by Ray) under
``$RAY_TMPDIR/ray`` (default ``/tmp/ray``), and a local start creates the auth token ``~/.ray/auth_token``.
The ``ray`` package is imported only when a :class:`RayExecutor` is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import traceback as _traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rankcraft.errors import ConfigError

__all__ = ["Executor", "Failure", "RayExecutor", "SequentialExecutor", "is_failure", "make_executor"]

#: seconds the TCP probe of a Ray address may take before the address is declared unreachable
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Failure:
    """The outcome of a task that raised: ``error`` is ``"ExcType: message"``, ``traceback`` the formatted one."""

    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return self.error


def is_failure(x: Any) -> bool:
    """True if ``x`` is a :class:`Failure` (a task that raised) rather than a result."""
    return isinstance(x, Failure)


def _failure(exc: BaseException, tb: str | None = None) -> Failure:
    msg = str(exc)
    error = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if tb is None:
        tb = "".join(_traceback.format_exception(exc))
    return Failure(error, tb)


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:  # noqa: BLE001 - one failing task must not kill the batch
        return _failure(exc)


def _call_with_threads(fn: Callable[[Any], Any], item: Any, threads: int | None) -> Any:
    if threads is None:
        return _call(fn, item)
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _call(fn, item)
    finally:
        torch.set_num_threads(old)


def _run_task(fn_blob: bytes, fn_name: str, item: Any, threads: int) -> Any:
    """Body of a Ray task (runs in a worker; must stay a module-level function of an importable module).

    ``fn`` arrives pickled so that failing to load it (its module not importable in the worker) becomes a
    :class:`Failure` with a clear message rather than a Ray system error.
    """
    import pickle

    import torch

    try:
        fn = pickle.loads(fn_blob)  # our own cloudpickle of fn, made by the driver
    except Exception as exc:  # noqa: BLE001
        return Failure(f"{type(exc).__name__}: {exc} (loading {fn_name} in a Ray worker: the module that defines it "
                       "must be importable there)", "".join(_traceback.format_exception(exc)))
    torch.set_num_threads(threads)
    return _call(fn, item)


def _progress_bar(title: str | None, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=title, file=sys.stderr, disable=title is None, leave=True, dynamic_ncols=True)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class Executor:
    """Maps a function over items; see the module docstring for the semantics shared by all executors."""

    workers: int = 1

    def map(self, fn: Callable[[Any], Any], items: list, *, progress: str | None = None) -> list:
        """``[fn(item) or Failure for item in items]``, in the order of ``items``.

        ``progress``: if given, a tqdm bar on stderr titled with it advances as tasks finish.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the resources of the executor (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Runs the tasks one after the other in this process.

    ``threads_per_task``: torch intra-op threads set around each task (restored afterwards); ``None`` leaves the
    process setting alone.
    """

    def __init__(self, *, threads_per_task: int | None = None):
        _check_positive("threads_per_task", threads_per_task)
        self.workers = 1
        self.threads_per_task = threads_per_task

    def map(self, fn: Callable[[Any], Any], items: list, *, progress: str | None = None) -> list:
        items = list(items)
        results = []
        with _progress_bar(progress, len(items)) as bar:
            for item in items:
                results.append(_call_with_threads(fn, item, self.threads_per_task))
                bar.update(1)
        return results

    def __repr__(self) -> str:
        return f"SequentialExecutor(threads_per_task={self.threads_per_task})"


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"parallel evaluation needs Ray, which is not installed ({exc}); "
            "install it with: pip install 'rankcraft[search]'") from exc
    return ray


def _split_host_port(address: str, hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"invalid Ray address {address!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    return host, int(port)


def _probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (ConfigError) unless something listens at the host:port that ``ray.init(address)`` would use."""
    if "://" in address:
        scheme, hostport = address.split("://", 1)
        if scheme != "ray":
            raise ConfigError(f"invalid Ray address {address!r}: the only supported scheme is ray://")
    else:
        try:  # what ray.init does: "auto" -> RAY_ADDRESS or the local `ray start` cluster, localhost -> node IP
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # private API moved: probe the address as given
            if address == "auto":
                return
            hostport = address
        else:
            try:
                hostport = canonicalize_bootstrap_address(address)
            except Exception as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
            if hostport is None:
                raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: no running Ray cluster found "
                                  "(start one with `ray start --head`, or set RAY_ADDRESS)")
        if "://" in hostport:  # RAY_ADDRESS=ray://...
            hostport = hostport.split("://", 1)[1]
    host, port = _split_host_port(address, hostport.rstrip("/"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                          f"({exc})") from exc


class _SingleConnectAttempt:
    """During ``ray.init(address)``: one GCS connection attempt instead of 20 (unless the user set the budget).

    The TCP probe has already shown that something listens there; if it is not a healthy Ray GCS, ``ray.init`` then
    gives up after one attempt (at most ~40 s for a silent listener) instead of retrying for many minutes.
    """

    _var = "RAY_gcs_server_port_wait_time_s"  # read by ray's Node._init_gcs_client at call time

    def __enter__(self):
        self._set = self._var not in os.environ
        if self._set:
            os.environ[self._var] = "1"

    def __exit__(self, *exc_info):
        if self._set:
            os.environ.pop(self._var, None)


class _QuietAuthWarning:
    """Silences Ray's start-up notice that token authentication was enabled by default (it still is)."""

    _name = "ray._private.authentication.authentication_token_setup"

    def __enter__(self):
        self._logger = logging.getLogger(self._name)
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc_info):
        self._logger.setLevel(self._level)


class RayExecutor(Executor):
    """Runs the tasks as Ray tasks, at most ``workers`` at a time, each with ``threads_per_task`` CPUs/threads.

    ``workers``: concurrent tasks; ``None`` means as many as the CPUs allow (``os.cpu_count() // threads_per_task``
    on a local instance, the cluster's CPUs ``// threads_per_task`` on a cluster).
    ``address``: ``None`` (or ``"local"``) starts a local Ray instance; otherwise the cluster to connect to.
    ``env``: environment variables set in the workers (``RANKCRAFT_CACHE`` is added from the driver's environment).
    ``log_to_driver``: forward the workers' stdout/stderr to this process (off: they go to Ray's session logs).
    """

    def __init__(self, workers: int | None = None, *, address: str | None = None, threads_per_task: int = 1,
                 env: dict[str, str] | None = None, log_to_driver: bool = False):
        _check_positive("workers", workers)
        _check_positive("threads_per_task", threads_per_task)
        env = dict(env or {})
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"env must map strings to strings; got {key!r}: {value!r}")
        if "RANKCRAFT_CACHE" in os.environ:
            env.setdefault("RANKCRAFT_CACHE", os.environ["RANKCRAFT_CACHE"])
        if address == "local":
            address = None
        self.address = address
        self.threads_per_task = threads_per_task
        self.env = env
        self._ray = ray = _import_ray()
        self._owns_ray = False   # we started a local instance or connected: close() calls ray.shutdown()
        self._closed = False

        if address is not None:
            _probe(address)
        if ray.is_initialized():
            pass  # the caller's instance (whatever the address): use it, leave it running
        elif address is None:
            num_cpus = workers * threads_per_task if workers is not None else (os.cpu_count() or 1)
            with _QuietAuthWarning():
                # "local" (not None): never attach to a cluster named by RAY_ADDRESS
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                         logging_level=logging.WARNING, ignore_reinit_error=True)
            self._owns_ray = True
        else:
            try:
                with _SingleConnectAttempt():
                    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING,
                             ignore_reinit_error=True)
            except Exception as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {type(exc).__name__}: "
                                  f"{exc}") from exc
            self._owns_ray = True

        if workers is None:
            try:
                cpus = int(ray.cluster_resources().get("CPU", 1))
            except Exception:  # noqa: BLE001 - only a default, never fatal
                cpus = os.cpu_count() or 1
            workers = max(1, cpus // threads_per_task)
        self.workers = workers
        options: dict[str, Any] = {"num_cpus": threads_per_task}
        if env:
            options["runtime_env"] = {"env_vars": env}
        self._task = ray.remote(_run_task).options(**options)

    def map(self, fn: Callable[[Any], Any], items: list, *, progress: str | None = None) -> list:
        if self._closed:
            raise RuntimeError("RayExecutor.map called after close()")
        items = list(items)
        if not items:
            return []
        ray = self._ray
        fn_ref = ray.put(ray.cloudpickle.dumps(fn))
        fn_name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        submitted = 0
        with _progress_bar(progress, len(items)) as bar:
            try:
                while submitted < len(items) or pending:
                    while submitted < len(items) and len(pending) < self.workers:
                        pending[self._task.remote(fn_ref, fn_name, items[submitted], self.threads_per_task)] = submitted
                        submitted += 1
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        i = pending.pop(ref)
                        try:
                            results[i] = ray.get(ref)
                        except Exception as exc:  # noqa: BLE001 - Ray-level failure: worker died, fn not importable, ...
                            results[i] = self._ray_failure(exc)
                        bar.update(1)
            except BaseException:
                for ref in pending:  # e.g. KeyboardInterrupt: do not leave the cluster busy
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
        return results

    def _ray_failure(self, exc: Exception) -> Failure:
        cause = getattr(exc, "cause", None)
        if isinstance(exc, self._ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
            return _failure(cause, str(exc))  # the exception raised in the worker
        first_line = (str(exc).strip().splitlines() or [""])[0]  # Ray's messages embed whole tracebacks
        return Failure(f"{type(exc).__name__}: {first_line}", str(exc))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()  # stops a local instance we started; only disconnects from a cluster

    def __repr__(self) -> str:
        where = self.address or "local"
        return f"RayExecutor(workers={self.workers}, address={where!r}, threads_per_task={self.threads_per_task})"


def make_executor(workers: int = 1, *, ray_address: str | None = None, threads_per_task: int = 1) -> Executor:
    """A :class:`SequentialExecutor` for ``workers <= 1`` without ``ray_address``, else a :class:`RayExecutor`.

    With ``ray_address``, ``workers <= 0`` means as many concurrent tasks as the cluster's CPUs allow. Both executors
    run each task with ``threads_per_task`` torch threads, so they give the same results.
    """
    if workers <= 1 and ray_address is None:
        return SequentialExecutor(threads_per_task=threads_per_task)
    return RayExecutor(workers if workers >= 1 else None, address=ray_address, threads_per_task=threads_per_task)
