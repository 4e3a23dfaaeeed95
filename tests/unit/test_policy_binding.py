"""Transcripts bind the node's policy file (its SHA-256) and, for aggregates, each clip bound.

Version-2 transcripts of every kind sign ``policy_sha256``; an aggregate transcript
signs each figure's ``clip`` in the unit the node clips records in. Changing either
changes the digest, so the node's signature no longer holds. In memory, the real
servicers fill them from the policy file in force and the grant; reports show the
digest per node and `report verify` checks it against the transcript.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.federation import NodeEntry
from coordinator.results import NodeFailure, policy_digest
from coordinator.signatures import ReportVerification, check_node_signature
from coordinator.transport import NodeConnection
from coordinator.verify import _transcript, verify_report
from coordinator.verify_kinds import load_aggregate_transcript, load_overlap_transcript
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.aggregate_transcript import AggregateTranscript, FigureTerms
from fedtrace.api import FederationClient
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.pki import ROLE_NODE, init_ca, issue, sign
from fedtrace.transcript import (
    LEGACY_VERSION,
    SIGNATURE_ALGORITHM,
    TRANSCRIPT_VERSION,
    Transcript,
)
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import NodeStatus
from tests.unit.test_match_in_memory import InMemoryFederation, eth, two_nodes

POLICY = hashlib.sha256(b'jurisdiction = "EE"\n').hexdigest()
OTHER_POLICY = hashlib.sha256(b'jurisdiction = "EE"\nversion = "2"\n').hexdigest()


_ISSUED_MS: list[int] = []


def _now_ms() -> int:
    """One moment for every transcript of this module, taken at the first build: after the
    module's certificates were issued (a time taken at import would precede them in a long
    serial run), and the same for two builds that must give the same digest."""
    if not _ISSUED_MS:
        _ISSUED_MS.append(int(time.time() * 1000))
    return _ISSUED_MS[0]


CENTS = (0, 10_000_000_000)  # total_in_eur clipped to [0, 100000000] euros, in cents


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue(root / "ca", root / "EE", name="EE", role=ROLE_NODE)
    _ISSUED_MS[:] = [int(time.time() * 1000) + 1]  # transcripts are made after the certificates
    return root


def _match(**changes: Any) -> Transcript:
    base = Transcript(
        jurisdiction="EE", investigator="FR", dataset="wallets", epoch_id="e",
        filter_sha256="f", disclosure="membership", shuffled=False, policy_version="ee-1",
        case_ref="C-1", legal_basis="MLA", nonce="00", timestamp_unix_ms=_now_ms(),
        item_count=1, request_sha256="r", response_sha256="s", policy_sha256=POLICY,
        v=TRANSCRIPT_VERSION,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _aggregate(**changes: Any) -> AggregateTranscript:
    base = AggregateTranscript(
        jurisdiction="EE", investigator="FR", dataset="wallets", epoch_id="e",
        tags_sha256="t", disclosure="aggregate", policy_version="ee-1", case_ref="C-1",
        legal_basis="MLA", nonce="00", timestamp_unix_ms=_now_ms(), query_id="q",
        item_count=3, row_count=9, total_only=False, min_cohort=1, epsilon=1.0,
        figures=(
            FigureTerms(COUNT_COLUMN, 0, 0.0, 0),
            FigureTerms("total_in_eur", 2, 0.0, 0, CENTS),
            FigureTerms("tx_count", 0, 0.0, 0, (0, 100_000)),
        ),
        request_sha256="r", response_sha256="s", public_context_sha256="c",
        indicator_sha256="i", answers_sha256="a", peers=(), total_nonce="",
        policy_sha256=POLICY, v=TRANSCRIPT_VERSION,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _overlap(**changes: Any) -> OverlapTranscript:
    base = OverlapTranscript(
        jurisdiction="EE", investigator="FR", dataset="wallets", overlap_id="cid",
        roster=("EE", "SG"), reveal=False, disclosure="overlap", policy_version="ee-1",
        case_ref="C-1", legal_basis="MLA", nonce="00", timestamp_unix_ms=_now_ms(),
        set_size=4, initial_sha256="i", hops=(OverlapHop("SG", 1, 5, "r", "s"),),
        policy_sha256=POLICY, v=TRANSCRIPT_VERSION,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _signature(pki: Path, transcript: Any) -> dict[str, Any]:
    """A node's signature as a report keeps it: the transcript as JSON, digest, value."""
    digest = transcript.digest()
    return {
        "algorithm": SIGNATURE_ALGORITHM,
        "transcript": json.loads(json.dumps(dataclasses.asdict(transcript))),
        "transcript_sha256": digest.hex(),
        "value": sign((pki / "EE" / "key.pem").read_bytes(), digest).hex(),
        "certificate_pem": (pki / "EE" / "cert.pem").read_text(),
    }


def _check(pki: Path, signature: dict[str, Any], load: Any) -> ReportVerification:
    outcome = ReportVerification()
    check_node_signature("EE", signature, load, (pki / "ca" / "ca.pem").read_bytes(), outcome)
    return outcome


def _with_figure_clip(document: dict[str, Any], clip: list[int] | None) -> None:
    document["figures"][1]["clip"] = clip


CASES = [
    ("match", _match, _transcript, lambda d: d.update(policy_sha256=OTHER_POLICY)),
    ("aggregate", _aggregate, load_aggregate_transcript, lambda d: d.update(policy_sha256="")),
    (
        "aggregate-clip",
        _aggregate,
        load_aggregate_transcript,
        lambda d: _with_figure_clip(d, [0, CENTS[1] + 1]),
    ),
    (
        "aggregate-unclipped",
        _aggregate,
        load_aggregate_transcript,
        lambda d: _with_figure_clip(d, None),
    ),
    ("overlap", _overlap, load_overlap_transcript, lambda d: d.update(policy_sha256=OTHER_POLICY)),
]


@pytest.mark.parametrize(("name", "build", "load", "change"), CASES, ids=[c[0] for c in CASES])
def test_a_changed_policy_digest_or_clip_bound_breaks_the_signature(
    pki: Path, name: str, build: Any, load: Any, change: Any
) -> None:
    signature = _signature(pki, build())
    assert _check(pki, signature, load).ok
    altered = copy.deepcopy(signature)
    change(altered["transcript"])
    assert load(altered["transcript"]).digest().hex() != signature["transcript_sha256"]
    assert _check(pki, altered, load).failures == [
        "EE: the transcript was altered (its digest does not match)"
    ]
    altered["transcript_sha256"] = load(altered["transcript"]).digest().hex()
    assert _check(pki, altered, load).failures == [
        "EE: the signature is not EE's signature over this transcript (forged or altered)"
    ]


def test_version_2_signs_the_policy_digest_and_clip_bounds_as_integers() -> None:
    document = json.loads(_aggregate().canonical_json())
    assert document["policy_sha256"] == POLICY
    assert [f["clip"] for f in document["figures"]] == [None, list(CENTS), [0, 100_000]]
    assert json.loads(_match().canonical_json())["policy_sha256"] == POLICY
    assert json.loads(_overlap().canonical_json())["policy_sha256"] == POLICY
    stored = json.loads(json.dumps(dataclasses.asdict(_aggregate())))
    assert load_aggregate_transcript(stored) == _aggregate()  # clip read back as a tuple


def test_version_1_documents_sign_neither_and_cannot_claim_them() -> None:
    old = _aggregate(v=LEGACY_VERSION, policy_sha256="")
    signed = old.signed_fields()
    assert "policy_sha256" not in signed and all("clip" not in f for f in signed["figures"])
    assert "policy_sha256" not in _match(v=LEGACY_VERSION).signed_fields()
    assert "policy_sha256" not in _overlap(v=LEGACY_VERSION).signed_fields()
    stored = json.loads(json.dumps(dataclasses.asdict(old)))
    with pytest.raises(ValueError, match="is version 1, which cannot sign 'clip'"):
        load_aggregate_transcript(stored)  # a v1 document cannot claim clip bounds
    stored = json.loads(json.dumps(dataclasses.asdict(_match(v=LEGACY_VERSION))))
    with pytest.raises(ValueError, match="is version 1, which cannot sign 'policy_sha256'"):
        _transcript(stored)
    del stored["policy_sha256"]
    assert _transcript(stored).digest() == _match(v=LEGACY_VERSION, policy_sha256="").digest()


def test_version_2_documents_must_carry_them() -> None:
    stored = json.loads(json.dumps(dataclasses.asdict(_overlap())))
    del stored["policy_sha256"]
    with pytest.raises(ValueError, match="lacks 'policy_sha256', which version 2 signs"):
        load_overlap_transcript(stored)
    stored = json.loads(json.dumps(dataclasses.asdict(_aggregate())))
    del stored["figures"][0]["clip"]
    with pytest.raises(ValueError, match=r"figures\[0\] lacks 'clip', which version 2 signs"):
        load_aggregate_transcript(stored)
    stored = json.loads(json.dumps(dataclasses.asdict(_aggregate())))
    stored["figures"][1]["clip"] = [5, 1]
    with pytest.raises(ValueError, match="field 'clip' is not a tuple"):
        load_aggregate_transcript(stored)


def test_clip_bounds_come_from_the_summary_as_the_node_declares_them() -> None:
    clipped = aggregate_pb2.FigureNoise(
        figure="total_in_eur", decimals=2, clipped=True, clip_lo=-500, clip_hi=CENTS[1]
    )
    wire = aggregate_pb2.FigureNoise.FromString(clipped.SerializeToString())
    assert FigureTerms.from_noise(wire).clip == (-500, CENTS[1])
    assert FigureTerms.from_noise(aggregate_pb2.FigureNoise(figure=COUNT_COLUMN)).clip is None


def test_an_answer_without_a_32_byte_policy_digest_is_an_error() -> None:
    assert policy_digest("EE", bytes(range(32))) == bytes(range(32)).hex()
    with pytest.raises(NodeFailure, match="SHA-256 of the policy file") as caught:
        policy_digest("EE", b"")
    assert caught.value.status == NodeStatus.ERROR


# --- in memory: the real servicers fill them from the policy file and the grant --------------


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("policy-binding"))


def _client(memory: InMemoryFederation, investigator: str) -> FederationClient:
    return FederationClient(
        memory.federation(investigator),
        memory.connections(investigator),
        filters=FilterCache(None),
        tags=TagCache(None),
    )


def _policy_sha256(memory: InMemoryFederation, code: str) -> str:
    return hashlib.sha256((memory.root / code / "policy.toml").read_bytes()).hexdigest()


def _shows_the_policy_files(memory: InMemoryFederation, document: dict[str, Any]) -> None:
    assert [r["node"] for r in document["results"]] == ["EE", "LT"]
    for result in document["results"]:
        assert result["status"] == NodeStatus.OK, result
        expected = _policy_sha256(memory, result["node"])
        assert result["policy_sha256"] == expected
        assert result["signature"]["transcript"]["policy_sha256"] == expected
    assert verify_report(document, memory.ca_pem).ok
    forged = copy.deepcopy(document)
    forged["results"][0]["policy_sha256"] = OTHER_POLICY
    forged.pop("investigator_signature", None)
    checked = verify_report(forged, memory.ca_pem, require_investigator_signature=False)
    assert any(
        f"EE: policy_sha256 shows {OTHER_POLICY!r} but the node signed" in failure
        for failure in checked.failures
    ), checked.failures


def test_a_match_report_shows_each_nodes_policy_file_sha256(memory: InMemoryFederation) -> None:
    with _client(memory, "FR") as fed:
        report = fed.match([eth(5), eth(450)], dataset="wallets", case="PB-1", legal_basis="MLA")
    document = report.to_dict()
    _shows_the_policy_files(memory, document)
    assert json.loads(report.render("json"))["results"] == document["results"]


@pytest.mark.slow
def test_an_aggregate_report_binds_the_policy_file_and_the_grants_clip_bounds(
    memory: InMemoryFederation,
) -> None:
    with _client(memory, "DE") as fed:
        report = fed.aggregate(
            [eth(n) for n in range(440, 460)],
            dataset="wallets",
            case="PB-2",
            sums=["total_in_eur", "tx_count"],
            legal_basis="MLA",
        )
    document = report.to_dict()
    _shows_the_policy_files(memory, document)
    for result in document["results"]:
        figures = result["signature"]["transcript"]["figures"]
        # the grant: clip = { total_in_eur = [0, 100000000], tx_count = [0, 100000] }
        assert {f["figure"]: f["clip"] for f in figures} == {
            COUNT_COLUMN: None,
            "total_in_eur": list(CENTS),
            "tx_count": [0, 100_000],
        }


def test_an_overlap_report_shows_each_nodes_policy_file_sha256(memory: InMemoryFederation) -> None:
    with _client(memory, "IT") as fed:
        report = fed.overlap(dataset="wallets", case="PB-3", legal_basis="MLA")
    assert report.complete
    _shows_the_policy_files(memory, report.to_dict())


class _AlteredSummary:
    """A node connection whose round-1 summaries are altered on the way (a node that would
    sign other terms in round 2 than it declared in round 1)."""

    def __init__(self, plain: NodeConnection, alter: Callable[[Any], None]) -> None:
        self._plain, self._alter = plain, alter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plain, name)

    def aggregate_evaluate(self, requests: Any, timeout: float) -> Iterator[Any]:
        for message in self._plain.aggregate_evaluate(requests, timeout):
            if message.WhichOneof("part") == "summary":
                self._alter(message.summary)
            yield message


def _other_digest(summary: Any) -> None:
    summary.policy_sha256 = bytes.fromhex(OTHER_POLICY)


def _wider_clip(summary: Any) -> None:
    summary.noise[1].clip_hi += 1


def _unclipped(summary: Any) -> None:
    summary.noise[1].clipped = False
    summary.noise[1].clip_lo = summary.noise[1].clip_hi = 0


@pytest.mark.slow
@pytest.mark.parametrize("alter", [_other_digest, _wider_clip, _unclipped])
def test_round_two_signs_the_policy_digest_and_clip_bounds_round_one_declared(
    memory: InMemoryFederation, alter: Callable[[Any], None]
) -> None:
    def wrap(entry: NodeEntry, plain: NodeConnection) -> NodeConnection:
        return _AlteredSummary(plain, alter) if entry.name == "EE" else plain

    outcome = run_aggregate(
        memory.federation("DE"),
        AggregateQuery(
            dataset="wallets",
            case_ref="PB-4",
            legal_basis="MLA",
            items=tuple(eth(n) for n in range(440, 460)),
            investigator="DE",
            columns=("total_in_eur",),
        ),
        memory.connections("DE", wrap),
        memory.ca_pem,
        cache=TagCache(None),
    )
    by_node = {r.result.node: r.result for r in outcome.results}
    assert by_node["LT"].status == NodeStatus.OK, by_node["LT"].reason
    assert by_node["EE"].status == NodeStatus.ERROR
    assert "signature does not match the exchange" in by_node["EE"].reason
