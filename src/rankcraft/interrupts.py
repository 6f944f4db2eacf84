"""Termination signals as interrupts.

Ctrl-C (SIGINT) raises :class:`KeyboardInterrupt` in the main thread, and the training and search loops are written
to stop cleanly on it (a run directory is left resumable). A process manager stops a process with SIGTERM instead
(``kill PID``, ``docker stop``, Kubernetes, Slurm), whose default action ends the process on the spot. Within
:func:`terminate_as_interrupt`, SIGTERM raises :class:`Terminated` — a :class:`KeyboardInterrupt` — in the main
thread, so both signals take exactly the same path; ``Terminated.signum`` tells them apart (the CLI exits with
``128 + signum``: 130 after Ctrl-C, 143 after SIGTERM).

:class:`DeferredInterrupts` is for code whose steps must not be cut in half (an optimiser step that updates several
parameter groups, a checkpoint that must match the weights): inside it SIGINT/SIGTERM only record that a stop was
requested, and the code raises the interrupt itself at a safe point with :meth:`DeferredInterrupts.check`::

    with DeferredInterrupts() as stop:
        for batch in batches:
            train_step(batch)
            if stop.requested:
                save_checkpoint(...)
                stop.check()          # raises Terminated / KeyboardInterrupt

Signal handlers can only be installed from the main thread; elsewhere both context managers do nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DeferredInterrupts", "Terminated", "interrupt_exit_code", "terminate_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """A KeyboardInterrupt raised for a termination signal (``signum``: ``signal.SIGTERM``, or ``SIGINT`` when a
    deferred Ctrl-C is re-raised)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def interrupt_exit_code(exc: BaseException) -> int:
    """The conventional exit status of a process stopped by ``exc``: ``128 + signal number`` (130 for Ctrl-C)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_as_interrupt(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, each of ``signals`` raises :class:`Terminated` in the main thread, as Ctrl-C raises
    KeyboardInterrupt; the previous handlers are restored on exit. Code that catches KeyboardInterrupt to save its
    state therefore does the same on SIGTERM."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class DeferredInterrupts:
    """Within the block, SIGINT and SIGTERM are recorded instead of raised; :meth:`check` raises the first one
    (:class:`Terminated`, a KeyboardInterrupt, with its ``signum``). On leaving the block the previous handlers come
    back, and a stop that was requested but not yet raised is raised then (unless the block is already ending with
    an exception). A second Ctrl-C while a stop is pending raises at once: the user can still force the way out."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise the recorded interrupt, if any."""
        if self.signum is not None:
            signum, self.signum = self.signum, None
            raise Terminated(signum)

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.signum = None
            raise Terminated(signum)
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "DeferredInterrupts":
        if _in_main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        if exc_type is None:
            self.check()
