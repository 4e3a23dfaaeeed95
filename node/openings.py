"""Sealed openings on the node: demand, check, keep, and export them for a monitor.

A grant with ``monitor = "OVS"`` answers match and aggregate queries only when the
header carries a sealed opening for OVS (`fedtrace.opening`). The node cannot open it
(it has no monitor key); it checks that the opening is well formed, signed by the
caller's certificate and bound to exactly this query (node, dataset, epoch, case, caller,
nonce, and the digest of the points or indicator ciphertexts it received), stores it in
the node database with what the monitor needs to judge it (the points received, the
node's own answer, the epoch's blinding point and position tags), and binds it to the
query's audit entry (``details.opening_sha256``). `export` writes one monitor's share.
docs/accountability.md ("Formats") describes the formats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import grpc

from fedtrace import opening
from fedtrace.canonical import canonical_json
from fedtrace.errors import FedtraceError
from fedtrace.opening import OpeningError, SealedOpening, Statement
from fedtrace.pki import Identity
from fedtrace.v1 import node_pb2
from node.aggregate import AggregateTable
from node.gate import Admission, QueryRefused
from node.match import MatchRequest, ReceivedPoints
from node.policy import Policy, QueryKind
from node.state import NodeState, serving_epoch
from node.store import NodeDatabase

_DDL = """
CREATE TABLE IF NOT EXISTS sealed_openings (
    opening_sha256 VARCHAR PRIMARY KEY, request_id VARCHAR NOT NULL, nonce VARCHAR NOT NULL,
    received_at TIMESTAMPTZ NOT NULL, partner VARCHAR NOT NULL, case_ref VARCHAR NOT NULL,
    kind VARCHAR NOT NULL, dataset VARCHAR NOT NULL, epoch_id VARCHAR NOT NULL,
    monitor VARCHAR NOT NULL, query_id VARCHAR NOT NULL, sealed BLOB NOT NULL,
    received_points BLOB NOT NULL, answer_points BLOB NOT NULL,
    indicator_ciphertexts BLOB NOT NULL, blinding_point BLOB NOT NULL,
    investigator_cert_pem VARCHAR NOT NULL, node_points_sha256 VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_opening_tags (
    dataset VARCHAR NOT NULL, epoch_id VARCHAR NOT NULL, row_count BIGINT NOT NULL,
    tags BLOB NOT NULL, PRIMARY KEY (dataset, epoch_id));
"""
_SERVED_KINDS = (QueryKind.MATCH, QueryKind.AGGREGATE)


def monitors_for(policy: Policy, partner: str, dataset: str, now: dt.datetime) -> list[str]:
    """Every monitor named by a grant that could admit `partner` on `dataset` (sorted)."""
    return sorted(
        {
            grant.monitor
            for grant in policy.grants
            if grant.monitor
            and grant.applies(partner, dataset)
            and grant.valid_at(now)
            and any(grant.serves(kind) for kind in _SERVED_KINDS)
        }
    )


def caller_certificate(context: grpc.ServicerContext) -> bytes:
    """The PEM of the caller's verified certificate (the mTLS layer guarantees one)."""
    certs = context.auth_context().get("x509_pem_cert")
    return bytes(certs[0]) if certs else b""


def required_monitors(admission: Admission) -> tuple[str, ...]:
    """Every monitor named by a grant that could admit this query (strictest-grant logic)."""
    now = dt.datetime.now(dt.UTC)
    return tuple(
        sorted(
            {
                grant.monitor
                for grant in admission.policy.grants
                if grant.monitor
                and grant.applies(admission.identity.jurisdiction, admission.dataset)
                and grant.valid_at(now)
                and grant.serves(admission.kind)
            }
            | ({admission.grant.monitor} - {""})
        )
    )


def demanded(
    monitors: Sequence[str], openings: Sequence[node_pb2.SealedOpening]
) -> list[SealedOpening]:
    """The opening sealed for each of `monitors`, in their order.

    Raises PERMISSION_DENIED naming the first monitor without one. Openings for other
    monitors are neither refused nor kept.
    """
    found = []
    for monitor in monitors:
        message = next((m for m in openings if m.monitor == monitor), None)
        if message is None:
            raise QueryRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"grant requires a sealed opening for monitor {monitor} (FED.toml [[monitor]])",
            )
        found.append(SealedOpening.from_proto(message))
    return found


def checked(
    sealed: SealedOpening,
    expected: Statement,
    signer_certificate_pem: bytes,
    *,
    row_count: int = 0,
) -> Statement:
    """The statement, once the opening's form, signature and binding to this query hold.

    `expected` is what the node knows (its opening_sha256 is ignored); any difference
    is refused with INVALID_ARGUMENT before anything is answered.
    """
    try:
        statement = opening.check_form(
            sealed,
            kind=expected.kind,
            item_count=expected.item_count,
            signer_certificate_pem=signer_certificate_pem,
            row_count=row_count,
        )
    except OpeningError as exc:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"sealed opening for {sealed.monitor}: {exc}"
        ) from None
    differences = statement.differences(expected)
    if differences:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the sealed opening for {sealed.monitor} does not describe this query "
            f"({', '.join(differences)} differ)",
        )
    return statement


def expected_statement(
    kind: str,
    monitor: str,
    node: str,
    dataset: str,
    epoch_id: str,
    context: Any,
    investigator: str,
    item_count: int,
    points_sha256: bytes,
    *,
    indicator_sha256: bytes = b"",
    query_id: bytes = b"",
) -> Statement:
    """What the node knows of a query, as the statement a sealed opening must carry."""
    return Statement(
        kind=kind,
        monitor=monitor,
        node=node,
        dataset=dataset,
        epoch_id=epoch_id,
        case_ref=context.case_ref,
        legal_basis=context.legal_basis,
        investigator=investigator,
        nonce=bytes.fromhex(context.nonce) if isinstance(context.nonce, str) else context.nonce,
        timestamp_unix_ms=int(context.timestamp_unix_ms),
        item_count=item_count,
        points_sha256=points_sha256,
        indicator_sha256=indicator_sha256,
        query_id=query_id,
    )


@dataclass(frozen=True)
class KeptOpening:
    """One checked opening and what the monitor needs with it."""

    sealed: SealedOpening
    statement: Statement
    request_id: str
    partner: Identity
    investigator_cert_pem: bytes
    received_points: bytes = b""
    answer_points: bytes = b""
    indicator_ciphertexts: tuple[bytes, ...] = ()
    blinding_point: bytes = b""
    node_points_sha256: bytes = b""
    tags: bytes = b""  # the epoch's position tags (aggregate round 1), kept once per epoch
    row_count: int = 0
    query_id: bytes = b""  # aggregate: the node's round-1 query id


def _pack(blobs: Sequence[bytes]) -> bytes:
    return b"".join(len(blob).to_bytes(8, "big") + blob for blob in blobs)


def _unpack(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 8], "big")
        out.append(data[at + 8 : at + 8 + size])
        at += 8 + size
    return out


def keep(database: NodeDatabase, kept: KeptOpening) -> str:
    """Store a checked opening; returns the hex digest the audit entry binds."""
    digest = kept.sealed.digest().hex()
    statement = kept.statement
    with database.session() as con:
        con.execute(_DDL)
        con.execute(
            "INSERT INTO sealed_openings VALUES (?, ?, ?, now(), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?) ON CONFLICT DO NOTHING",
            [
                digest,
                kept.request_id,
                statement.nonce.hex(),
                kept.partner.jurisdiction,
                statement.case_ref,
                statement.kind,
                statement.dataset,
                statement.epoch_id,
                kept.sealed.monitor,
                (kept.query_id or statement.query_id).hex(),
                kept.sealed.to_proto().SerializeToString(deterministic=True),
                kept.received_points,
                kept.answer_points,
                _pack(kept.indicator_ciphertexts),
                kept.blinding_point,
                kept.investigator_cert_pem.decode(),
                kept.node_points_sha256.hex(),
            ],
        )
        if kept.tags:
            con.execute(
                "INSERT INTO sealed_opening_tags VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [statement.dataset, statement.epoch_id, kept.row_count, kept.tags],
            )
    return digest


class QueryOpening:
    """One query's openings: demanded at admission, checked once the points are in, and
    kept (returning the audit details that bind them) just before the answer leaves."""

    def __init__(
        self,
        state: NodeState,
        context: grpc.ServicerContext,
        identity: Identity,
        kind: str,
        header: Any,
        admission: Admission,
    ) -> None:
        self._state, self._identity, self._kind, self._header = state, identity, kind, header
        self._certificate = caller_certificate(context)
        self._request_id = admission.request_id
        self.sealed = demanded(required_monitors(admission), header.openings)
        self._checked: list[KeptOpening] = []

    def check_points(self, received: ReceivedPoints | MatchRequest) -> None:
        """Refuse (INVALID_ARGUMENT) unless every opening binds exactly these points."""
        if not self.sealed:
            return
        header, state = self._header, self._state
        epoch = serving_epoch(state, header.dataset, header.epoch_id)
        digest = bytes.fromhex(received.request_sha256)
        additive = getattr(header, "blinding", 0) == node_pb2.BLINDING_ADDITIVE
        for sealed in self.sealed:
            expected = expected_statement(
                self._kind,
                sealed.monitor,
                state.config.jurisdiction,
                epoch.dataset,
                epoch.epoch_id,
                header.context,
                self._identity.jurisdiction,
                len(received.points),
                digest,
            )
            statement = checked(sealed, expected, self._certificate)
            self._checked.append(
                KeptOpening(
                    sealed,
                    statement,
                    self._request_id,
                    self._identity,
                    self._certificate,
                    received_points=b"".join(received.points),
                    blinding_point=epoch.blinding_point if additive else b"",
                    node_points_sha256=digest,
                )
            )

    def keep(
        self,
        *,
        answer_points: bytes = b"",
        query_id: bytes = b"",
        table: AggregateTable | None = None,
    ) -> dict[str, Any]:
        """Store the checked openings; the audit details that bind them (empty without one).

        An aggregate's `table` gives the epoch's position tags, kept once per epoch."""
        kept = [
            replace(
                checked_opening,
                answer_points=answer_points,
                tags=table.tags if table is not None else b"",
                row_count=table.row_count if table is not None else 0,
                query_id=query_id,
            )
            for checked_opening in self._checked
        ]
        return keep_details(self._state.database, kept)


def check_indicator(
    state: NodeState, context: grpc.ServicerContext, identity: Identity, round_two: Any
) -> list[KeptOpening]:
    """Round 2: the openings round 1's grants demand, bound to the indicator received."""
    pending, header = round_two.pending, round_two.header
    certificate = caller_certificate(context)
    round_one_points = bytes.fromhex(pending.request_sha256)
    kept = []
    for sealed in demanded(pending.monitors, header.openings):
        expected = Statement(
            kind=opening.KIND_AGGREGATE_INDICATOR,
            monitor=sealed.monitor,
            node=state.config.jurisdiction,
            dataset=pending.table.dataset,
            epoch_id=pending.table.epoch_id,
            case_ref=pending.case_ref,
            legal_basis=pending.legal_basis,
            investigator=identity.jurisdiction,
            nonce=bytes.fromhex(pending.nonce),
            timestamp_unix_ms=pending.timestamp_unix_ms,
            item_count=pending.item_count,
            points_sha256=round_one_points,
            indicator_sha256=opening.indicator_digest(round_two.indicators),
            query_id=pending.query_id,
        )
        statement = checked(sealed, expected, certificate, row_count=pending.table.row_count)
        kept.append(
            KeptOpening(
                sealed,
                statement,
                pending.request_id,
                identity,
                certificate,
                indicator_ciphertexts=tuple(round_two.indicators),
                node_points_sha256=round_one_points,
            )
        )
    return kept


def keep_details(database: NodeDatabase, kept: Sequence[KeptOpening]) -> dict[str, Any]:
    """Store `kept`; the audit details that bind them.

    One opening (the usual case): ``{"opening_sha256": digest}``. Several (grants naming
    different monitors): ``opening_sha256`` is the SHA-256 of their digests concatenated in
    monitor order, and ``openings_sha256`` maps each monitor to its opening's digest.
    """
    digests = {each.sealed.monitor: keep(database, each) for each in kept}
    if not digests:
        return {}
    if len(digests) == 1:
        return {"opening_sha256": next(iter(digests.values()))}
    ordered = dict(sorted(digests.items()))
    combined = hashlib.sha256(b"".join(bytes.fromhex(d) for d in ordered.values())).hexdigest()
    return {"opening_sha256": combined, "openings_sha256": ordered}


def add_monitors(info: node_pb2.NodeInfo, policy: Policy, partner: str) -> None:
    """List, on each described dataset, the monitors the caller's grants name."""
    now = dt.datetime.now(dt.UTC)
    for dataset in info.datasets:
        if dataset.size or dataset.group:
            dataset.monitors.extend(monitors_for(policy, partner, dataset.name, now))


# --- the monitor's share ------------------------------------------------------------


class ExportError(FedtraceError):
    """The export cannot be written (the output directory is not empty, or unreadable data)."""


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    monitor: str
    count: int
    epochs: int

    def as_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "monitor": self.monitor,
            "count": self.count,
            "epochs": self.epochs,
        }

    def line(self) -> str:
        noun = "query" if self.count == 1 else "queries"
        return f"exported {self.count} sealed {noun} for monitor {self.monitor} to {self.out}"


def _audit_sequences(entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The audit sequence number of each entry that binds an opening, by its digest."""
    found = {}
    for entry in entries:
        details = entry.get("details")
        if not isinstance(details, dict):
            continue
        digests = [details.get("opening_sha256")]
        several = details.get("openings_sha256")
        if isinstance(several, dict):
            digests += list(several.values())
        for digest in digests:
            if isinstance(digest, str):
                found[digest] = int(entry.get("seq", 0))
    return found


def _write(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            raise ExportError(f"{out} is not empty; refusing to overwrite: choose a new --out")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)


def export(
    database: NodeDatabase,
    audit_entries: Sequence[dict[str, Any]],
    node: str,
    monitor: str,
    out: Path,
    since: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> ExportSummary:
    """Write `monitor`'s share of the sealed openings (received since `since`) to `out`."""
    _prepare_out(out)
    sequences = _audit_sequences(audit_entries)
    with database.session() as con:
        con.execute(_DDL)
        rows = _rows(con, monitor, since)
        tags = {
            (d, e): (n, bytes(t))
            for d, e, n, t in con.execute(
                "SELECT dataset, epoch_id, row_count, tags FROM sealed_opening_tags"
            ).fetchall()
        }
    lines, epochs = [], {}
    for row in rows:
        lines.append(canonical_json(_query_line(row, sequences)))
        key = (row["dataset"], row["epoch_id"])
        if key in tags and f"{key[0]}/{key[1]}" not in epochs:
            row_count, blob = tags[key]
            name = f"{key[0]}-{key[1]}.bin"
            (out / "tags").mkdir(mode=0o700, exist_ok=True)
            _write(out / "tags" / name, blob)
            epochs[f"{key[0]}/{key[1]}"] = {
                "dataset": key[0],
                "epoch_id": key[1],
                "row_count": row_count,
                "tags_file": f"tags/{name}",
                "tags_sha256": hashlib.sha256(blob).hexdigest(),
            }
        elif f"{key[0]}/{key[1]}" not in epochs:
            epochs[f"{key[0]}/{key[1]}"] = {
                "dataset": key[0],
                "epoch_id": key[1],
                "row_count": 0,
                "tags_file": "",
                "tags_sha256": "",
            }
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    manifest = {
        "v": 1,
        "node": node,
        "monitor": monitor,
        "exported_at": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "count": len(lines),
        "epochs": epochs,
    }
    _write(out / "queries.jsonl", b"".join(line + b"\n" for line in lines))
    _write(out / "manifest.json", canonical_json(manifest) + b"\n")
    return ExportSummary(out, monitor, len(lines), len(epochs))


def _rows(
    con: duckdb.DuckDBPyConnection, monitor: str, since: dt.datetime | None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT opening_sha256, received_at, partner, case_ref, kind, dataset, epoch_id, sealed, "
        "received_points, answer_points, indicator_ciphertexts, blinding_point, "
        "investigator_cert_pem, node_points_sha256 FROM sealed_openings WHERE monitor = ?"
    )
    params: list[Any] = [monitor]
    if since is not None:
        sql += " AND received_at >= ?"
        params.append(since)
    result = con.execute(sql + " ORDER BY received_at, opening_sha256", params)
    names = [column[0] for column in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def _query_line(row: dict[str, Any], sequences: dict[str, int]) -> dict[str, Any]:
    sealed = SealedOpening.from_proto(node_pb2.SealedOpening.FromString(bytes(row["sealed"])))
    received: dt.datetime = row["received_at"]
    return {
        "audit_seq": sequences.get(row["opening_sha256"], 0),
        "time": received.astimezone(dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "partner": row["partner"],
        "case_ref": row["case_ref"],
        "kind": row["kind"],
        "dataset": row["dataset"],
        "epoch_id": row["epoch_id"],
        "statement": sealed.statement.hex(),
        "signature": sealed.signature.hex(),
        "enc": sealed.enc.hex(),
        "ciphertext": sealed.ciphertext.hex(),
        "investigator_cert_pem": row["investigator_cert_pem"],
        "received_points": bytes(row["received_points"]).hex(),
        "answer_points": bytes(row["answer_points"]).hex(),
        "indicator_ciphertexts": [c.hex() for c in _unpack(bytes(row["indicator_ciphertexts"]))],
        "blinding_point": bytes(row["blinding_point"]).hex(),
        "node_points_sha256": row["node_points_sha256"],
        "opening_sha256": row["opening_sha256"],
    }


def stored_count(database: NodeDatabase) -> int:
    """How many sealed openings the node holds (for tests and status)."""
    with database.session() as con:
        con.execute(_DDL)
        row = con.execute("SELECT count(*) FROM sealed_openings").fetchone()
    return int(row[0]) if row else 0
