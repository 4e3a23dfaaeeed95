"""The overlap query against a hostile investigator: no lookup service, no free reveal.

Each test plays a modified coordinator with raw OverlapService stubs and the
investigator FR's certificate against node EE (40 wallets):

* a roster naming a member that never joined (or whose join is forged, for
  another overlap, or revoked) is refused at Open, before any key exists;
* every foreign point EE would relay is charged to FR's item budget at Open,
  so a candidate list fed in through a member node costs what a match of it
  would; over budget the Open is refused with the usual limit refusal;
* EE relays an origin's set only with that origin's signed commitment, and at
  the first hop releases nothing unless the points are the committed set;
* FR's own node joining with reveal_to_owner pays for its set on EE too;
* Relay and Shared streams that send no header are closed at the deadline.

A "member" here is a real node certificate of the federation whose key the
hostile investigator holds (its own jurisdiction's node, or a colluding one).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedtrace.overlap_commitment import Commitment, JoinProof, join_statement
from fedtrace.pki import ROLE_NODE, identity_from_pem, init_ca, issue, verify_signature
from fedtrace.revocation import revoke, signature_path
from fedtrace.v1 import node_pb2, overlap_pb2, overlap_pb2_grpc
from node.audit import AUDIT_DIR, entries
from node.state import NodeState
from tests.adversarial.conftest import WALLETS, Target, context, points

BUDGET = 500

OVERLAP_POLICY = f"""jurisdiction = "EE"
version = "ov-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "overlap"
reveal_to_owner = true
item_budget = {{ items = {BUDGET}, per = "30d" }}
"""


@dataclass(frozen=True)
class Member:
    """A node certificate of the federation (or of another CA) and its key."""

    code: str
    cert: bytes
    key: bytes

    def join(self, overlap_id: str, size: int, investigator: str) -> overlap_pb2.OverlapJoinProof:
        proof = JoinProof.signed(
            self.key,
            self.cert,
            overlap_id=overlap_id,
            jurisdiction=self.code,
            set_size=size,
            investigator_fingerprint=investigator,
        )
        return _proof(proof)

    def commit(self, overlap_id: str, blob: bytes) -> overlap_pb2.OverlapCommitment:
        commitment = Commitment.signed(
            self.key,
            overlap_id=overlap_id,
            origin=self.code,
            set_size=len(blob) // 32,
            initial_sha256=hashlib.sha256(blob).digest(),
        )
        return overlap_pb2.OverlapCommitment(
            origin=commitment.origin,
            set_size=commitment.set_size,
            initial_sha256=commitment.initial_sha256,
            signature=commitment.signature,
        )


def _proof(proof: JoinProof) -> overlap_pb2.OverlapJoinProof:
    return overlap_pb2.OverlapJoinProof(
        jurisdiction=proof.jurisdiction,
        set_size=proof.set_size,
        certificate_pem=proof.certificate_pem,
        signature=proof.signature,
    )


def member(target: Target, code: str, ca: Path | None = None) -> Member:
    directory = target.root / f"{code}-node-{os.urandom(3).hex()}"
    issue(ca or target.root / "ca", directory, name=code, role=ROLE_NODE)
    return Member(code, (directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes())


class Hostile:
    """FR's modified coordinator: raw OverlapService calls against EE."""

    def __init__(self, target: Target, port: int) -> None:
        self.channel = target.stubs(port, "FR").channel
        self.stub = overlap_pb2_grpc.OverlapServiceStub(self.channel)
        self.fingerprint = identity_from_pem(target.cert("FR")).fingerprint_sha256

    def join(
        self, overlap_id: str
    ) -> tuple[overlap_pb2.OverlapJoinResponse, overlap_pb2.OverlapJoinProof]:
        response = self.stub.Join(
            overlap_pb2.OverlapJoinRequest(
                context=context(), dataset="wallets", overlap_id=overlap_id
            ),
            timeout=30,
        )
        proof = overlap_pb2.OverlapJoinProof(
            jurisdiction="EE",
            set_size=response.set_size,
            certificate_pem=response.certificate_pem,
            signature=response.join_signature,
        )
        return response, proof

    def open(
        self,
        overlap_id: str,
        sizes: dict[str, int],
        joins: list[overlap_pb2.OverlapJoinProof],
        *,
        reveal: bool = False,
    ) -> overlap_pb2.OverlapOpenResponse:
        response: overlap_pb2.OverlapOpenResponse = self.stub.Open(
            overlap_pb2.OverlapOpenRequest(
                overlap_id=overlap_id,
                roster=list(sizes),
                reveal=reveal,
                sizes=[overlap_pb2.OverlapOrigin(origin=c, size=n) for c, n in sizes.items()],
                joins=joins,
            ),
            timeout=30,
        )
        return response

    def relay(
        self,
        overlap_id: str,
        origin: str,
        blob: bytes,
        commitment: overlap_pb2.OverlapCommitment | None,
        *,
        hop: int = 1,
    ) -> list[bytes]:
        header = overlap_pb2.OverlapRelayHeader(
            overlap_id=overlap_id, origin=origin, hop=hop, expected_points=len(blob) // 32
        )
        if commitment is not None:
            header.commitment.CopyFrom(commitment)

        def requests() -> Iterator[overlap_pb2.OverlapRelayRequest]:
            yield overlap_pb2.OverlapRelayRequest(header=header)
            yield overlap_pb2.OverlapRelayRequest(points=node_pb2.PointBatch(points=blob))

        return [m.points for m in self.stub.Relay(requests(), timeout=30)]


def refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        assert callable(call)
        call()
    return caught.value


def charged_items(state: NodeState) -> int:
    with state.database.session() as con:
        row = con.execute("SELECT coalesce(sum(items), 0) FROM policy_usage").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture()
def overlap_target(target: Target) -> Target:
    target.write_policy(OVERLAP_POLICY)
    return target


def test_a_roster_member_that_never_joined_is_refused_at_open(overlap_target: Target) -> None:
    target = overlap_target
    state = target.state()
    outsider_ca = target.root / "other-ca"
    init_ca(outsider_ca)
    with target.served(state) as (running, _):
        fr = Hostile(target, running.port)
        overlap_id = os.urandom(16).hex()
        joined, ee = fr.join(overlap_id)
        assert joined.set_size == WALLETS
        assert verify_signature(  # the node's join is signed for this overlap and investigator
            bytes(joined.certificate_pem),
            join_statement(overlap_id, "EE", WALLETS, fr.fingerprint),
            joined.join_signature,
        )
        sizes = {"EE": WALLETS, "ZZ": 3810}

        # The original attack: ZZ never joined, no join is shown for it.
        error = refused(lambda: fr.open(overlap_id, sizes, [ee]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no signed join for ZZ" in (error.details() or "")

        # A join for ZZ signed by a key outside the federation.
        forged = member(target, "ZZ", outsider_ca).join(overlap_id, 3810, fr.fingerprint)
        error = refused(lambda: fr.open(overlap_id, sizes, [ee, forged]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not signed by the federation CA" in (error.details() or "")

        # A real node's join, but under another name, for another overlap, or another size.
        lt = member(target, "LT")
        renamed = lt.join(overlap_id, 3810, fr.fingerprint)
        renamed.jurisdiction = "ZZ"
        error = refused(lambda: fr.open(overlap_id, sizes, [ee, renamed]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not by node ZZ" in (error.details() or "")
        lt_sizes = {"EE": WALLETS, "LT": 30}
        stale = lt.join(os.urandom(16).hex(), 30, fr.fingerprint)
        error = refused(lambda: fr.open(overlap_id, lt_sizes, [ee, stale]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "join signature does not verify" in (error.details() or "")
        smaller = lt.join(overlap_id, 3, fr.fingerprint)
        error = refused(lambda: fr.open(overlap_id, lt_sizes, [ee, smaller]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

        # An investigator certificate is not a member.
        investigator = Member(
            "FR", target.cert("FR"), (target.root / "FR" / "key.pem").read_bytes()
        )
        fr_sizes = {"EE": WALLETS, "FR": 30}
        error = refused(
            lambda: fr.open(
                overlap_id, fr_sizes, [ee, investigator.join(overlap_id, 30, fr.fingerprint)]
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        # Without an open overlap nothing is relayed.
        error = refused(lambda: fr.relay(overlap_id, "ZZ", points(30), None))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert charged_items(state) == 0


def test_a_revoked_member_cannot_take_part(overlap_target: Target) -> None:
    target = overlap_target
    lt = member(target, "LT")
    cert_path = target.root / "lt.pem"
    cert_path.write_bytes(lt.cert)
    path, _ = revoke(target.root / "ca", cert=cert_path, reason="key compromise")
    tls = target.node_dir / "tls"
    (tls / "revoked.toml").write_bytes(path.read_bytes())
    (tls / "revoked.toml.sig").write_bytes(signature_path(path).read_bytes())
    with target.served() as (running, _):
        fr = Hostile(target, running.port)
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "LT": 30}
        error = refused(
            lambda: fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 30, fr.fingerprint)])
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (error.details() or "")


def test_relayed_points_are_charged_to_the_investigators_item_budget(
    overlap_target: Target,
) -> None:
    target = overlap_target
    state = target.state()
    lt = member(target, "LT")
    with target.served(state) as (running, _):
        fr = Hostile(target, running.port)
        # 3,810 candidates through a member that did join: more than FR's whole budget.
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "LT": 3810}
        error = refused(
            lambda: fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 3810, fr.fingerprint)])
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"more than FR's whole item budget of {BUDGET} items" in (error.details() or "")
        assert charged_items(state) == 0

        # 300 fit, and are charged before EE draws its key; 300 more do not.
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "LT": 300}
        opened = fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 300, fr.fingerprint)])
        assert opened.set_size == WALLETS
        assert charged_items(state) == 300
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        error = refused(
            lambda: fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 300, fr.fingerprint)])
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"300 of {BUDGET} items per 30d used" in (error.details() or "")
        assert charged_items(state) == 300
        with state.database.session() as con:  # one ledger row (one query) per overlap
            rows = con.execute("SELECT count(*) FROM policy_usage").fetchone()
        assert rows is not None and rows[0] == 3
    opened_steps = [e for e in entries(target.node_dir / AUDIT_DIR) if e.get("outcome") == "opened"]
    assert [e["items_charged"] for e in opened_steps] == [300]


def test_relay_refuses_points_that_are_not_the_origins_committed_set(
    overlap_target: Target,
) -> None:
    target = overlap_target
    lt = member(target, "LT")
    committed, swapped = points(5), points(5, start=1000)
    with target.served() as (running, _):
        fr = Hostile(target, running.port)
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "LT": 5}
        opened = fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 5, fr.fingerprint)])
        assert opened.commitment.origin == "EE" and opened.commitment.set_size == WALLETS

        error = refused(lambda: fr.relay(overlap_id, "LT", committed, None))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs LT's signed commitment" in (error.details() or "")
        bigger = lt.commit(overlap_id, points(6))
        error = refused(lambda: fr.relay(overlap_id, "LT", committed, bigger))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        other = lt.commit(os.urandom(16).hex(), committed)
        error = refused(lambda: fr.relay(overlap_id, "LT", committed, other))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "does not verify" in (error.details() or "")

        # The commitment is genuine, the points are not: nothing comes back.
        received: list[bytes] = []

        def swap() -> None:
            received.extend(fr.relay(overlap_id, "LT", swapped, lt.commit(overlap_id, committed)))

        error = refused(swap)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not the set LT committed to" in (error.details() or "")
        assert received == []

        # The committed set itself is relayed (in a fresh overlap: a hop runs once).
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        fr.open(overlap_id, sizes, [ee, lt.join(overlap_id, 5, fr.fingerprint)])
        out = fr.relay(overlap_id, "LT", committed, lt.commit(overlap_id, committed))
        assert sum(len(b) for b in out) == len(committed)


def test_own_jurisdiction_reveal_is_charged_on_each_partner(overlap_target: Target) -> None:
    target = overlap_target
    state = target.state()
    fr_node = member(target, "FR")  # the investigator's own node, unmodified
    with target.served(state) as (running, _):
        fr = Hostile(target, running.port)
        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "FR": 521}
        error = refused(
            lambda: fr.open(
                overlap_id, sizes, [ee, fr_node.join(overlap_id, 521, fr.fingerprint)], reveal=True
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "item budget" in (error.details() or "")
        assert charged_items(state) == 0
        # Nothing is open, so no notice can be delivered and nothing is stored.
        error = refused(
            lambda: fr.stub.Shared(
                iter(
                    [
                        overlap_pb2.OverlapSharedRequest(
                            header=overlap_pb2.OverlapRef(overlap_id=overlap_id)
                        )
                    ]
                ),
                timeout=30,
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

        overlap_id = os.urandom(16).hex()
        _, ee = fr.join(overlap_id)
        sizes = {"EE": WALLETS, "FR": 400}
        fr.open(overlap_id, sizes, [ee, fr_node.join(overlap_id, 400, fr.fingerprint)], reveal=True)
        assert charged_items(state) == 400


def _stalled(release: threading.Event) -> Iterator[overlap_pb2.OverlapRelayRequest]:
    release.wait(30)
    return
    yield  # sends nothing until released


def test_overlap_streams_without_a_header_are_closed_at_the_deadline(
    overlap_target: Target,
) -> None:
    target = overlap_target
    target.write_limits(first_message_seconds=1.0)
    release = threading.Event()
    with target.served() as (running, _):
        fr = Hostile(target, running.port)
        started = time.monotonic()
        relay = fr.stub.Relay(_stalled(release), timeout=30)
        shared = fr.stub.Shared.future(_stalled(release), timeout=30)
        codes = []
        try:
            list(relay)
        except grpc.RpcError as exc:
            codes.append(exc.code())
        try:
            shared.result()
        except grpc.RpcError as exc:
            codes.append(exc.code())
        release.set()
        assert time.monotonic() - started < 10
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    refusals = [
        e
        for e in entries(target.node_dir / AUDIT_DIR)
        if e.get("code") == "DEADLINE_EXCEEDED" and e.get("kind") == "overlap"
    ]
    assert len(refusals) == 2
