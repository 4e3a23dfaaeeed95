"""Hypothesis fuzzing of every message parser and every servicer entry point (bounded for CI).

Servicers: a real in-process gRPC server (`node.server.build_server`, port 0, mTLS)
over a node built with `load_state`; every method of every service in the
generated descriptors (`fedtrace.v1.*_pb2`) gets arbitrary bytes as its request,
so RPCs added by other proto files are fuzzed without changes here. A request may
be refused with a documented status, never UNKNOWN/INTERNAL (an unhandled
exception), and the node's data and budgets never change.

Parsers: every proto message's FromString, points, filters, transcripts,
policies, revocation lists and watchlists, each either parses or fails with its
documented exception.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedtrace.v1 as proto_package
from fedtrace import gcs, group
from fedtrace.errors import ConfigError
from fedtrace.identifiers import load_watchlist
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, init_ca, issue, server_name
from fedtrace.revocation import parse_revocations
from fedtrace.transcript import Transcript
from node import store
from node.config import load_node_config
from node.policy import parse_policy
from node.server import build_server, load_state
from node.setup import init_node

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _modules() -> list[Any]:
    return [
        importlib.import_module(f"fedtrace.v1.{m.name}")
        for m in pkgutil.iter_modules(proto_package.__path__)
        if m.name.endswith("_pb2")
    ]


def _methods() -> list[tuple[str, Any]]:
    return [
        (f"/{service.full_name}/{method.name}", method)
        for module in _modules()
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def _message_classes() -> list[Any]:
    found = []
    for module in _modules():
        for name in module.DESCRIPTOR.message_types_by_name:
            found.append(getattr(module, name))
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    init_ca(root / "ca")
    init_node(root / "EE", "EE", root / "ca", "127.0.0.1:0")
    (root / "EE" / "policy.toml").write_text(
        'jurisdiction = "EE"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 100\n'
    )
    (root / "tx.csv").write_text(
        "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
        + "".join(
            f"t{i},eth,0x{i:040x},0x{i + 1:040x},ETH,1,1.00,2026-01-01T00:00:00Z\n"
            for i in range(1, 50)
        )
    )
    config = load_node_config(root / "EE")
    database = store.NodeDatabase(config.database)
    with database.session() as con:
        store.ingest(con, root / "tx.csv", "transactions")
    issue(root / "ca", root / "FR", name="FR", role=ROLE_INVESTIGATOR)
    running = build_server(load_state(config, database, lambda message: None), "127.0.0.1:0")
    running.server.start()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(root / "ca" / "ca.pem").read_bytes(),
        private_key=(root / "FR" / "key.pem").read_bytes(),
        certificate_chain=(root / "FR" / "cert.pem").read_bytes(),
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{running.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", server_name("EE", ROLE_NODE))],
    )
    yield channel, config.database
    channel.close()
    running.server.stop(None).wait()


def _ledger(database: Path) -> tuple[object, ...]:
    with store.NodeDatabase(database).session() as con:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        usage = (
            con.execute("SELECT * FROM policy_usage ORDER BY ALL").fetchall()
            if "policy_usage" in tables
            else []
        )
        return (usage, store.data_version(con))


def _call(channel: grpc.Channel, path: str, method: Any, payloads: list[bytes]) -> None:
    streaming = (method.client_streaming, method.server_streaming)
    try:
        if streaming == (False, False):
            channel.unary_unary(path)(payloads[0], timeout=10)
        elif streaming == (False, True):
            list(channel.unary_stream(path)(payloads[0], timeout=10))
        elif streaming == (True, False):
            channel.stream_unary(path)(iter(payloads), timeout=10)
        else:
            list(channel.stream_stream(path)(iter(payloads), timeout=10))
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, (path, exc.code(), exc.details())


def test_every_registered_rpc_is_fuzzed(served: tuple[grpc.Channel, Path]) -> None:
    assert "/fedtrace.v1.NodeService/Evaluate" in {path for path, _ in _methods()}


@pytest.mark.parametrize(("path", "method"), _methods(), ids=[p for p, _ in _methods()])
def test_servicer_survives_arbitrary_requests(
    served: tuple[grpc.Channel, Path], path: str, method: Any
) -> None:
    channel, database = served
    before = _ledger(database)

    @FUZZ
    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
    def fuzz(payloads: list[bytes]) -> None:
        _call(channel, path, method, payloads)

    fuzz()
    assert _ledger(database) == before


@given(st.sampled_from(_message_classes()), st.binary(max_size=500))
@settings(max_examples=300, deadline=None)
def test_every_message_parses_or_raises_decode_error(message: Any, raw: bytes) -> None:
    try:
        parsed = message.FromString(raw)
    except DecodeError:
        return
    assert message.FromString(parsed.SerializeToString()) == parsed


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_point_batches_split_or_name_the_problem(blob: bytes) -> None:
    try:
        points = group.split_points(blob)
    except group.InvalidPoint as exc:
        assert str(exc)
        return
    assert b"".join(points) == blob


@given(st.integers(0, 2000), st.integers(0, 70), st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_filters_decode_or_raise_value_error(count: int, bits: int, data: bytes) -> None:
    try:
        gcs.GolombFilter.from_bytes(count, bits, data)
    except ValueError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(list(Transcript.__dataclass_fields__) + ["x"]), json_values))
@settings(max_examples=200, deadline=None)
@pytest.mark.slow  # many Hypothesis examples
def test_transcripts_from_json_build_or_raise_type_error(document: dict[str, object]) -> None:
    try:
        transcript = Transcript.from_json(document)
    except TypeError:
        return
    transcript.digest()


toml_like = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.builds(
        lambda v, extra: (f'jurisdiction = "EE"\nversion = "{v}"\n[[grant]]\n{extra}\n').encode(),
        st.text(max_size=10),
        st.text(max_size=80),
    ),
)


@given(toml_like)
@settings(max_examples=200, deadline=None)
def test_policy_parser_gives_a_policy_or_diagnostics(raw: bytes) -> None:
    outcome = parse_policy(raw, Path("fuzz.toml"))
    if outcome.policy is None:
        assert outcome.errors and all(d.format() for d in outcome.errors)


@given(toml_like)
@settings(max_examples=200, deadline=None)
def test_revocation_parser_gives_a_list_or_config_error(raw: bytes) -> None:
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    try:
        parse_revocations(document, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml")


@given(st.binary(max_size=400), st.sampled_from(["wallet", "eth", "btc", "iban", "person"]))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_watchlist_loader_gives_items_problems_or_value_error(
    tmp_path: Path, raw: bytes, kind: str
) -> None:
    path = tmp_path / "watchlist.txt"
    path.write_bytes(raw)
    try:
        watchlist = load_watchlist(path, kind)
    except ValueError as exc:
        assert str(exc)
        return
    assert all(problem.reason for problem in watchlist.problems)
