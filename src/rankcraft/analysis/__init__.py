"""Data analyses (descriptive statistics of datasets that motivate or check model designs)."""

from rankcraft.analysis.sessions import (
    EventLog,
    analyze_sessions,
    format_session_report,
)

__all__ = ["EventLog", "analyze_sessions", "format_session_report"]
