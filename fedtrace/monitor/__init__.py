"""The monitor's side of accountable queries: open sealed openings, recompute, judge.

A monitor (e.g. a data-protection supervisor) receives a node's export of the
queries sealed to it (`fedtrace node monitor-export`) and runs `fedtrace monitor
verify` on it with its own key. ``read_export`` reads the directory,
``verify_export`` opens and recomputes every query and returns a ``MonitorReport``.
Core code: it imports neither the node nor the coordinator, so a monitor can run it
anywhere, offline. docs/accountability.md explains what it proves.
"""

from __future__ import annotations

from fedtrace.monitor.export import ExportedQuery, ExportError, MonitorExport, read_export
from fedtrace.monitor.verify import (
    CONSISTENT,
    MISUSE,
    UNVERIFIABLE,
    MonitorKeyError,
    MonitorReport,
    Verdict,
    load_monitor_key,
    verify_export,
)

__all__ = [
    "CONSISTENT",
    "MISUSE",
    "UNVERIFIABLE",
    "ExportError",
    "ExportedQuery",
    "MonitorExport",
    "MonitorKeyError",
    "MonitorReport",
    "Verdict",
    "load_monitor_key",
    "read_export",
    "verify_export",
]
