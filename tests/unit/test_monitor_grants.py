"""Grants that name a monitor: policy parsing and explain, schema, and the node's checks.

In memory (tests/unit/test_match_in_memory.py's servicers): a query without a sealed
opening is refused naming the monitor, one with it is answered and the opening is
stored and bound to the audit entry, and an opening over other points is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import time
from pathlib import Path
from typing import Any

import grpc
import jsonschema  # type: ignore[import-untyped]
import pytest

from coordinator.federation import Federation, MonitorEntry, load_federation
from coordinator.match import MatchQuery, run_match
from coordinator.transport import NodeConnection
from fedtrace import opening, pki
from fedtrace.cli.args import parse_moment
from fedtrace.errors import ConfigError
from fedtrace.v1 import node_pb2
from fedtrace.wire import Level, NodeStatus
from node.audit import AUDIT_DIR
from node.audit.show import entries
from node.auth import IdentityInterceptor
from node.openings import export, stored_count
from node.policy.explain import describe_grant
from node.policy.parse import parse_policy
from tests.unit.test_match_in_memory import FakeContext, InMemoryFederation, eth

POLICY = (
    'jurisdiction = "EE"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
    'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 3000\n'
    'monitor = "OVS"\n'
)


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    federation = InMemoryFederation.create(tmp_path_factory.mktemp("monitor"))
    pki.issue(federation.root / "ca", federation.root / "OVS", name="OVS", role=pki.ROLE_MONITOR)
    rng = random.Random(7)
    federation.add_node("EE", POLICY, {eth(rng.randrange(1, 500)) for _ in range(200)})
    return federation


def _federation(memory: InMemoryFederation, monitors: bool = True) -> Federation:
    plain = memory.federation("FR")
    if not monitors:
        return plain
    cert = memory.root / "OVS" / "cert.pem"
    return dataclasses.replace(plain, monitors=(MonitorEntry("OVS", cert, cert.read_bytes()),))


def _query(items: list[str]) -> MatchQuery:
    return MatchQuery("wallets", "C-1", "MLA", "wallet", tuple(items), "FR")


def test_policy_monitor_key_parses_and_explains() -> None:
    policy = parse_policy(POLICY.encode(), Path("policy.toml")).policy
    assert policy is not None
    [grant] = policy.grants
    assert grant.monitor == "OVS"
    lines = describe_grant(grant, "EE", dt.datetime.now(dt.UTC))
    assert (
        "Every answer carries a sealed opening for monitor OVS; queries without one are refused."
        in lines
    )


def test_policy_monitor_must_be_a_name() -> None:
    parsed = parse_policy(POLICY.replace('"OVS"', '"ovs office"').encode(), Path("policy.toml"))
    assert parsed.policy is None
    assert any("'monitor' must be the name" in d.message for d in parsed.errors)


def test_schema_accepts_and_rejects_monitor() -> None:
    import tomllib

    schema = json.loads(Path("policies/policy.schema.json").read_text())
    jsonschema.validate(tomllib.loads(POLICY), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(POLICY.replace('"OVS"', "3")), schema)


def test_query_without_opening_is_refused_naming_the_monitor(memory: InMemoryFederation) -> None:
    [result] = run_match(
        _federation(memory, monitors=False),
        _query([eth(1)]),
        memory.connections("FR"),
        memory.ca_pem,
    )
    assert result.status != "ok"
    assert "FED.toml names no monitor OVS, which EE's grant requires" in result.reason


def test_node_refuses_a_header_without_opening(memory: InMemoryFederation) -> None:
    connection = memory.connections("FR")(memory.federation("FR").nodes[0])
    info = connection.info(10)
    [dataset] = [d for d in info.datasets if d.name == "wallets"]
    assert list(dataset.monitors) == ["OVS"]
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(
            case_ref="C-1",
            legal_basis="MLA",
            nonce=b"\1" * 16,
            timestamp_unix_ms=int(time.time() * 1000),
        ),
        dataset="wallets",
        epoch_id=dataset.epoch_id,
        disclosure=Level.MEMBERSHIP.wire,
        item_count=1,
        blinding=node_pb2.BLINDING_MULTIPLICATIVE,
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(connection.evaluate(iter([node_pb2.EvaluateRequest(header=header)]), 10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "grant requires a sealed opening for monitor OVS" in refused.value.details()


def test_sealed_query_is_answered_stored_and_exported(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    node = memory.nodes["EE"]
    before = stored_count(node.state.database)
    held = sorted(memory.held["EE"])
    [result] = run_match(
        _federation(memory), _query([held[0], eth(9999)]), memory.connections("FR"), memory.ca_pem
    )
    assert result.status == "ok", result.reason
    assert result.matched == [held[0]]
    assert stored_count(node.state.database) == before + 1
    trail = entries(memory.root / "EE" / AUDIT_DIR)
    bound = [e for e in trail if e.get("details", {}).get("opening_sha256")]
    assert bound
    summary = export(node.state.database, trail, "EE", "OVS", tmp_path / "out")
    assert summary.count == before + 1
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / "queries.jsonl").stat().st_mode & 0o777 == 0o600
    line: dict[str, Any] = json.loads(
        (tmp_path / "out" / "queries.jsonl").read_text().splitlines()[-1]
    )
    assert line["audit_seq"] == bound[-1]["seq"]
    sealed = opening.SealedOpening(
        "OVS",
        opening.SUITE,
        bytes.fromhex(line["enc"]),
        bytes.fromhex(line["ciphertext"]),
        bytes.fromhex(line["statement"]),
        bytes.fromhex(line["signature"]),
    )
    key = pki._load_private_key(pki.read_key_pem(memory.root / "OVS" / "key.pem"), None)
    opened = opening.open_sealed(sealed, key)
    assert len(opened.items) == 2
    assert sealed.digest().hex() == line["opening_sha256"]
    with pytest.raises(Exception, match="not empty"):
        export(node.state.database, trail, "EE", "OVS", tmp_path / "out")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert export(node.state.database, trail, "EE", "OVS", tmp_path / "new", later).count == 0
    assert parse_moment("--since", "2026-01-01") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class _SwapPoints:
    """Sends other points than the opening was sealed over (a cheating client)."""

    def __init__(self, inner: NodeConnection) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def evaluate(self, requests: Any, timeout: float) -> Any:
        def swapped() -> Any:
            for message in requests:
                if message.WhichOneof("part") == "points":
                    blob = bytearray(message.points.points)
                    blob[:32] = bytes(blob[32:64])  # the second point twice
                    message = node_pb2.EvaluateRequest(
                        points=node_pb2.PointBatch(points=bytes(blob))
                    )
                yield message

        return self._inner.evaluate(swapped(), timeout)


def test_opening_over_other_points_is_refused(memory: InMemoryFederation) -> None:
    node = memory.nodes["EE"]
    before = stored_count(node.state.database)
    [result] = run_match(
        _federation(memory),
        _query([eth(1), eth(2)]),
        memory.connections("FR", lambda entry, plain: _SwapPoints(plain)),
        memory.ca_pem,
    )
    assert result.status != "ok"
    assert "does not describe this query (points_sha256 differ)" in result.reason
    assert stored_count(node.state.database) == before


def test_monitor_certificate_is_no_partner(memory: InMemoryFederation) -> None:
    cert = (memory.root / "OVS" / "cert.pem").read_bytes()
    interceptor = IdentityInterceptor()
    with pytest.raises(grpc.RpcError) as refused:
        interceptor._check(FakeContext(cert), "/fedtrace.v1.NodeService/GetInfo")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_fed_toml_monitor_tables(memory: InMemoryFederation, tmp_path: Path) -> None:
    root = memory.root
    text = (
        f'[investigator]\nname = "FR"\ncert = "{root}/FR/cert.pem"\nkey = "{root}/FR/key.pem"\n'
        f'ca = "{root}/ca/ca.pem"\n[[node]]\nname = "EE"\naddress = "x:1"\n'
        f'[[monitor]]\nname = "OVS"\ncert = "{root}/OVS/cert.pem"\n'
    )
    path = tmp_path / "FED.toml"
    path.write_text(text)
    assert [m.name for m in load_federation(path).monitors] == ["OVS"]
    path.write_text(text.replace('name = "OVS"', 'name = "OVX"'))
    with pytest.raises(ConfigError, match="not monitor OVX"):
        load_federation(path)
    path.write_text(text.replace(f'cert = "{root}/OVS/cert.pem"', f'cert = "{root}/FR/cert.pem"'))
    with pytest.raises(ConfigError, match="investigator"):
        load_federation(path)
    path.write_text(text + 'colour = "red"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_federation(path)


AGGREGATE_POLICY = """jurisdiction = "LT"
version = "lt-1"
[[grant]]
partners = ["DE"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 3000
aggregate_columns = ["total_in_eur", "tx_count"]
clip = { total_in_eur = [0, 100000000], tx_count = [0, 100000] }
min_cohort = 1
noise = "off"
monitor = "OVS"
"""


@pytest.mark.slow  # seconds of homomorphic encryption
def test_sealed_aggregate_rounds_are_stored_and_open(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    from coordinator.aggregate import AggregateQuery, run_aggregate
    from fedtrace.he import SecretHeContext

    if "LT" not in memory.nodes:
        memory.add_node("LT", AGGREGATE_POLICY, {eth(n) for n in range(1, 301)})
    node = memory.nodes["LT"]
    federation = dataclasses.replace(
        _federation(memory), investigator="DE", nodes=(memory.federation("DE").nodes[1],)
    )
    federation = dataclasses.replace(
        federation,
        cert=memory.root / "DE" / "cert.pem",
        key=memory.root / "DE" / "key.pem",
    )
    items = tuple(eth(n) for n in range(250, 320))
    query = AggregateQuery("wallets", "AGG-1", "MLA", items, "DE", ("tx_count",))
    outcome = run_aggregate(federation, query, memory.connections("DE"), memory.ca_pem)
    [result] = outcome.results
    assert result.result.status == "ok", result.result.reason
    assert (result.figures or {})["match_count"].amount() == 51
    assert stored_count(node.state.database) == 2
    trail = entries(memory.root / "LT" / AUDIT_DIR)
    summary = export(node.state.database, trail, "LT", "OVS", tmp_path / "out")
    assert summary.count == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [epoch] = manifest["epochs"].values()
    assert (tmp_path / "out" / epoch["tags_file"]).stat().st_size == 8 * epoch["row_count"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "queries.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["aggregate-points", "aggregate-indicator"]
    assert all(line["audit_seq"] > 0 for line in lines)
    assert lines[0]["answer_points"] and lines[1]["indicator_ciphertexts"]
    key = pki._load_private_key(pki.read_key_pem(memory.root / "OVS" / "key.pem"), None)
    second = lines[1]
    sealed = opening.SealedOpening(
        "OVS",
        opening.SUITE,
        bytes.fromhex(second["enc"]),
        bytes.fromhex(second["ciphertext"]),
        bytes.fromhex(second["statement"]),
        bytes.fromhex(second["signature"]),
    )
    opened = opening.open_sealed(sealed, key)
    assert len(opened.positions) == 51
    context = SecretHeContext.from_secret_key(opened.he_secret_context)
    slots = context.decrypt_slots(bytes.fromhex(second["indicator_ciphertexts"][0]))
    sent = [i for i, bit in enumerate(slots[: opened.row_count]) if bit]
    assert sent == opening.bitmap_positions(opened.indicator, opened.row_count)
    assert sorted(sent) == sorted(opened.positions)


def test_policy_diff_labels_a_monitor_tighter() -> None:
    from node.policy.diff import diff

    plain = POLICY.replace('monitor = "OVS"\n', "")
    old = parse_policy(plain.encode(), Path("old.toml")).policy
    new = parse_policy(POLICY.replace('"v1"', '"v2"').encode(), Path("new.toml")).policy
    assert old is not None and new is not None
    text = diff(old, new)
    assert "match: monitor: none → OVS (tighter" in text
    assert "every answer carries a sealed opening for monitor OVS" in text
    assert "match: monitor: OVS → none (looser" in diff(new, old)


def test_every_grant_that_could_admit_demands_its_monitor(memory: InMemoryFederation) -> None:
    # The membership grant names no monitor, but the cardinality grant that could also
    # admit FR's match does: GetInfo lists OVS and the node demands an opening for it.
    policy = (
        POLICY.replace('monitor = "OVS"\n', "").replace('"EE"', '"LV"')
        + '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\ndisclosure = "cardinality"\n'
        'max_items_per_query = 10\nmonitor = "OVS"\n'
    )
    if "LV" not in memory.nodes:
        memory.add_node("LV", policy, {eth(n) for n in range(1, 50)})
    entry = next(e for e in memory.federation("FR").nodes if e.name == "LV")
    connection = memory.connections("FR")(entry)
    [dataset] = [d for d in connection.info(10).datasets if d.name == "wallets"]
    assert list(dataset.monitors) == ["OVS"]
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(
            case_ref="C-1",
            legal_basis="MLA",
            nonce=b"\2" * 16,
            timestamp_unix_ms=int(time.time() * 1000),
        ),
        dataset="wallets",
        epoch_id=dataset.epoch_id,
        disclosure=Level.MEMBERSHIP.wire,
        item_count=1,
        blinding=node_pb2.BLINDING_MULTIPLICATIVE,
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(connection.evaluate(iter([node_pb2.EvaluateRequest(header=header)]), 10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sealed opening for monitor OVS" in refused.value.details()
    federation = dataclasses.replace(_federation(memory), nodes=(entry,))
    [result] = run_match(federation, _query([eth(3)]), memory.connections("FR"), memory.ca_pem)
    assert result.status == "ok", result.reason
    assert result.matched == [eth(3)]


def test_python_api_seals_openings_too(memory: InMemoryFederation) -> None:
    from coordinator.epoch_cache import FilterCache
    from fedtrace.api import FederationClient

    node = memory.nodes["EE"]
    before = stored_count(node.state.database)
    federation = dataclasses.replace(_federation(memory), nodes=(memory.federation("FR").nodes[0],))
    held = sorted(memory.held["EE"])
    with FederationClient(federation, memory.connections("FR"), filters=FilterCache(None)) as fed:
        report = fed.match([held[1]], dataset="wallets", case="API-9", legal_basis="MLA")
    [result] = report.results
    assert result.status == NodeStatus.OK, result.reason
    assert stored_count(node.state.database) == before + 1


def test_monitor_certificate_is_client_only(memory: InMemoryFederation) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    pem = (memory.root / "OVS" / "cert.pem").read_bytes()
    identity = pki.verify_issued_by(pem, memory.ca_pem)
    assert (identity.jurisdiction, identity.role) == ("OVS", pki.ROLE_MONITOR)
    usages = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert list(usages.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
