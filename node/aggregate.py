"""The node's side of encrypted aggregates, as plain functions over typed values (no gRPC).

- `load_aggregate_table`: the epoch table's position tags and, privately, each
  aggregate column in the table's row order (money as integer cents). The row
  order is re-derived from the epoch key (`node.table_order`) and spot-checked
  against the stored table, so nothing maps rows to records on disk.
- `plan_figures`: clipping bounds and differential-privacy noise per figure from
  the admitting grant (`fedtrace.dp`), the query's epsilon split evenly over the
  figures (the match count and each column).
- `start_total_only`, `peer_masks`: a total-only query's per-query X25519 key and
  salt (round 1, signed), then the pairwise masks once the answering set is checked
  (at least two nodes, not the investigator's, this node's own entry unchanged,
  every member's certificate from the CA, not revoked, its key signed).
- `answer_figures`: one masked ciphertext per figure (`fedtrace.aggregate`).
- `PendingQueries` keeps an admitted round 1 in memory until its round 2 arrives.

See docs/aggregates.md for the protocol and what each side learns.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import duckdb
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrace import dp, group
from fedtrace.aggregate import (
    COUNT_COLUMN,
    MIN_ANSWERING_SET,
    MaskMember,
    agreement_statement,
    answering_set_digest,
    clip,
    new_agreement_key,
    node_aggregate,
    pairwise_mask,
    position_tags,
)
from fedtrace.he import PLAIN_MODULUS, HeError, PublicHeContext
from fedtrace.items import item_bytes
from fedtrace.pki import ROLE_NODE, InvalidCertificate, sign, verify_issued_by, verify_signature
from fedtrace.revocation import RevocationList
from node.config import DatasetConfig
from node.epoch import Epoch, dataset_items
from node.policy import Grant
from node.store import NodeDatabase, data_version, first_row
from node.table_order import table_order

TAG_KIND = "blake2b64-aggtag1"
#: Sums must stay well inside the plaintext range (-t/2, t/2) with noise on top.
EXACT_LIMIT = PLAIN_MODULUS // 4
PENDING_SECONDS = 300
MAX_PENDING = 64
SPOT_CHECKS = 8
_INTEGER_TYPES = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


class AggregateUnavailable(Exception):
    """The dataset cannot answer aggregates now (data changed, unsupported column type …)."""


@dataclass(frozen=True)
class AggregateTable:
    """One epoch's table for aggregates: public tags, private columns in the table's row order."""

    dataset: str
    epoch_id: str
    row_count: int
    tags: bytes = field(repr=False)
    tags_sha256: bytes
    decimals: Mapping[str, int]  # a column's values are its value × 10^decimals
    columns: Mapping[str, Sequence[int]] = field(repr=False)
    bound: Mapping[str, int]  # Σ|value| over the whole table: no sum can exceed it


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_decimals(relation: duckdb.DuckDBPyRelation, dataset: DatasetConfig) -> dict[str, int]:
    types = dict(zip(relation.columns, (str(t) for t in relation.types), strict=True))
    decimals = {}
    for column in dataset.aggregate_columns:
        kind = types.get(column)
        if kind is None:
            raise AggregateUnavailable(
                f"dataset {dataset.name!r}: its SQL has no aggregate column {column!r}"
            )
        match = _DECIMAL.match(kind)
        if kind in _INTEGER_TYPES:
            decimals[column] = 0
        elif match:
            decimals[column] = int(match.group(2))
        else:
            raise AggregateUnavailable(
                f"dataset {dataset.name!r}: column {column!r} is {kind}; aggregates need an "
                "integer or DECIMAL column (cast it in the dataset's SQL)"
            )
    return decimals


def _values_by_key(
    con: duckdb.DuckDBPyConnection, dataset: DatasetConfig, decimals: Mapping[str, int]
) -> dict[str, tuple[int, ...]]:
    key = _quote(dataset.key_column)
    sums = ", ".join(
        f"CAST(COALESCE(SUM({_quote(c)}), 0) * {10 ** decimals[c]} AS HUGEINT)"
        for c in dataset.aggregate_columns
    )
    rows = con.execute(
        f"SELECT CAST({key} AS VARCHAR), {sums} FROM ({dataset.sql}) AS dataset_rows "
        f"WHERE {key} IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {str(row[0]): tuple(int(v) for v in row[1:]) for row in rows}


def load_aggregate_table(
    database: NodeDatabase, dataset: DatasetConfig, epoch: Epoch
) -> AggregateTable:
    """Tags and row-ordered columns of ``epoch``; raises AggregateUnavailable when out of step."""
    if dataset.kind != "wallet":
        raise AggregateUnavailable(
            f"dataset {dataset.name!r} holds {dataset.kind} identifiers; aggregates are "
            "answered over wallet datasets (one record per key)"
        )
    if not dataset.aggregate_columns:
        raise AggregateUnavailable(f"dataset {dataset.name!r} declares no aggregate_columns")
    with database.session() as con:
        if data_version(con) != epoch.data_version:
            raise AggregateUnavailable(
                f"dataset {dataset.name!r} changed since epoch {epoch.epoch_id}; "
                "retry once the node has started its next epoch"
            )
        row = first_row(
            con,
            "SELECT table_points FROM epochs WHERE dataset = ? AND epoch_id = ?",
            [dataset.name, epoch.epoch_id],
        )
        try:
            items = dataset_items(con, dataset)
            decimals = _column_decimals(con.sql(dataset.sql), dataset)
            values = _values_by_key(con, dataset, decimals)
        except duckdb.Error as exc:
            raise AggregateUnavailable(
                f"dataset {dataset.name!r}: its SQL failed: {str(exc).splitlines()[0]}"
            ) from None
    if row is None:
        raise AggregateUnavailable(f"epoch {epoch.epoch_id} of {dataset.name!r} is gone")
    table = group.split_points(bytes(row[0]))
    order = table_order(len(items), epoch.secret_key)
    if len(table) != len(items) or not _spot_check(table, items, order, epoch.secret_key):
        raise AggregateUnavailable(
            f"epoch {epoch.epoch_id} of {dataset.name!r} was built in another row order; "
            "aggregates are answered from the node's next epoch"
        )
    prefix = len(item_bytes("wallet", ""))
    zeros = (0,) * len(dataset.aggregate_columns)
    rows = [values.get(items[i][prefix:].decode("utf-8"), zeros) for i in order]
    columns = {
        name: [row[index] for row in rows] for index, name in enumerate(dataset.aggregate_columns)
    }
    tags = position_tags(table)
    return AggregateTable(
        dataset=dataset.name,
        epoch_id=epoch.epoch_id,
        row_count=len(table),
        tags=tags,
        tags_sha256=hashlib.sha256(tags).digest(),
        decimals=decimals,
        columns=columns,
        bound={name: sum(abs(v) for v in col) for name, col in columns.items()},
    )


def _spot_check(
    table: Sequence[bytes], items: Sequence[bytes], order: Sequence[int], key: bytes
) -> bool:
    if not items:
        return True
    rows = [secrets.randbelow(len(items)) for _ in range(SPOT_CHECKS)]
    blinded = group.blind_items([items[order[r]] for r in rows], key, workers=1)
    return all(table[r] == point for r, point in zip(rows, blinded, strict=True))


class AggregateTables:
    """The latest `AggregateTable` per dataset, built on first use of an epoch."""

    def __init__(self) -> None:
        self._tables: dict[str, AggregateTable] = {}
        self._lock = threading.Lock()

    def get(self, database: NodeDatabase, dataset: DatasetConfig, epoch: Epoch) -> AggregateTable:
        with self._lock:  # one build at a time; others wait for it rather than repeat it
            cached = self._tables.get(dataset.name)
            if cached is not None and cached.epoch_id == epoch.epoch_id:
                return cached
            table = load_aggregate_table(database, dataset, epoch)
            self._tables[dataset.name] = table
            return table


@dataclass(frozen=True)
class FigurePlan:
    """How one figure is computed: clip bounds in its smallest unit and its noise."""

    figure: str
    decimals: int
    bounds: tuple[int, int] | None  # None: not clipped (noise off and no bounds written)
    noise: dp.NoiseSpec

    @property
    def non_negative(self) -> bool:
        """The true figure cannot be negative: the count, or a column clipped at lo >= 0."""
        return self.figure == COUNT_COLUMN or (self.bounds is not None and self.bounds[0] >= 0)


def _minor_units(value: float, decimals: int, rounding: str) -> int:
    return int(Decimal(str(value)).scaleb(decimals).to_integral_value(rounding=rounding))


def plan_figures(
    grant: Grant, table: AggregateTable, columns: Sequence[str], epsilon: float
) -> list[FigurePlan]:
    """The match count and each column, clipped per the grant, with ε split evenly among them.

    ``epsilon`` is the privacy loss of the whole query (what the budget is charged);
    by sequential composition each of the ``len(columns) + 1`` figures gets an equal share.
    """
    share = epsilon / (len(columns) + 1) if grant.noise else 0.0
    plans = [FigurePlan(COUNT_COLUMN, 0, None, dp.noise_spec(1, share, noise=grant.noise))]
    for column in columns:
        decimals = table.decimals[column]
        written = grant.clip_bounds(column)
        if written is None and grant.noise:
            raise AggregateUnavailable(
                f"the grant has no clip bounds for {column!r}; noise cannot be calibrated"
            )
        bounds = None
        if written is not None:
            bounds = (
                _minor_units(written[0], decimals, ROUND_CEILING),
                _minor_units(written[1], decimals, ROUND_FLOOR),
            )
        sensitivity = dp.sensitivity(*bounds) if bounds is not None else 1
        try:
            spec = dp.noise_spec(sensitivity, share, noise=grant.noise)
        except ValueError as exc:
            raise AggregateUnavailable(
                f"column {column!r}: {exc}; narrow its clip bounds"
            ) from None
        plans.append(FigurePlan(column, decimals, bounds, spec))
    for plan in plans:
        reach = (
            len(table.columns[plan.figure]) * max(abs(plan.bounds[0]), abs(plan.bounds[1]))
            if plan.bounds is not None and plan.figure != COUNT_COLUMN
            else table.bound.get(plan.figure, table.row_count)
        )
        if reach + 40 * plan.noise.scale > EXACT_LIMIT:
            raise AggregateUnavailable(
                f"column {plan.figure!r} could sum beyond the exact range of the encryption "
                f"(±{EXACT_LIMIT:.3g} in its smallest unit); narrow its clip bounds"
            )
    return plans


def figure_values(table: AggregateTable, plans: Sequence[FigurePlan]) -> dict[str, list[int]]:
    """Each figure's per-row values in T's order, clipped; the count is a column of ones."""
    values: dict[str, list[int]] = {}
    for plan in plans:
        if plan.figure == COUNT_COLUMN:
            values[COUNT_COLUMN] = [1] * table.row_count
        elif plan.bounds is None:
            values[plan.figure] = list(table.columns[plan.figure])
        else:
            values[plan.figure] = clip(table.columns[plan.figure], *plan.bounds)
    return values


def answer_figures(
    public: PublicHeContext,
    indicator_cts: Sequence[bytes],
    table: AggregateTable,
    plans: Sequence[FigurePlan],
    extra_mask: Mapping[str, int] | None = None,
) -> dict[str, bytes]:
    """One ciphertext per figure whose slots sum to Σ over matched rows + noise (+ mask)."""
    expected = -(-max(table.row_count, 1) // public.slot_count)
    if len(indicator_cts) != expected:
        raise HeError(
            f"{len(indicator_cts)} indicator ciphertexts for a table of {table.row_count} "
            f"rows; expected {expected}"
        )
    noise = {plan.figure: dp.sample_noise(plan.noise) for plan in plans}
    return node_aggregate(public, indicator_cts, figure_values(table, plans), noise, extra_mask)


class PeerError(Exception):
    """A total-only answering set is unusable; says which member and why."""


@dataclass(frozen=True)
class TotalOnlyRound:
    """This node's round-1 contribution to a total-only mask: key, salt, what it signed."""

    agreement_private: X25519PrivateKey = field(repr=False)
    member: MaskMember
    signature: bytes


def start_total_only(
    key_pem: bytes, own_code: str, investigator: str, query_id: bytes
) -> TotalOnlyRound:
    """A fresh X25519 key and salt for one total-only query, signed with the node's key."""
    private, public, salt = new_agreement_key()
    member = MaskMember(own_code, query_id, salt, public)
    return TotalOnlyRound(private, member, sign(key_pem, agreement_statement(member, investigator)))


def checked_members(
    own: TotalOnlyRound,
    investigator: str,
    peers: Sequence[PeerStatement],
    ca_pem: bytes,
    revoked: RevocationList,
) -> list[MaskMember]:
    """The answering set, after every check that keeps one node's answer masked.

    Refused: a set of fewer than ``MIN_ANSWERING_SET`` nodes; one that holds the
    investigator's own node (it would hand over its masks) or names a node twice; one
    whose entry for this node is not what this node said in round 1; a member whose
    certificate is not a node certificate of the federation CA, is revoked, or did not
    sign its agreement key and salt.
    """
    codes = [p.member.code for p in peers]
    if len(set(codes)) != len(codes):
        raise PeerError("the answering set names a node twice")
    if len(peers) < MIN_ANSWERING_SET:
        raise PeerError(
            f"a total-only answer needs at least {MIN_ANSWERING_SET} answering nodes; "
            f"with {len(peers)}, one member could compute another's mask"
        )
    if investigator in codes:
        raise PeerError(
            f"the answering set includes the investigator's own node ({investigator}); "
            "its masks would unmask the others"
        )
    mine = next((p.member for p in peers if p.member.code == own.member.code), None)
    if mine is None:
        raise PeerError(f"the answering set does not include this node ({own.member.code})")
    if mine != own.member:
        raise PeerError("this node's entry in the answering set is not what it sent in round 1")
    for peer in peers:
        code = peer.member.code
        try:
            identity = verify_issued_by(peer.certificate_pem, ca_pem)
        except InvalidCertificate as exc:
            raise PeerError(f"peer {code}'s certificate is not valid: {exc}") from None
        if identity.jurisdiction != code or identity.role != ROLE_NODE:
            raise PeerError(f"peer {code}'s certificate names {identity.describe()}")
        if revoked.find(identity) is not None:
            raise PeerError(f"peer {code}'s certificate is revoked")
        statement = agreement_statement(peer.member, investigator)
        if not verify_signature(peer.certificate_pem, statement, peer.signature):
            raise PeerError(f"peer {code} did not sign its agreement key and salt")
    return [p.member for p in peers]


@dataclass(frozen=True)
class PeerStatement:
    """A member of the answering set as the coordinator forwarded it."""

    member: MaskMember
    certificate_pem: bytes
    signature: bytes


def peer_masks(
    own: TotalOnlyRound,
    investigator: str,
    peers: Sequence[PeerStatement],
    ca_pem: bytes,
    revoked: RevocationList,
    total_nonce: bytes,
    figures: Sequence[str],
) -> tuple[dict[str, int], bytes]:
    """Pairwise masks for a total-only answer and the answering set's digest (signed)."""
    members = checked_members(own, investigator, peers, ca_pem, revoked)
    masks = pairwise_mask(own.agreement_private, own.member.code, members, total_nonce, figures)
    return masks, answering_set_digest(total_nonce, members)


class PublicContexts:
    """Investigators' public HE contexts by SHA-256, so a repeat query need not resend 1.2 MB."""

    def __init__(self, capacity: int = 4) -> None:
        self._contexts: OrderedDict[bytes, PublicHeContext] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> PublicHeContext | None:
        with self._lock:
            context = self._contexts.get(digest)
            if context is not None:
                self._contexts.move_to_end(digest)
            return context

    def load(self, blob: bytes) -> tuple[bytes, PublicHeContext]:
        digest = hashlib.sha256(blob).digest()
        context = self.get(digest) or PublicHeContext.from_bytes(blob)
        with self._lock:
            self._contexts[digest] = context
            self._contexts.move_to_end(digest)
            while len(self._contexts) > self._capacity:
                self._contexts.popitem(last=False)
        return digest, context


@dataclass
class PendingAggregate:
    """An admitted round 1 waiting for its encrypted indicator."""

    query_id: bytes
    peer_fingerprint: str
    table: AggregateTable
    plans: list[FigurePlan]
    epsilon: float
    total_only: bool
    min_cohort: int
    item_count: int
    request_sha256: str
    response_sha256: str
    request_id: str  # the gate's request id, linking the round-2 audit entry to round 1
    investigator: str
    case_ref: str
    legal_basis: str
    nonce: str  # hex
    timestamp_unix_ms: int
    policy_version: str
    policy_sha256: str = ""  # hex: the policy file round 1 was admitted under
    total: TotalOnlyRound | None = None  # total-only: this node's agreement key and salt
    monitors: tuple[str, ...] = ()  # monitors whose sealed openings round 2 needs
    created: float = field(default_factory=time.monotonic)


class PendingQueries:
    """Round-1 state by query id, forgotten after ``PENDING_SECONDS`` or once used."""

    def __init__(self, seconds: float = PENDING_SECONDS, capacity: int = MAX_PENDING) -> None:
        self._pending: dict[bytes, PendingAggregate] = {}
        self._seconds = seconds
        self._capacity = capacity
        self._lock = threading.Lock()

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._pending.items() if now - p.created > self._seconds]:
            del self._pending[key]

    def has_room(self, investigator: str | None = None, per_partner: int | None = None) -> bool:
        """Whether one more round 1 fits: in all, and for `investigator` under `per_partner`."""
        with self._lock:
            self._sweep()
            if len(self._pending) >= self._capacity:
                return False
            if investigator is None or per_partner is None:
                return True
            held = sum(p.investigator == investigator for p in self._pending.values())
            return held < per_partner

    def put(self, pending: PendingAggregate) -> None:
        with self._lock:
            self._sweep()
            self._pending[pending.query_id] = pending

    def restore(self, pending: PendingAggregate) -> None:
        """Put a taken query back (round 2 could not start, e.g. its HE context is not cached)."""
        with self._lock:
            self._pending.setdefault(pending.query_id, pending)

    def take(self, query_id: bytes) -> PendingAggregate | None:
        """The pending query, removed: a query id answers one round 2 only."""
        with self._lock:
            self._sweep()
            return self._pending.pop(query_id, None)

    @property
    def seconds(self) -> float:
        return self._seconds
