"""User-facing errors.

Every problem with a user's input is raised as a subclass of :class:`RankcraftError` whose message names the
file, the line and the column/field at fault, so the CLI can print it without a stack trace.
"""

from __future__ import annotations


class RankcraftError(Exception):
    """Base class of errors that the CLI reports as a one-line message (exit code 2)."""


class ConfigError(RankcraftError):
    """An invalid schema, config or architecture file."""


class DataError(RankcraftError):
    """Bad input data.

    Attributes ``path``, ``line`` (1-based physical line in the file, header included) and ``column`` are set when
    known, and are all part of the message.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: str | None = None):
        self.path = path
        self.line = line
        self.column = column
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CheckpointError(RankcraftError):
    """A missing, corrupt or incompatible checkpoint / run directory."""


class WorkerError(RankcraftError):
    """A process of a data-parallel run failed or died; ``rank`` names it. The run directory keeps the last
    checkpoint that rank 0 wrote, so the run can be resumed."""

    def __init__(self, message: str, *, rank: int | None = None):
        self.rank = rank
        super().__init__(message)
