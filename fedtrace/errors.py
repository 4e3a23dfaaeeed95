"""Errors that reach a user as one clear line, and the CLI's named exit codes."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of the `fedtrace` command (docs/reports.md)."""

    OK = 0
    FAILED = 1  # a check found problems (id normalize, policy check, audit verify)
    USAGE = 2  # bad arguments or bad input: nothing ran
    PARTIAL = 3  # the query ran, but some node did not answer ok


class FedtraceError(Exception):
    """A failure the user can act on; its message is one line: what, where, what to do."""

    exit_code: ExitCode = ExitCode.USAGE


class ConfigError(FedtraceError):
    """A configuration, policy or federation file is missing or invalid."""
