"""The Python API's reports of follow-up requests, and the JSON helpers every report uses.

`RequestReport` is what `fedtrace request disclose|preserve|freeze|status` print,
`ExportReport` what `fedtrace request export` wrote; fedtrace.api returns them.
`plain_json` and `json_text` give a report's document as the CLI's `--format json`
output is read back and printed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.followup import FollowUpResult, report_document, report_table
from coordinator.tracing import TimedReport
from fedtrace.errors import ExitCode, FedtraceError
from fedtrace.wire import NodeStatus

__all__ = ["ExportFailed", "ExportReport", "RequestReport", "json_text", "plain_json"]


class ExportFailed(FedtraceError):
    """The node did not return the request to export; the message says why."""

    exit_code = ExitCode.PARTIAL


def plain_json(document: dict[str, Any]) -> dict[str, Any]:
    """The document as `json.loads` of the CLI's output gives it: str, int, list, dict."""
    plain: dict[str, Any] = json.loads(json.dumps(document, ensure_ascii=False))
    return plain


def json_text(document: dict[str, Any]) -> str:
    """The document as `--format json` prints it."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class RequestReport(TimedReport):
    """Follow-up requests as the nodes signed them: one just submitted, or those of a case."""

    case: str
    query: str  # disclose | preserve | freeze | request-status
    dataset: str
    results: tuple[FollowUpResult, ...]

    @property
    def complete(self) -> bool:
        return all(r.status == NodeStatus.OK for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return plain_json(report_document(self.case, self.query, self.dataset, self.results))

    def render(self, fmt: str) -> str:
        """`table` or `json`, as `fedtrace request … --format` prints it."""
        if fmt == "json":
            return json_text(self.to_dict())
        title = "request status" if self.query == "request-status" else self.query
        return report_table(self.case, title, self.results)


@dataclass(frozen=True)
class ExportReport(TimedReport):
    """An exported case record: the signed evidence document and the files written."""

    case: str
    node: str
    request_id: str
    json_path: Path
    html_path: Path
    document: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "node": self.node,
            "request_id": self.request_id,
            "json": str(self.json_path),
            "html": str(self.html_path),
            "record": copy.deepcopy(self.document),
        }
