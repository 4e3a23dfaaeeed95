"""The Python API: `fedtrace.connect("FED.toml")`, then match, aggregate, overlap and requests.

One `FederationClient` holds the federation's roster, the investigator's TLS
material and one channel per node (opened on first use, reused by every call
until `close()`), the epoch filters and position tags it fetched, and the
federation's revocation list. Each method returns a typed report whose
`to_dict()` is exactly the JSON object `fedtrace query … --format json` or
`fedtrace request … --format json` prints: the CLI calls these same methods.
Before a query is sent its arguments are checked locally (coordinator.checks):
the case reference's form, the legal basis (trimmed, upper-cased, a known code)
and the dataset (one the selected nodes announced, coordinator.catalogue); a
failed check raises `QueryUsageError` and nothing is sent. See docs/python-api.md.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.aggregate_report import aggregate_report_json, render_aggregate
from coordinator.case_record import case_record, write_case_record
from coordinator.catalogue import INFO_TIMEOUT_SECONDS, DatasetCatalogue, require_dataset
from coordinator.certificates import ensure_investigator_certificate
from coordinator.checks import QueryUsageError, check_case, legal_basis_code
from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.fanout import NodeTrust
from coordinator.federation import Federation, NodeEntry, load_federation
from coordinator.figures import AggregateOutcome
from coordinator.followup import (
    FollowUpAsk,
    request_status,
    submit_request,
)
from coordinator.hash_cache import HashCache
from coordinator.match import MatchQuery, run_match
from coordinator.overlap import OverlapOutcome, OverlapQuery, run_overlap
from coordinator.overlap_report import render as render_overlap
from coordinator.overlap_report import report_json as overlap_report_json
from coordinator.pools import PoolStore, PreparedPools, prepare_pools
from coordinator.progress import Progress, silent
from coordinator.report import WatchlistSummary, plural, status_summary
from coordinator.report import render as render_match
from coordinator.report import report_json as match_report_json
from coordinator.request_reports import (
    ExportFailed,
    ExportReport,
    RequestReport,
    json_text,
    plain_json,
)
from coordinator.results import NodeResult
from coordinator.signatures import sign_report
from coordinator.tracing import Stopwatch, TimedReport
from coordinator.transport import Connections, GrpcConnections
from coordinator.watchlist import CheckedWatchlist, watchlist_items
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.errors import FedtraceError
from fedtrace.revocation import load_revocations
from fedtrace.wire import Level, NodeStatus

__all__ = [
    "AggregateReport",
    "ExportReport",
    "FederationClient",
    "MatchReport",
    "OverlapReport",
    "QueryUsageError",
    "RequestReport",
    "connect",
]


class ApiUsageError(FedtraceError):
    """An argument to a FederationClient method is not usable (nothing was sent)."""


@dataclass(frozen=True)
class MatchReport(TimedReport):
    """Which watchlist items each node holds, as far as its grant lets it say."""

    case: str
    dataset: str
    legal_basis: str
    watchlist: WatchlistSummary
    results: tuple[NodeResult, ...]
    document: dict[str, Any] = field(repr=False)  # signed by the investigator

    @property
    def complete(self) -> bool:
        """Every node answered ok."""
        return all(r.status == NodeStatus.OK for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.document)

    def summary(self) -> str:
        """One line: ``3 nodes, 2 ok, 1 denied; 49 matches``."""
        matches = sum(r.match_count or 0 for r in self.results if r.status == NodeStatus.OK)
        statuses = [r.status for r in self.results]
        return f"{status_summary(statuses)}; {plural(matches, 'match', 'matches')}"

    def render(self, fmt: str, width: int | None = None) -> str:
        """The report as `--format` gives it: table (`width` columns, default the terminal's),
        json (signed) or csv."""
        if fmt == "json":
            return json_text(self.document)
        return render_match(
            fmt,
            self.case,
            "match",
            self.dataset,
            self.results,
            self.watchlist,
            self.legal_basis,
            width,
        )


@dataclass(frozen=True)
class AggregateReport(TimedReport):
    """Noisy sums over the matched records of each node, or one federation total."""

    case: str
    dataset: str
    legal_basis: str
    columns: tuple[str, ...]
    watchlist: WatchlistSummary
    outcome: AggregateOutcome
    document: dict[str, Any] = field(repr=False)

    @property
    def complete(self) -> bool:
        """Every node answered ok, and the total (when asked) was computed."""
        ok = all(r.result.status == NodeStatus.OK for r in self.outcome.results)
        total = self.outcome.total
        return ok and (total is None or total.status == NodeStatus.OK)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.document)

    def summary(self) -> str:
        """One line: ``3 nodes, 3 ok`` and, with a total, whether it was formed."""
        line = status_summary([r.result.status for r in self.outcome.results])
        total = self.outcome.total
        return line if total is None else f"{line}; total {total.status}"

    def render(self, fmt: str, width: int | None = None) -> str:
        """As `MatchReport.render`."""
        if fmt == "json":
            return json_text(self.document)
        return render_aggregate(
            fmt,
            self.case,
            self.dataset,
            self.outcome,
            self.watchlist,
            self.legal_basis,
            self.columns,
            width,
        )


@dataclass(frozen=True)
class OverlapReport(TimedReport):
    """Which groups of nodes share items, counted without a watchlist."""

    case: str
    dataset: str
    legal_basis: str
    outcome: OverlapOutcome
    document: dict[str, Any] = field(repr=False)

    @property
    def complete(self) -> bool:
        """The overlap ran and every node asked took part."""
        return self.outcome.groups is not None and all(
            r.status == NodeStatus.OK for r in self.outcome.results
        )

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.document)

    def summary(self) -> str:
        """One line: ``3 nodes, 3 ok; 4 groups of nodes sharing items`` (or no overlap)."""
        line = status_summary([r.status for r in self.outcome.results])
        groups = self.outcome.groups
        if groups is None:
            return f"{line}; no overlap"
        return f"{line}; {plural(len(groups), 'group', 'groups')} of nodes sharing items"

    def render(self, fmt: str, width: int | None = None) -> str:
        """As `MatchReport.render`."""
        if fmt == "json":
            return json_text(self.document)
        return render_overlap(fmt, self.case, self.dataset, self.outcome, self.legal_basis, width)


class FederationClient:
    """An investigator's connection to a federation; reuse it for many queries, then close it."""

    def __init__(
        self,
        federation: Federation,
        connections: Connections | None = None,
        *,
        progress: Progress = silent,
        filters: FilterCache | None = None,
        tags: TagCache | None = None,
        datasets: DatasetCatalogue | None = None,
    ) -> None:
        grpc_connections = GrpcConnections(federation)  # reads and checks the TLS material
        self.federation = federation
        self.investigator = ensure_investigator_certificate(
            grpc_connections.cert_pem, grpc_connections.ca_pem, federation.cert
        )
        self._key_pem = grpc_connections.key_pem
        self._cert_pem = grpc_connections.cert_pem
        self._owned = grpc_connections if connections is None else None
        self._connections: Connections = connections or grpc_connections
        revoked = (
            load_revocations(federation.revoked, ca_pem=grpc_connections.ca_pem)
            if federation.revoked
            else None
        )
        self._trust = NodeTrust(grpc_connections.ca_pem, revoked)
        self.progress = progress
        self._filters = filters if filters is not None else FilterCache.default()
        self._tags = tags if tags is not None else TagCache.default()
        self._datasets = datasets if datasets is not None else DatasetCatalogue.default(federation)
        self._pools = PoolStore.default()  # additive blinding entries, filled by prepare()
        self._hashes = HashCache()  # H(x) of watched items, in memory only, for repeat matches

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every channel this client opened (and forget the watchlist's hashes)."""
        self._hashes.clear()
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------------

    def _nodes(self, nodes: Sequence[str] | None) -> tuple[NodeEntry, ...]:
        if isinstance(nodes, str):
            nodes = tuple(n for n in nodes.split(",") if n)
        return self.federation.select(tuple(nodes) if nodes else None)

    def _signed(self, document: dict[str, Any]) -> dict[str, Any]:
        return sign_report(plain_json(document), self._key_pem, self._cert_pem)

    def _checked(self, case: str, legal_basis: str) -> tuple[str, str]:
        """The case reference and the normalised legal basis, or QueryUsageError."""
        return check_case(case), legal_basis_code(legal_basis, self.federation.legal_bases)

    def _require_dataset(self, dataset: str, entries: Sequence[NodeEntry]) -> None:
        timeout = min(INFO_TIMEOUT_SECONDS, self.federation.deadline_seconds)
        require_dataset(self._datasets, dataset, entries, self._connections, timeout, self.progress)

    @staticmethod
    def _watchlist(items: Sequence[str] | CheckedWatchlist, kind: str) -> CheckedWatchlist:
        if isinstance(items, CheckedWatchlist):
            return items
        return watchlist_items(items, kind)

    # --- queries --------------------------------------------------------------------------

    def prepare(
        self, *, dataset: str, items: int, nodes: Sequence[str] | None = None
    ) -> PreparedPools:
        """Store `items` additive blinding entries per node whose proof verifies (docs/protocol.md):
        matches of up to that many items then blind with one addition per item and node."""
        entries = self._nodes(nodes)
        self._require_dataset(dataset, entries)
        args = (self.federation, dataset, items, self._connections, self._trust.ca_pem, self._pools)
        return prepare_pools(
            *args, nodes=entries, progress=self.progress, revoked=self._trust.revoked
        )

    def match(
        self,
        items: Sequence[str] | CheckedWatchlist,
        *,
        dataset: str,
        case: str,
        legal_basis: str = "",
        nodes: Sequence[str] | None = None,
        kind: str | None = None,
        cardinality: bool = False,
    ) -> MatchReport:
        """Which of `items` each node holds (or how many, with `cardinality`)."""
        clock = Stopwatch()
        case, legal_basis = self._checked(case, legal_basis)
        entries = self._nodes(nodes)
        kind = kind or ("person" if dataset == "subjects" else "wallet")
        watchlist = self._watchlist(items, kind)
        self._require_dataset(dataset, entries)
        query = MatchQuery(
            dataset=dataset,
            case_ref=case,
            legal_basis=legal_basis,
            kind=watchlist.dataset_kind,
            items=watchlist.items,
            investigator=self.investigator,
            disclosure=Level.CARDINALITY if cardinality else Level.MEMBERSHIP,
        )
        clock.prepared()
        results = run_match(
            self.federation,
            query,
            self._connections,
            self._trust.ca_pem,
            nodes=entries,
            cache=self._filters,
            progress=self.progress,
            revoked=self._trust.revoked,
            pools=self._pools,
            hashes=self._hashes,
        )
        document = match_report_json(
            case, "match", dataset, results, watchlist.summary, legal_basis
        )
        return MatchReport(
            case,
            dataset,
            legal_basis,
            watchlist.summary,
            tuple(results),
            self._signed(document),
            elapsed=clock.stop((r.node, r.seconds) for r in results),
        )

    def aggregate(
        self,
        items: Sequence[str] | CheckedWatchlist,
        *,
        dataset: str,
        case: str,
        sums: Sequence[str],
        legal_basis: str = "",
        total_only: bool = False,
        epsilon: float = 0.0,
        nodes: Sequence[str] | None = None,
    ) -> AggregateReport:
        """How much the watchlisted wallets moved at each node (or in total), never which."""
        clock = Stopwatch()
        columns = tuple(sums)
        if isinstance(sums, str) or not columns:
            raise ApiUsageError("sums must list at least one column to sum")
        if len(set(columns)) != len(columns):
            raise ApiUsageError("sums names a column twice")
        if COUNT_COLUMN in columns:
            raise ApiUsageError(f"sums {COUNT_COLUMN}: the match count is always reported")
        if epsilon < 0 or epsilon != epsilon:
            raise ApiUsageError("epsilon must be a positive number")
        case, legal_basis = self._checked(case, legal_basis)
        entries = self._nodes(nodes)
        watchlist = self._watchlist(items, "wallet")
        self._require_dataset(dataset, entries)
        query = AggregateQuery(
            dataset=dataset,
            case_ref=case,
            legal_basis=legal_basis,
            items=watchlist.items,
            investigator=self.investigator,
            columns=columns,
            total_only=total_only,
            epsilon=epsilon,
        )
        clock.prepared()
        outcome = run_aggregate(
            self.federation,
            query,
            self._connections,
            self._trust.ca_pem,
            nodes=entries,
            cache=self._tags,
            progress=self.progress,
            revoked=self._trust.revoked,
        )
        document = aggregate_report_json(
            case, dataset, outcome, watchlist.summary, legal_basis, columns
        )
        return AggregateReport(
            case,
            dataset,
            legal_basis,
            columns,
            watchlist.summary,
            outcome,
            self._signed(document),
            elapsed=clock.stop((r.result.node, r.result.seconds) for r in outcome.results),
        )

    def overlap(
        self,
        *,
        dataset: str,
        case: str,
        legal_basis: str = "",
        nodes: Sequence[str] | None = None,
    ) -> OverlapReport:
        """Which groups of nodes share items of `dataset`; no watchlist is sent."""
        clock = Stopwatch()
        case, legal_basis = self._checked(case, legal_basis)
        entries = self._nodes(nodes)
        self._require_dataset(dataset, entries)
        query = OverlapQuery(
            dataset=dataset, case_ref=case, legal_basis=legal_basis, investigator=self.investigator
        )
        clock.prepared()
        outcome = run_overlap(
            self.federation,
            query,
            self._connections,
            self._trust.ca_pem,
            nodes=entries,
            progress=self.progress,
            revoked=self._trust.revoked,
        )
        document = overlap_report_json(case, dataset, outcome, legal_basis)
        elapsed = clock.stop((r.node, r.seconds) for r in outcome.results)
        return OverlapReport(
            case, dataset, legal_basis, outcome, self._signed(document), elapsed=elapsed
        )

    # --- follow-up requests ---------------------------------------------------------------

    def _submit(self, node: str, ask: FollowUpAsk, clock: Stopwatch) -> RequestReport:
        [entry] = self._nodes((node,))
        self._require_dataset(ask.dataset, (entry,))
        clock.prepared()
        result = submit_request(
            self.federation, entry, ask, self._connections, self._trust, self.progress
        )
        clock.answered(entry.name)
        return RequestReport(ask.case_ref, ask.kind, ask.dataset, (result,), elapsed=clock.stop())

    def request_disclose(
        self,
        *,
        node: str,
        dataset: str,
        item: str,
        case: str,
        legal_basis: str,
        fields: Sequence[str] | None = None,
        reason: str | None = None,
        kind: str | None = None,
    ) -> RequestReport:
        """Ask `node` for the fields it holds on one item (default: all its policy allows)."""
        clock = Stopwatch()
        case, legal_basis = self._checked(case, legal_basis)
        fields_asked = tuple(fields or ())
        ask = FollowUpAsk("disclose", dataset, item, case, legal_basis, reason or "", fields_asked)
        return self._submit(node, replace(ask, identifier_kind=kind), clock)

    def request_preserve(
        self,
        *,
        node: str,
        dataset: str,
        item: str,
        case: str,
        legal_basis: str,
        days: int | None = None,
        reason: str | None = None,
        kind: str | None = None,
    ) -> RequestReport:
        """Ask `node` to preserve its record of one item (default: the longest it allows)."""
        clock = Stopwatch()
        if days is not None and days < 1:
            raise ApiUsageError(f"days={days}: a preservation period is at least 1 day")
        case, legal_basis = self._checked(case, legal_basis)
        ask = FollowUpAsk("preserve", dataset, item, case, legal_basis, reason or "")
        preserve = replace(ask, preservation_days=days or 0, identifier_kind=kind)
        return self._submit(node, preserve, clock)

    def request_freeze(
        self,
        *,
        node: str,
        dataset: str,
        item: str,
        case: str,
        legal_basis: str,
        amount_eur: int,
        days: int,
        reason: str | None = None,
        kind: str | None = None,
    ) -> RequestReport:
        """Ask `node` to freeze (restrain) `amount_eur` behind one item for `days` days."""
        clock = Stopwatch()
        if days < 1 or amount_eur < 1:
            raise ApiUsageError("a freeze order needs days >= 1 and amount_eur >= 1")
        case, legal_basis = self._checked(case, legal_basis)
        ask = FollowUpAsk("freeze", dataset, item, case, legal_basis, reason or "")
        return self._submit(
            node,
            replace(ask, preservation_days=days, amount_eur=amount_eur, identifier_kind=kind),
            clock,
        )

    def request_status(self, *, case: str, node: str | None = None) -> RequestReport:
        """The state of our requests under `case`, at one node or every node."""
        clock = Stopwatch()
        case = check_case(case)
        entries = self._nodes((node,) if node else None)
        clock.prepared()
        results = request_status(
            self.federation, entries, case, self._connections, self._trust, progress=self.progress
        )
        if len(entries) == 1:  # follow-up results carry no seconds of their own
            clock.answered(entries[0].name)
        return RequestReport(case, "request-status", "", tuple(results), elapsed=clock.stop())

    def request_export(
        self,
        *,
        case: str,
        node: str,
        id: str,
        out: str | Path,  # noqa: A002 - the CLI's --id
    ) -> ExportReport:
        """Write the signed case record of one request to `out` as JSON and HTML."""
        clock = Stopwatch()
        case = check_case(case)
        entries = self._nodes((node,))
        request_id = id.strip().upper()
        clock.prepared()
        [result] = request_status(
            self.federation,
            entries,
            case,
            self._connections,
            self._trust,
            request_id,
            self.progress,
        )
        clock.answered(result.node)
        if result.status != NodeStatus.OK or not result.requests:
            raise ExportFailed(f"{result.node}: {result.status}: {result.reason}")
        document = case_record(result.requests[0], self.federation.investigator, _now())
        document = sign_report(document, self._key_pem, self._cert_pem)
        stem = f"{case}-{result.node}-{request_id}".replace("/", "_")
        json_path, html_path = write_case_record(document, Path(out), stem)
        paths = (json_path, html_path)
        return ExportReport(case, result.node, request_id, *paths, document, elapsed=clock.stop())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def connect(federation: str | Path, *, progress: Progress = silent) -> FederationClient:
    """A client for the federation FED.toml describes; use it as a context manager."""
    return FederationClient(load_federation(Path(federation)), progress=progress)
