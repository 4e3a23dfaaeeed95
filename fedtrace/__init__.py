"""fedtrace: privacy-preserving federated queries for cross-border asset tracing.

This package holds what nodes and coordinators share: protocol primitives
(group, filters), identifier canonicalisation, PKI, and the CLI entry point.
`fedtrace.connect("FED.toml")` opens the investigator's Python API
(`fedtrace.api`, docs/python-api.md); it is imported on first use, so
`import fedtrace` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtrace.api import FederationClient

__version__ = "0.1.0"
__all__ = ["__version__", "connect"]


def connect(federation: str | Path) -> FederationClient:
    """A client of the federation that FED.toml describes (see `fedtrace.api.connect`)."""
    from fedtrace.api import connect as api_connect

    return api_connect(federation)
