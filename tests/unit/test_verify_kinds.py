"""coordinator/verify_kinds.py: transcript shapes, node signatures, signed terms vs figures."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.signatures import ReportVerification, check_node_signature, sign_report
from coordinator.verify import verify_report
from coordinator.verify_kinds import (
    figure_mismatches,
    load_aggregate_transcript,
    load_overlap_transcript,
    overlap_mismatches,
    total_terms,
)
from fedtrace.aggregate_transcript import AggregateTranscript, FigureTerms
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, init_ca, issue, sign
from fedtrace.revocation import load_revocations, revoke
from fedtrace.transcript import SIGNATURE_ALGORITHM


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    for name, role in (("EE", ROLE_NODE), ("SG", ROLE_NODE), ("FR", ROLE_INVESTIGATOR)):
        issue(root / "ca", root / name, name=name, role=role)
    return root


def _aggregate(**changes: Any) -> AggregateTranscript:
    base = AggregateTranscript(
        jurisdiction="EE",
        investigator="FR",
        dataset="wallets",
        epoch_id="e1",
        tags_sha256="t",
        disclosure="aggregate",
        policy_version="ee-1",
        case_ref="C-1",
        legal_basis="MLA",
        nonce="00",
        timestamp_unix_ms=_now_ms(),
        query_id="q",
        item_count=10,
        row_count=100,
        total_only=False,
        min_cohort=2,
        epsilon=1.0,
        figures=(
            FigureTerms("match_count", 0, 2.0, 6),
            FigureTerms("total_in_eur", 2, 500.0, 1498),
        ),
        request_sha256="a",
        response_sha256="b",
        public_context_sha256="c",
        indicator_sha256="d",
        answers_sha256="e",
        peers=(),
        total_nonce="",
    )
    return dataclasses.replace(base, **changes)


def _overlap(
    code: str, size: int, other: str, other_size: int, **changes: Any
) -> OverlapTranscript:
    return dataclasses.replace(
        OverlapTranscript(
            jurisdiction=code,
            investigator="FR",
            dataset="wallets",
            overlap_id="cid",
            roster=("EE", "SG"),
            reveal=False,
            disclosure="overlap",
            policy_version=f"{code}-1",
            case_ref="C-1",
            legal_basis="MLA",
            nonce="00",
            timestamp_unix_ms=_now_ms(),
            set_size=size,
            initial_sha256="i",
            hops=(OverlapHop(other, 1, other_size, "r", "s"),),
            min_cohort=2,
        ),
        **changes,
    )


def _signature(
    pki: Path, code: str, transcript: AggregateTranscript | OverlapTranscript
) -> dict[str, Any]:
    digest = transcript.digest()
    return {
        "algorithm": SIGNATURE_ALGORITHM,
        "transcript": dataclasses.asdict(transcript),
        "transcript_sha256": digest.hex(),
        "value": sign((pki / code / "key.pem").read_bytes(), digest).hex(),
        "certificate_pem": (pki / code / "cert.pem").read_text(),
    }


def test_transcript_shapes_are_checked_field_by_field() -> None:
    transcript = _aggregate()
    document = dataclasses.asdict(transcript)
    assert load_aggregate_transcript(document) == transcript
    with pytest.raises(
        ValueError,
        match="^its aggregate transcript does not have exactly the AggregateTranscript fields$",
    ):
        load_aggregate_transcript({k: v for k, v in document.items() if k != "epsilon"})
    with pytest.raises(ValueError, match="field 'min_cohort' is not a int"):
        load_aggregate_transcript({**document, "min_cohort": True})
    bad_figure = {**document, "figures": [{"figure": "match_count", "decimals": 0}]}
    with pytest.raises(
        ValueError,
        match=r"its aggregate transcript figures\[0\] does not have "
        "exactly the FigureTerms fields",
    ):
        load_aggregate_transcript(bad_figure)
    signed = _overlap("EE", 5, "SG", 7)
    overlap = dataclasses.asdict(signed)
    assert load_overlap_transcript(overlap) == signed
    with pytest.raises(ValueError, match="field 'roster' is not a tuple"):
        load_overlap_transcript({**overlap, "roster": "EE,SG"})


def test_node_signature_digest_role_and_ca(pki: Path, tmp_path: Path) -> None:
    ca = (pki / "ca" / "ca.pem").read_bytes()
    transcript = _aggregate()
    signature = _signature(pki, "EE", transcript)
    outcome = ReportVerification()
    checked = check_node_signature("EE", signature, load_aggregate_transcript, ca, outcome)
    assert checked is not None and checked[0] == transcript and outcome.ok
    cases = {
        "digest": (
            {**signature, "transcript": {**signature["transcript"], "item_count": 11}},
            "EE: the transcript was altered (its digest does not match)",
        ),
        "role": (_signature(pki, "FR", _aggregate()), "EE: signed by FR investigator"),
        "other node": (_signature(pki, "SG", _aggregate()), "EE: signed by SG node"),
        "value": (
            {**signature, "value": "00"},
            "EE: the signature is not EE's signature over this transcript",
        ),
    }
    for given, expected in cases.values():
        outcome = ReportVerification()
        assert check_node_signature("EE", given, load_aggregate_transcript, ca, outcome) is None
        assert outcome.failures[0].startswith(expected), outcome.failures
    init_ca(tmp_path / "other")
    outcome = ReportVerification()
    check_node_signature(
        "EE",
        signature,
        load_aggregate_transcript,
        (tmp_path / "other" / "ca.pem").read_bytes(),
        outcome,
    )
    assert outcome.failures[0].startswith(
        "EE: the signing certificate does not chain to the federation CA: "
    )


def test_figures_against_signed_terms() -> None:
    terms = _aggregate().figures
    shown = {
        "match_count": 5,
        "aggregates": {"total_in_eur": 12.34},
        "noise_scale": {"match_count": 2.0, "total_in_eur": 5.0},
        "interval_95": {"match_count": [-1, 11], "total_in_eur": [-2.64, 27.32]},
    }
    assert figure_mismatches(shown, terms, 2) == []
    assert figure_mismatches({**shown, "match_count": 1}, terms, 2) == [
        "match_count 1 is below the min_cohort 2 the node signed, so its figures must be withheld"
    ]
    assert figure_mismatches({**shown, "noise_scale": {"match_count": 2.0}}, terms, 2) == [
        "noise_scale shows {'match_count': 2.0} but the node signed "
        "{'match_count': 2.0, 'total_in_eur': 5.0}"
    ]
    moved = {**shown, "interval_95": {**shown["interval_95"], "match_count": [0, 10]}}
    assert figure_mismatches(moved, terms, 2) == [
        "interval_95 of match_count shows [0, 10] but the signed half-width 6 around 5 gives "
        "[-1, 11]"
    ]
    withheld = {"match_count": "< 2", "aggregates": {"total_in_eur": "< 2"}}
    assert figure_mismatches(withheld, terms, 2) == []
    assert figure_mismatches(withheld, terms, 3) == [
        "its figures are withheld as '< 2' but the node signed min_cohort 3"
    ]
    assert figure_mismatches({**shown, "aggregates": {}}, terms, 2) == [
        "its aggregates do not list exactly the figures the node answered (total_in_eur)"
    ]


def test_total_terms_follow_the_coordinators_sum() -> None:
    quiet = _aggregate(figures=(FigureTerms("match_count", 0, 0.0, 0),))
    assert total_terms([quiet, quiet]) == [FigureTerms("match_count", 0, 0.0, 0)]
    one_noisy = total_terms([quiet, _aggregate(figures=(FigureTerms("match_count", 0, 2.0, 6),))])
    assert one_noisy[0].half_width_95 == 6  # one noisy node: its own half-width


def test_overlap_figures_against_signed_sizes_and_cohort() -> None:
    signed = {"EE": _overlap("EE", 5, "SG", 7), "SG": _overlap("SG", 7, "EE", 5)}
    report: dict[str, Any] = {
        "overlap": {"participants": ["EE", "SG"], "min_cohort": 2},
        "groups": [{"jurisdictions": ["EE", "SG"], "count": 4}],
        "pairwise": [{"jurisdictions": ["EE", "SG"], "count": 4}],
    }
    assert overlap_mismatches(report, signed) == []
    assert overlap_mismatches(
        {**report, "groups": [{"jurisdictions": ["EE", "SG"], "count": 6}]}, signed
    ) == ["groups EE+SG shows 6, more than a member's signed set size"]
    assert overlap_mismatches(
        {**report, "pairwise": [{"jurisdictions": ["EE", "SG"], "count": 1}]}, signed
    ) == ["pairwise EE+SG shows 1, below the signed min_cohort 2"]
    lying = {**signed, "SG": _overlap("SG", 7, "EE", 9)}
    assert overlap_mismatches(report, lying) == [
        "SG signed a relay of 9 items from EE, which signed 5"
    ]
    assert overlap_mismatches(
        {**report, "overlap": {"participants": ["EE", "SG"], "min_cohort": 1}}, signed
    ) == ["overlap min_cohort shows 1 but the participants signed at most 2"]


def test_a_synthetic_overlap_report_verifies_and_a_forged_size_does_not(pki: Path) -> None:
    ca = (pki / "ca" / "ca.pem").read_bytes()
    signed = {"EE": _overlap("EE", 5, "SG", 7), "SG": _overlap("SG", 7, "EE", 5)}
    report = {
        "case": "C-1",
        "query": "overlap",
        "dataset": "wallets",
        "legal_basis": "MLA",
        "overlap": {
            "overlap_id": "cid",
            "participants": ["EE", "SG"],
            "reveal_to_owners": False,
            "min_cohort": 2,
            "seconds": 0.1,
        },
        "groups": [{"jurisdictions": ["EE", "SG"], "count": 4}],
        "pairwise": [{"jurisdictions": ["EE", "SG"], "count": 4}],
        "results": [
            {
                "node": code,
                "status": "ok",
                "disclosure": "overlap",
                "set_size": t.set_size,
                "reveal_to_owner": False,
                "min_cohort": 2,
                "policy_version": t.policy_version,
                "signature": _signature(pki, code, t),
                "seconds": 0.1,
            }
            for code, t in signed.items()
        ],
    }
    key, cert = (pki / "FR" / "key.pem").read_bytes(), (pki / "FR" / "cert.pem").read_bytes()
    outcome = verify_report(sign_report(report, key, cert), ca)
    assert outcome.ok, outcome.lines
    report["results"][1]["set_size"] = 70
    outcome = verify_report(sign_report(report, key, cert), ca)
    assert outcome.failures == ["SG: set_size shows 70 but the node signed 7"]


def test_a_signature_by_a_revoked_certificate_fails_report_verify(
    pki: Path, tmp_path: Path
) -> None:
    """Revocation holds on the report-verify path too, with the CA-signed list only."""
    ca_dir = tmp_path / "ca"
    shutil.copytree(pki / "ca", ca_dir)
    ca = (ca_dir / "ca.pem").read_bytes()
    transcript = _aggregate()
    signature = _signature(pki, "EE", transcript)
    revoke(ca_dir, cert=pki / "EE" / "cert.pem", reason="key compromise")
    revoked = load_revocations(ca_dir / "revoked.toml", ca_pem=ca)
    outcome = ReportVerification(revoked=revoked)
    assert check_node_signature("EE", signature, load_aggregate_transcript, ca, outcome) is None
    assert outcome.failures[0].startswith("EE: signed with a certificate the federation revoked at")
    assert "key compromise" in outcome.failures[0]
    # Without the list the same signature verifies: the list is what refuses it.
    assert check_node_signature(
        "EE", signature, load_aggregate_transcript, ca, ReportVerification()
    )


def test_a_match_transcript_from_before_the_blinding_fields_still_loads() -> None:
    from coordinator.verify import _transcript
    from fedtrace.transcript import OPTIONAL_FIELDS, Transcript

    old = {
        "jurisdiction": "EE", "investigator": "FR", "dataset": "wallets", "epoch_id": "e",
        "filter_sha256": "f", "disclosure": "membership", "shuffled": False,
        "policy_version": "p", "case_ref": "C-1", "legal_basis": "MLA", "nonce": "00",
        "timestamp_unix_ms": 1, "item_count": 1, "request_sha256": "r", "response_sha256": "s",
    }  # fmt: skip
    assert not OPTIONAL_FIELDS & set(old)
    loaded = _transcript(old)
    assert loaded == Transcript(**old)  # type: ignore[arg-type]
    assert loaded.signed_fields() == old  # the same bytes are signed as before
    with pytest.raises(ValueError, match="exactly the transcript fields"):
        _transcript({**old, "extra": 1})
