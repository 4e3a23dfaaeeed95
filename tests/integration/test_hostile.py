"""Hostile input against a real node process: every case gets its documented status or CLI
error, the node stays up, and nothing but the audit entry is written (data, budgets).

The RPC cases are generic: every service and method in the generated descriptors
(`fedtrace.v1.*_pb2`) is called with random bytes, so RPCs added later are covered.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import pkgutil
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import fedtrace.v1 as proto_package
from fedtrace import group
from fedtrace.demo_data import generate_federation_data
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, init_ca, issue, server_name
from fedtrace.v1 import node_pb2, node_pb2_grpc
from node import store

from .conftest import INVESTIGATOR, Federation, fedtrace

pytestmark = pytest.mark.slow

# Every status a node may answer to hostile input; UNKNOWN (an unhandled exception) never.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def all_methods() -> list[tuple[str, Any]]:
    """(full method path, method descriptor) of every RPC in every generated proto module."""
    found = []
    for module in pkgutil.iter_modules(proto_package.__path__):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(f"fedtrace.v1.{module.name}").DESCRIPTOR
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method))
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("hostile")
    data = generate_federation_data(root / "data", ("EE",), 600, seed=5)
    with Federation(root, data) as fed:
        fed.add_node(
            "EE",
            policy='jurisdiction = "EE"\nversion = "ee-h1"\n[[grant]]\npartners = ["FR"]\n'
            'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 1000\n',
            tables=data.tables("EE", ("transactions",)),
        )
        fed.issue_investigator()
        fed.issue_investigator("revoked-inv")
        issue(
            root / "ca",
            root / "expired-inv",
            name=INVESTIGATOR,
            role=ROLE_INVESTIGATOR,
            days=30,
            _not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=60),
        )
        init_ca(root / "rogue-ca")
        issue(root / "rogue-ca", root / "rogue", name=INVESTIGATOR, role=ROLE_INVESTIGATOR)
        fed.start()
        yield fed


def _channel(fed: Federation, who: str = "investigator") -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(fed.root / "ca" / "ca.pem").read_bytes(),
        private_key=(fed.root / who / "key.pem").read_bytes(),
        certificate_chain=(fed.root / who / "cert.pem").read_bytes(),
    )
    return grpc.secure_channel(
        fed.nodes["EE"].address,
        credentials,
        options=[("grpc.ssl_target_name_override", server_name("EE", ROLE_NODE))],
    )


def _state(fed: Federation) -> tuple[object, ...]:
    """What must not change: usage ledger, data version, rows, ingests, epochs."""
    with store.NodeDatabase(fed.nodes["EE"].node_dir / "node.duckdb").session() as con:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        usage = (
            con.execute("SELECT * FROM policy_usage ORDER BY ALL").fetchall()
            if "policy_usage" in tables
            else []
        )
        return (
            usage,
            store.data_version(con),
            con.execute("SELECT count(*) FROM transactions").fetchall(),
            con.execute("SELECT count(*) FROM ingests").fetchall(),
        )


def _alive(fed: Federation) -> None:
    with _channel(fed) as channel:
        info = node_pb2_grpc.NodeServiceStub(channel).GetInfo(node_pb2.GetInfoRequest(), timeout=10)
    assert info.jurisdiction == "EE"
    assert fed.nodes["EE"].process is not None and fed.nodes["EE"].process.poll() is None


def _call_raw(channel: grpc.Channel, path: str, method: Any, payload: bytes) -> grpc.StatusCode:
    kind = (method.client_streaming, method.server_streaming)
    try:
        if kind == (False, False):
            channel.unary_unary(path)(payload, timeout=10)
        elif kind == (False, True):
            list(channel.unary_stream(path)(payload, timeout=10))
        elif kind == (True, False):
            channel.stream_unary(path)(iter([payload, payload]), timeout=10)
        else:
            list(channel.stream_stream(path)(iter([payload, payload]), timeout=10))
    except grpc.RpcError as exc:
        assert exc.code() in DOCUMENTED, (path, exc.code(), exc.details())
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in exc.details():
            assert exc.details().startswith("the request is not a valid fedtrace.v1.")
        return exc.code()
    return grpc.StatusCode.OK


def test_random_bytes_as_every_rpcs_request(hostile: Federation) -> None:
    methods = all_methods()
    assert "/fedtrace.v1.NodeService/Evaluate" in {path for path, _ in methods}
    before = _state(hostile)
    rng = random.Random(8)
    payloads = [b"", b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", os.urandom(3000)] + [
        rng.randbytes(rng.randrange(1, 400)) for _ in range(12)
    ]
    seen: set[grpc.StatusCode] = set()
    with _channel(hostile) as channel:
        for path, method in methods:
            for payload in payloads:
                seen.add(_call_raw(channel, path, method, payload))
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    _alive(hostile)
    assert _state(hostile) == before


def _evaluate(
    channel: grpc.Channel,
    blob: bytes,
    count: int,
    *,
    nonce: bytes | None = None,
    when_ms: int | None = None,
    messages: list[node_pb2.EvaluateRequest] | None = None,
) -> tuple[grpc.StatusCode, str]:
    stub = node_pb2_grpc.NodeServiceStub(channel)
    info = stub.GetInfo(node_pb2.GetInfoRequest(), timeout=10)
    epoch = next(d.epoch_id for d in info.datasets if d.name == "wallets")
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(
            case_ref="H-1",
            legal_basis="MLA",
            nonce=os.urandom(16) if nonce is None else nonce,
            timestamp_unix_ms=int(time.time() * 1000) if when_ms is None else when_ms,
        ),
        dataset="wallets",
        epoch_id=epoch,
        disclosure=3,
        item_count=count,
    )
    if messages is None:
        messages = [
            node_pb2.EvaluateRequest(header=header),
            node_pb2.EvaluateRequest(points=node_pb2.PointBatch(points=blob)),
        ]
    try:
        list(stub.Evaluate(iter(messages), timeout=20))
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _valid_points(n: int) -> bytes:
    return b"".join(group.hash_to_group(f"item-{i}".encode()) for i in range(n))


@pytest.mark.parametrize(
    ("case", "expected", "message"),
    [
        ("identity", grpc.StatusCode.INVALID_ARGUMENT, "identity element"),
        ("non-canonical", grpc.StatusCode.INVALID_ARGUMENT, "not a canonical ristretto255"),
        ("high-bit", grpc.StatusCode.INVALID_ARGUMENT, "not a canonical ristretto255"),
        ("short", grpc.StatusCode.INVALID_ARGUMENT, "wrong length"),
        ("too-many", grpc.StatusCode.INVALID_ARGUMENT, "more points than the 1 announced"),
        ("too-few", grpc.StatusCode.INVALID_ARGUMENT, "0 points received, 2 announced"),
        ("empty-stream", grpc.StatusCode.INVALID_ARGUMENT, "must start with its header"),
        ("over-policy", grpc.StatusCode.PERMISSION_DENIED, "1001 items exceed EE's limit of 1000"),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        ("stale", grpc.StatusCode.INVALID_ARGUMENT, "outside the ±300 s window"),
        ("no-nonce", grpc.StatusCode.INVALID_ARGUMENT, "needs a fresh random nonce of 16 bytes"),
    ],
)
def test_hostile_evaluate_requests(
    hostile: Federation, case: str, expected: grpc.StatusCode, message: str
) -> None:
    before = _state(hostile)
    good = group.hash_to_group(b"x")
    blob, count, kwargs = {
        "identity": (bytes(32), 1, {}),
        "non-canonical": (b"\xff" * 32, 1, {}),
        "high-bit": (good[:31] + bytes([good[31] | 0x80]), 1, {}),
        "short": (bytes(31), 1, {}),
        "too-many": (_valid_points(2), 1, {}),
        "too-few": (b"", 2, {}),
        "empty-stream": (b"", 0, {"messages": []}),
        "over-policy": (_valid_points(1001), 1001, {}),
        "oversized": (os.urandom(5 * 1024 * 1024), 1, {}),
        "stale": (_valid_points(1), 1, {"when_ms": int(time.time() * 1000) - 3_600_000}),
        "no-nonce": (_valid_points(1), 1, {"nonce": b""}),
    }[case]
    with _channel(hostile) as channel:
        code, details = _evaluate(channel, blob, count, **kwargs)  # type: ignore[arg-type]
    assert code == expected, details
    assert message in details
    _alive(hostile)
    assert _state(hostile) == before


def test_a_replayed_request_is_refused_already_exists(hostile: Federation) -> None:
    nonce, when = os.urandom(16), int(time.time() * 1000)
    with _channel(hostile) as channel:
        first = _evaluate(channel, _valid_points(3), 3, nonce=nonce, when_ms=when)
        assert first[0] == grpc.StatusCode.OK
        before = _state(hostile)
        code, details = _evaluate(channel, _valid_points(3), 3, nonce=nonce, when_ms=when)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "replayed request" in details
    assert _state(hostile) == before  # refused before any charge
    entries = [
        json.loads(x)
        for x in (hostile.nodes["EE"].node_dir / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    assert entries[-1]["code"] == "ALREADY_EXISTS" and entries[-1]["outcome"] == "refused"
    _restart(hostile)  # the guard is seeded from the audit trail: a restart opens no gap
    with _channel(hostile) as channel:
        code, _ = _evaluate(channel, _valid_points(3), 3, nonce=nonce, when_ms=when)
    assert code == grpc.StatusCode.ALREADY_EXISTS


def _restart(fed: Federation) -> None:
    fed.nodes["EE"].stop()
    fed.nodes["EE"].start()
    fed.write_fed()


def _watchlist(fed: Federation) -> Path:
    path = fed.root / "wl.txt"
    path.write_text("\n".join(fed.data.watchlist(20)) + "\n")
    return path


@pytest.mark.parametrize(
    ("who", "cli_message"),
    [
        ("rogue", "is not signed by the federation CA"),
        ("expired-inv", "expired"),
    ],
)
def test_foreign_and_expired_certificates_are_refused(
    hostile: Federation, who: str, cli_message: str
) -> None:
    before = _state(hostile)
    fed = hostile.write_fed(name=f"fed-{who}.toml", investigator_dir=who)
    status, report, stderr = hostile.match(_watchlist(hostile), fed=fed)
    assert status == 2 and report is None  # the coordinator checks its own certificate first
    assert cli_message in stderr and stderr.count("\n") == 1
    with _channel(hostile, who) as channel:  # and the node's TLS refuses it outright
        with pytest.raises(grpc.RpcError) as caught:
            node_pb2_grpc.NodeServiceStub(channel).GetInfo(node_pb2.GetInfoRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    _alive(hostile)
    assert _state(hostile) == before


def test_a_revoked_certificate_is_unauthenticated_and_audited(hostile: Federation) -> None:
    revoked_cert = hostile.root / "revoked-inv" / "cert.pem"
    done = fedtrace(
        "pki",
        "revoke",
        str(hostile.root / "ca"),
        "--cert",
        str(revoked_cert),
        "--reason",
        "key compromise",
    )
    assert done.returncode == 0, done.stderr
    node_dir = hostile.nodes["EE"].node_dir
    # The list travels with the CA's signature; the signature first, so the node never sees
    # a new list without it.
    shutil.copy(hostile.root / "ca" / "revoked.toml.sig", node_dir / "tls" / "revoked.toml.sig")
    shutil.copy(hostile.root / "ca" / "revoked.toml", node_dir / "tls" / "revoked.toml")
    before = _state(hostile)
    fed = hostile.write_fed(name="fed-revoked.toml", investigator_dir="revoked-inv")
    status, report, stderr = hostile.match(_watchlist(hostile), fed=fed)
    assert status == 3 and report is not None, stderr
    [result] = report["results"]
    assert result["status"] == "error"
    assert result["reason"].startswith("UNAUTHENTICATED: the certificate of FR investigator")
    assert "was revoked by the federation" in result["reason"]
    assert "(key compromise)" in result["reason"]
    last = json.loads((node_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "peer-refused" and last["code"] == "UNAUTHENTICATED"
    assert _state(hostile) == before
    status, report, _ = hostile.match(_watchlist(hostile))  # the valid certificate still works
    assert status == 0, report
    _alive(hostile)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "quoting.csv",
            b'tx_hash,chain,from_address,to_address,amount_eur,timestamp\n"a,b\n',
            "broken CSV",
        ),
        (
            "latin1.csv",
            b"tx_hash,chain,from_address,to_address,amount_eur,timestamp\n"
            b"t1,eth,\xe9\xe9,0x1,1.00,2026-01-01T00:00:00Z\n",
            "line 2: not UTF-8 text",
        ),
        (
            "huge.csv",
            b"tx_hash,chain,from_address,to_address,amount_eur,timestamp\n"
            + b'"'
            + b"a" * (2 << 20)
            + b'",eth,0x1,0x2,1.00,2026-01-01T00:00:00Z\n',
            "broken CSV",
        ),
        ("empty.csv", b"", "empty file, expected a CSV header line"),
    ],
)
def test_hostile_csv_ingest_is_a_one_line_error_and_changes_nothing(
    hostile: Federation, name: str, content: bytes, message: str
) -> None:
    path = hostile.root / name
    path.write_bytes(content)
    before = _state(hostile)
    done = fedtrace(
        "node", "ingest", str(hostile.nodes["EE"].node_dir), str(path), "--table", "transactions"
    )
    assert done.returncode == 2
    assert done.stderr.startswith("fedtrace: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert _state(hostile) == before
    _alive(hostile)


def test_a_garbage_policy_is_rejected_by_check_and_by_hot_reload(hostile: Federation) -> None:
    garbage = hostile.root / "garbage-policy.toml"
    garbage.write_bytes(b"\x00\xffjurisdiction = [[[\n" + os.urandom(200))
    done = fedtrace("policy", "check", str(garbage))
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    policy = hostile.nodes["EE"].node_dir / "policy.toml"
    good = policy.read_bytes()
    policy.write_bytes(garbage.read_bytes())
    try:
        trail = hostile.nodes["EE"].node_dir / "audit" / "audit.jsonl"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and '"policy-rejected"' not in trail.read_text():
            time.sleep(0.1)
        assert '"policy-rejected"' in trail.read_text()
        status, report, stderr = hostile.match(_watchlist(hostile))
        assert status == 0 and report is not None, stderr
        assert report["results"][0]["policy_version"] == "ee-h1"  # the old policy stays
    finally:
        policy.write_bytes(good)
    _alive(hostile)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01\x02garbage\xff\xfe\n", "is not UTF-8 text"),
        (b"\x00\x01\x02garbage\n", "invalid line(s); fix them or pass --skip-invalid"),
        (b"", "no valid identifiers to query"),
        (b"not-an-address\n0x123\n", "2 invalid line(s)"),
    ],
)
def test_a_garbage_watchlist_is_a_usage_error(
    hostile: Federation, content: bytes, message: str
) -> None:
    path = hostile.root / "garbage-watchlist.txt"
    path.write_bytes(content)
    status, report, stderr = hostile.match(path)
    assert status == 2 and report is None
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("fedtrace: error: ") and message in last, stderr
    assert "Traceback" not in stderr
