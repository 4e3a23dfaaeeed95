"""The node's side of the overlap query: overlaps in memory, with a deadline and a bound.

A overlap on the node lives only in this process's memory (`OverlapRegistry`): its
items, then its key (`fedtrace.overlap.OverlapParty`) once the roster is fixed.
It ends when the coordinator closes it or at its deadline, whichever comes
first; either way the key and the private order are dropped, so no point of
that overlap can be produced again. At most `max_overlaps` run at once.

Every overlap belongs to the investigator certificate that joined it: only that
certificate may open, relay, deliver notices or close it. Node certificates are
refused at admission (`node.policy.decide` answers investigators only), so nodes
never talk to each other.

A hostile investigator cannot turn the overlap into a lookup service:

* the node opens only when every roster member's signed join is presented and
  verifies (`fedtrace.overlap_commitment.verify_join`: federation CA, member
  name, revocation, overlap id, size, investigator), so no origin is invented;
* every foreign point it will relay is charged, at open, to the investigator's
  item budget for the overlap kind (through the gate), so a candidate list fed
  in through a member node costs what a match of it would;
* it relays an origin's set only with the origin's signed commitment (size and
  SHA-256 of its initial set), and at the first hop releases nothing until the
  points received match that digest.

The functions here are plain (no gRPC); `node.services.overlap` decodes and encodes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import grpc

from fedtrace import group
from fedtrace import overlap as overlap_protocol
from fedtrace.identifiers import InvalidIdentifier, person_keys
from fedtrace.items import item_bytes
from fedtrace.overlap_commitment import Commitment, JoinProof
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.pki import Identity
from fedtrace.transcript import TRANSCRIPT_VERSION
from fedtrace.wire import Level
from node.config import DatasetConfig
from node.epoch import DatasetError, dataset_items
from node.gate import Admission, QueryContextInfo, QueryRefused
from node.overlap_members import MemberTrust, check_commitment, verify_members
from node.policy import QueryKind
from node.store import NodeDatabase

log = logging.getLogger(__name__)

#: Overlaps a node keeps at once; one more is RESOURCE_EXHAUSTED.
MAX_OVERLAPES = 4
#: A overlap not closed within this time is dropped (key and items with it).
OVERLAP_SECONDS = 30 * 60.0


@dataclass(frozen=True)
class OverlapItems:
    """The node's items for one overlap and, kept only on the node, what record each stands for."""

    kind: str  # "wallet" | "person"
    items: list[bytes]
    records: dict[bytes, tuple[str, ...]]  # person items only: the subject ids behind a key

    def describe(self, item: bytes) -> tuple[str, ...]:
        """The canonical record(s) behind an item: the address, or the subjects of a person key."""
        if self.kind == "wallet":
            return (item[len(item_bytes("wallet", "")) :].decode("utf-8"),)
        return self.records.get(item, ())


def overlap_items(con: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> OverlapItems:
    """The dataset's distinct items (as in its epoch), with the record mapping for the reveal."""
    items = dataset_items(con, dataset)
    if dataset.kind == "wallet":
        return OverlapItems("wallet", items, {})
    try:
        relation = con.sql(dataset.sql)
        columns = relation.columns
        rows = relation.fetchall()
    except duckdb.Error as exc:
        raise DatasetError(f"dataset {dataset.name!r}: its SQL failed: {exc}") from None
    name_i, dob_i, doc_i = (
        columns.index(c) for c in ("full_name", "date_of_birth", "document_number")
    )
    id_i = columns.index("subject_id") if "subject_id" in columns else name_i
    records: dict[bytes, set[str]] = {}
    for row in rows:
        try:
            keys = person_keys(str(row[name_i]), str(row[dob_i]), row[doc_i] or None)
        except InvalidIdentifier:
            continue
        for key in keys:
            records.setdefault(item_bytes("person", str(key)), set()).add(str(row[id_i]))
    return OverlapItems("person", items, {k: tuple(sorted(v)) for k, v in records.items()})


@dataclass
class HopRecord:
    origin: str
    hop: int
    points: int = 0
    received: hashlib._Hash = field(default_factory=hashlib.sha256)
    sent: hashlib._Hash = field(default_factory=hashlib.sha256)


@dataclass
class NodeOverlap:
    """One overlap on this node, from join to close."""

    overlap_id: str
    identity: Identity  # the investigator certificate that joined; only it may continue
    dataset: str
    context: QueryContextInfo
    policy_version: str
    reveal_to_owner: bool
    min_cohort: int
    items: OverlapItems
    deadline: float
    policy_sha256: str = ""  # hex: the policy file the join was admitted under
    admission: Admission | None = field(default=None, repr=False)  # the join's, charged at open
    plan: overlap_protocol.OverlapPlan | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    members: dict[str, bytes] = field(default_factory=dict, repr=False)  # verified node certs
    party: overlap_protocol.OverlapParty | None = field(default=None, repr=False)
    initial: list[bytes] = field(default_factory=list, repr=False)  # computed at open
    initial_sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    initial_sent: bool = False
    hops: dict[str, HopRecord] = field(default_factory=dict)
    notices_sha256: str = ""
    shared: list[overlap_protocol.SharedItem] = field(default_factory=list, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def set_size(self) -> int:
        return len(self.items.items)

    def require_open(self) -> tuple[overlap_protocol.OverlapPlan, overlap_protocol.OverlapParty]:
        if self.plan is None or self.party is None:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"overlap {self.overlap_id} is not open yet: send Open first",
            )
        return self.plan, self.party

    def transcript(self, jurisdiction: str) -> OverlapTranscript:
        plan, _ = self.require_open()
        hops = sorted(self.hops.values(), key=lambda h: h.hop)
        return OverlapTranscript(
            jurisdiction=jurisdiction,
            investigator=self.identity.jurisdiction,
            dataset=self.dataset,
            overlap_id=self.overlap_id,
            roster=plan.roster,
            reveal=plan.reveal,
            disclosure="overlap",
            policy_version=self.policy_version,
            case_ref=self.context.case_ref,
            legal_basis=self.context.legal_basis,
            nonce=self.context.nonce,
            timestamp_unix_ms=self.context.timestamp_unix_ms,
            set_size=self.set_size,
            initial_sha256=self.initial_sha256.hexdigest(),
            hops=tuple(
                OverlapHop(h.origin, h.hop, h.points, h.received.hexdigest(), h.sent.hexdigest())
                for h in hops
            ),
            notices_sha256=self.notices_sha256,
            min_cohort=max(1, self.min_cohort),
            reveal_to_owner=self.reveal_to_owner,
            policy_sha256=self.policy_sha256,
            v=TRANSCRIPT_VERSION,
        )

    def drop(self) -> None:
        """Forget the key, the private order and the items."""
        if self.party is not None:
            self.party.close()
        self.party = None
        self.initial = []
        self.items.items.clear()
        self.items.records.clear()
        self.shared = []


class OverlapRegistry:
    """The overlaps in progress on this node: bounded in number, each with a deadline."""

    def __init__(
        self,
        *,
        max_overlaps: int = MAX_OVERLAPES,
        seconds: float = OVERLAP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_expire: Callable[[NodeOverlap], None] | None = None,
    ) -> None:
        self.max_overlaps = max_overlaps
        self.seconds = seconds
        self._clock = clock
        self._on_expire = on_expire
        self._overlaps: dict[str, NodeOverlap] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._overlaps)

    def reserve(self, jurisdiction: str, overlap_id: str) -> None:
        """Refuse early (before reading any data) when the node is full or the id is taken."""
        self.expire()
        with self._lock:
            if overlap_id in self._overlaps:
                raise QueryRefused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"overlap {overlap_id} already exists on {jurisdiction}",
                )
            if len(self._overlaps) >= self.max_overlaps:
                raise QueryRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{jurisdiction} is running its maximum of {self.max_overlaps} overlap "
                    "queries; retry when one has finished",
                )

    def add(self, overlap: NodeOverlap) -> None:
        with self._lock:
            if len(self._overlaps) >= self.max_overlaps or overlap.overlap_id in self._overlaps:
                raise QueryRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"cannot take overlap {overlap.overlap_id} now; retry shortly",
                )
            self._overlaps[overlap.overlap_id] = overlap

    def deadline(self) -> float:
        return self._clock() + self.seconds

    def get(self, overlap_id: str, identity: Identity) -> NodeOverlap:
        self.expire()
        with self._lock:
            overlap = self._overlaps.get(overlap_id)
        if overlap is None:
            raise QueryRefused(
                grpc.StatusCode.NOT_FOUND,
                f"no overlap {overlap_id!r} here (closed, expired or never joined)",
            )
        if identity.fingerprint_sha256 != overlap.identity.fingerprint_sha256:
            raise QueryRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"overlap {overlap_id} belongs to the investigator certificate that joined it; "
                f"{identity.describe()} may not take part in it",
            )
        return overlap

    def remove(self, overlap_id: str) -> NodeOverlap | None:
        with self._lock:
            overlap = self._overlaps.pop(overlap_id, None)
        if overlap is not None:
            with overlap.lock:
                overlap.drop()
        return overlap

    def expire(self) -> list[NodeOverlap]:
        """Drop every overlap past its deadline (called on each access and by the sweeper)."""
        now = self._clock()
        with self._lock:
            gone = [c for c in self._overlaps.values() if c.deadline <= now]
            for overlap in gone:
                del self._overlaps[overlap.overlap_id]
        for overlap in gone:
            with overlap.lock:
                overlap.drop()
            log.info("overlap %s expired; its key is dropped", overlap.overlap_id)
            if self._on_expire is not None:
                self._on_expire(overlap)
        return gone

    def sweep(self, stop: threading.Event, every_seconds: float = 5.0) -> None:
        while not stop.wait(every_seconds):
            try:
                self.expire()
            except Exception:  # noqa: BLE001 - the sweeper must outlive one failure
                log.exception("overlap sweeper")

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._overlaps)
        for overlap_id in ids:
            self.remove(overlap_id)


def open_overlap(
    overlap: NodeOverlap,
    jurisdiction: str,
    roster: list[str],
    reveal: bool,
    sizes: dict[str, int],
    *,
    joins: Sequence[JoinProof],
    trust: MemberTrust,
    charge: Callable[[int], None],
    key_pem: bytes,
    max_relay_points: int,
    workers: int | None = None,
) -> Commitment:
    """Fix the plan once every member's join verifies, charge the points this node will relay,
    draw the overlap key, blind the own set and return the signed commitment to it."""
    with overlap.lock:
        if overlap.plan is not None:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION, f"overlap {overlap.overlap_id} is already open"
            )
        try:
            plan = overlap_protocol.OverlapPlan(overlap.overlap_id, tuple(roster), reveal)
            plan.index(jurisdiction)
        except overlap_protocol.OverlapError as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if reveal and not overlap.reveal_to_owner:
            raise QueryRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{jurisdiction}'s grant does not allow owners to learn shared items "
                "(reveal_to_owner = false); run the overlap without reveal",
            )
        if set(sizes) != set(roster):
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, "the plan must announce one size per participant"
            )
        if sizes[jurisdiction] != overlap.set_size:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the plan announces {sizes[jurisdiction]} items for {jurisdiction}; "
                f"it joined with {overlap.set_size}",
            )
        foreign = sum(size for code, size in sizes.items() if code != jurisdiction)
        if foreign > max_relay_points:
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{foreign} foreign points exceed {jurisdiction}'s ceiling of "
                f"{max_relay_points} relayed points per overlap",
            )
        members = verify_members(
            overlap.overlap_id, overlap.identity, plan.roster, sizes, joins, trust
        )
        # Every foreign point is an item tested against this node's set: charged before
        # the key exists (the investigator's own node's set, with reveal, included).
        charge(foreign)
        party = overlap_protocol.OverlapParty(
            plan, jurisdiction, overlap.items.items, workers=workers
        )
        initial = list(party.initial_batches())
        digest = hashlib.sha256()
        for batch in initial:
            digest.update(batch)
        overlap.plan, overlap.party, overlap.members = plan, party, members
        overlap.sizes = dict(sizes)
        overlap.initial, overlap.initial_sha256 = initial, digest
        return Commitment.signed(
            key_pem,
            overlap_id=overlap.overlap_id,
            origin=jurisdiction,
            set_size=overlap.set_size,
            initial_sha256=digest.digest(),
        )


def initial_batches(overlap: NodeOverlap) -> Iterator[bytes]:
    """The node's own set under its key (blinded at open, committed to), once per overlap."""
    with overlap.lock:
        overlap.require_open()
        if overlap.initial_sent:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"overlap {overlap.overlap_id}: the initial set was already sent",
            )
        overlap.initial_sent = True
        batches, overlap.initial = overlap.initial, []
    yield from batches


def relay_batches(
    overlap: NodeOverlap,
    jurisdiction: str,
    origin: str,
    hop: int,
    expected_points: int,
    incoming: Iterable[bytes],
    commitment: Commitment | None,
) -> Iterator[bytes]:
    """One hop over ``origin``'s set: every point checked and raised to this node's key.

    Only with the origin's signed commitment for exactly this size; at the first hop
    nothing is sent back until the points received match the committed digest.
    """
    with overlap.lock:
        plan, party = overlap.require_open()
        try:
            expected_hop = plan.hop_of(jurisdiction, origin)
        except overlap_protocol.OverlapError as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if hop != expected_hop:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{jurisdiction} relays {origin}'s set at hop {expected_hop}, not {hop}",
            )
        if expected_points != overlap.sizes[origin]:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{origin}'s set was announced with {overlap.sizes[origin]} points, "
                f"not {expected_points}",
            )
        check_commitment(overlap.overlap_id, overlap.members, origin, expected_points, commitment)
        assert commitment is not None
        try:
            relay = party.relay_hop(origin, expected_points)
        except overlap_protocol.OverlapError as exc:
            raise QueryRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        record = HopRecord(origin, hop, expected_points)
        overlap.hops[origin] = record

    def received() -> Iterator[bytes]:
        for batch in incoming:
            record.received.update(batch)
            yield batch

    try:
        outgoing = relay.run(received())
        if hop == 1:
            held = list(outgoing)  # bounded by the charged, announced size
            if record.received.digest() != commitment.initial_sha256:
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the points sent as {origin}'s set are not the set {origin} committed "
                    "to (SHA-256 differs); nothing is relayed",
                )
            outgoing = iter(held)
        for batch in outgoing:
            record.sent.update(batch)
            yield batch
    except group.InvalidPoint as exc:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"{origin}'s set, hop {hop}: {exc}"
        ) from None
    except overlap_protocol.OverlapError as exc:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def learn_shared(
    overlap: NodeOverlap, notices: Iterable[bytes]
) -> list[overlap_protocol.SharedItem]:
    """Turn the coordinator's notices into this node's shared items (reveal overlaps only)."""
    with overlap.lock:
        plan, party = overlap.require_open()
        if not plan.reveal:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"overlap {overlap.overlap_id} does not reveal items to owners",
            )
        if overlap.notices_sha256:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"overlap {overlap.overlap_id}: notices were already delivered",
            )
        digest = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for notice in notices:
                digest.update(notice)
                yield notice

        try:
            shared = party.learn_shared(hashed())
        except overlap_protocol.OverlapError as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        overlap.notices_sha256 = digest.hexdigest()
        overlap.shared = shared
        return shared


def join_overlap(
    registry: OverlapRegistry,
    database: NodeDatabase,
    dataset: DatasetConfig,
    overlap_id: str,
    identity: Identity,
    context: QueryContextInfo,
    admission: Admission,
) -> NodeOverlap:
    """Load the dataset's items and keep the overlap under the admitting grant's terms."""
    try:
        with database.session() as con:
            items = overlap_items(con, dataset)
    except DatasetError as exc:
        raise QueryRefused(grpc.StatusCode.INTERNAL, str(exc)) from None
    grant = admission.grant
    overlap = NodeOverlap(
        overlap_id=overlap_id,
        identity=identity,
        dataset=dataset.name,
        context=context,
        policy_version=admission.policy.version,
        reveal_to_owner=grant.reveal_to_owner,
        min_cohort=grant.min_cohort,
        items=items,
        deadline=registry.deadline(),
        policy_sha256=admission.policy.sha256,
        admission=admission,
    )
    registry.add(overlap)
    return overlap


def step_entry(overlap: NodeOverlap, outcome: str, **fields: Any) -> dict[str, Any]:
    """The `overlap` audit entry of one step: counts and digests, never a point or an item."""
    return {
        "peer": {
            "jurisdiction": overlap.identity.jurisdiction,
            "role": overlap.identity.role,
            "subject": overlap.identity.subject,
            "serial": overlap.identity.serial,
            "fingerprint_sha256": overlap.identity.fingerprint_sha256,
        },
        "case_ref": overlap.context.case_ref,
        "legal_basis": overlap.context.legal_basis,
        "nonce": overlap.context.nonce,
        "kind": QueryKind.OVERLAP.value,
        "dataset": overlap.dataset,
        "overlap_id": overlap.overlap_id,
        "disclosure": Level.OVERLAP.label,
        "policy_version": overlap.policy_version,
        "outcome": outcome,
        **fields,
    }
