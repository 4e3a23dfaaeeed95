"""`fedtrace report verify` on saved aggregate and overlap reports: real nodes, the real CLI.

Two nodes (EE, SG) grant the investigator FR noisy aggregates and an overlap query
over `wallets` (SG with min_cohort 2). Each report kind is saved once with
`--format json --out`, verifies, and every kind of tampering fails with exit 1
naming what fails: a figure, the transcript, the node signature, a certificate from
another CA, and a shown field the node signed differently even after the report is
re-signed with the investigator's own key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.signatures import sign_report
from fedtrace.demo_data import generate_federation_data
from fedtrace.harness import LocalFederation
from fedtrace.pki import ROLE_NODE, init_ca, issue
from tests.integration.conftest import fedtrace

pytestmark = pytest.mark.slow

CODES = ("EE", "SG")
COLUMNS = ("total_in_eur", "tx_count")


def _policy(code: str) -> str:
    cohort = 2 if code == "SG" else 1
    return "\n".join(
        [
            f'jurisdiction = "{code}"',
            f'version = "{code.lower()}-verify-1"',
            "",
            "[[grant]]",
            'partners = ["FR"]',
            'datasets = ["wallets"]',
            'disclosure = "aggregate"',
            "max_items_per_query = 1000",
            f"aggregate_columns = {json.dumps(list(COLUMNS))}",
            "clip = { total_in_eur = [0, 100000000], tx_count = [0, 100000] }",
            f"min_cohort = {cohort}",
            "epsilon_per_query = 1.0",
            'epsilon_budget = { epsilon = 50.0, per = "30d" }',
            "epsilon_lifetime = 500.0",
            "",
            "[[grant]]",
            'partners = ["FR"]',
            'datasets = ["wallets"]',
            'disclosure = "overlap"',
            "reveal_to_owner = false",
            f"min_cohort = {cohort}",
            "",
        ]
    )


@dataclass
class Saved:
    root: Path
    aggregate: dict[str, Any]
    total: dict[str, Any]
    overlap: dict[str, Any]
    policy_sha256: dict[str, str]  # each node's policy file, as `hashlib` digests its bytes

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.pem"

    def verify(self, report: dict[str, Any], name: str) -> tuple[int, str, str]:
        path = self.root / f"{name}.json"
        path.write_text(json.dumps(report, indent=2))
        done = fedtrace("report", "verify", str(path), "--ca", str(self.ca))
        return done.returncode, done.stdout, done.stderr

    def resign(self, report: dict[str, Any]) -> dict[str, Any]:
        """The investigator re-signs a report it altered: only the node signatures can tell."""
        body = {k: v for k, v in report.items() if k != "investigator_signature"}
        return sign_report(
            body,
            (self.root / "investigator" / "key.pem").read_bytes(),
            (self.root / "investigator" / "cert.pem").read_bytes(),
        )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    root = tmp_path_factory.mktemp("verify-kinds")
    data = generate_federation_data(root / "data", CODES, 400, seed=31)
    with LocalFederation(root, investigator="FR") as local:
        for code in CODES:
            local.add_node(code, policy=_policy(code), tables=data.tables(code, ("transactions",)))
        local.issue_investigator()
        local.start()
        fed = local.federation_file
        held = sorted(data.wallets["EE"])[:30] + sorted(data.wallets["SG"])[:30]
        watchlist = root / "watchlist.txt"
        watchlist.write_text("\n".join(held + data.watchlist(20)) + "\n")
        reports = {}
        for name, extra in (("aggregate", ()), ("total", ("--total-only",))):
            out = root / f"saved-{name}.json"
            done = fedtrace(
                "query",
                "aggregate",
                "--federation",
                str(fed),
                "--watchlist",
                str(watchlist),
                "--dataset",
                "wallets",
                "--case",
                "CASE-V",
                "--legal-basis",
                "MLA",
                *(a for c in COLUMNS for a in ("--sum", c)),
                *extra,
                "--format",
                "json",
                "--out",
                str(out),
            )
            assert done.returncode == 0, done.stderr
            reports[name] = json.loads(out.read_text())
        out = root / "saved-overlap.json"
        done = fedtrace(
            "query",
            "overlap",
            "--federation",
            str(fed),
            "--dataset",
            "wallets",
            "--case",
            "CASE-V",
            "--legal-basis",
            "MLA",
            "--format",
            "json",
            "--out",
            str(out),
        )
        assert done.returncode == 0, done.stderr
        reports["overlap"] = json.loads(out.read_text())
        policies = {
            code: hashlib.sha256(local.nodes[code].policy_file.read_bytes()).hexdigest()
            for code in CODES
        }
        yield Saved(root, reports["aggregate"], reports["total"], reports["overlap"], policies)


@pytest.mark.parametrize("kind", ["aggregate", "total", "overlap"])
def test_saved_reports_verify(saved: Saved, kind: str) -> None:
    report = getattr(saved, kind)
    code, out, err = saved.verify(report, f"ok-{kind}")
    assert code == 0, out + err
    assert out.splitlines()[-1].endswith(": valid")
    for node in CODES:
        assert f"ok    {node}: signature valid ({node} node (serial" in out
    assert "ok    report signed by FR investigator" in out
    if kind == "total":
        assert "ok    total: over EE, SG, agrees with the signed terms" in out
    if kind == "overlap":
        assert "ok    overlap: 2 participants; counts within what they signed (min_cohort 2)" in out


def test_the_saved_reports_carry_what_verification_needs(saved: Saved) -> None:
    for result in saved.aggregate["results"]:
        signed = result["signature"]["transcript"]
        assert result["min_cohort"] == signed["min_cohort"] == (2 if result["node"] == "SG" else 1)
        assert result["signature"]["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
        assert (
            set(result["noise_scale"]) == {"match_count", *COLUMNS}
            or result["match_count"] == f"< {signed['min_cohort']}"
        )
    for result in saved.overlap["results"]:
        signed = result["signature"]["transcript"]
        assert (signed["min_cohort"], signed["reveal_to_owner"]) == (result["min_cohort"], False)
        assert signed["set_size"] == result["set_size"]


@pytest.mark.parametrize("kind", ["aggregate", "total", "overlap"])
def test_each_result_shows_and_binds_its_nodes_policy_file_sha256(saved: Saved, kind: str) -> None:
    report = getattr(saved, kind)
    for result in report["results"]:
        expected = saved.policy_sha256[result["node"]]
        assert result["policy_sha256"] == expected
        assert result["signature"]["transcript"]["policy_sha256"] == expected
        if kind != "overlap":  # the grant's clip bounds, in cents for total_in_eur
            clips = {f["figure"]: f["clip"] for f in result["signature"]["transcript"]["figures"]}
            assert clips == {
                "match_count": None,
                "total_in_eur": [0, 10_000_000_000],
                "tx_count": [0, 100_000],
            }

    def change(document: dict[str, Any]) -> None:
        _ok_result(document)["policy_sha256"] = saved.policy_sha256["SG"]

    code, _, err = saved.verify(saved.resign(_altered(report, change)), f"{kind}-policy")
    assert code == 1
    assert (
        f"NOT valid: EE: policy_sha256 shows {saved.policy_sha256['SG']!r} but the node signed "
        f"{saved.policy_sha256['EE']!r}"
    ) in err.splitlines()[-1]


def _ok_result(report: dict[str, Any], node: str = "EE") -> dict[str, Any]:
    return next(r for r in report["results"] if r["node"] == node)


def _altered(report: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(report)
    change(copied)
    return copied


def _other_ca_certificate(saved: Saved) -> str:
    other = saved.root / "other-ca"
    if not (other / "ca.pem").exists():
        init_ca(other, name="rogue CA")
        issue(other, other / "EE", name="EE", role=ROLE_NODE)
    return (other / "EE" / "cert.pem").read_text()


def _first_noisy(result: dict[str, Any]) -> str:
    return sorted(result["interval_95"])[0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "figure",
            "NOT valid: the report was altered after the investigator signed it "
            "(its digest does not match)",
        ),
        ("figure-alone", "NOT valid: EE: interval_95 of tx_count shows "),
        ("transcript", "NOT valid: EE: the transcript was altered (its digest does not match)"),
        (
            "signature",
            "NOT valid: EE: the signature is not EE's signature over this transcript "
            "(forged or altered)",
        ),
        (
            "certificate",
            "NOT valid: EE: the signing certificate does not chain to the federation CA",
        ),
        ("resigned-min-cohort", "NOT valid: EE: min_cohort shows 3 but the node signed 1"),
        ("resigned-interval", "NOT valid: EE: interval_95 of "),
        ("resigned-noise", "NOT valid: EE: noise_scale shows "),
        ("resigned-epoch", "NOT valid: EE: epoch_id shows 'e-forged' but the node signed "),
    ],
)
def test_tampered_aggregate_report_fails(saved: Saved, case: str, expected: str) -> None:
    report = saved.aggregate
    ee = _ok_result(report)
    assert isinstance(ee["match_count"], int), "EE must show figures for these tests"
    noisy = _first_noisy(ee)

    def change(document: dict[str, Any]) -> None:
        result = _ok_result(document)
        signature = result["signature"]
        if case == "figure":  # value and interval moved together: only the report signature
            value = result["aggregates"]["tx_count"]
            half_width = result["interval_95"]["tx_count"][1] - value
            # as the coordinator shows a non-negative column: the interval is cut at zero
            result["aggregates"]["tx_count"] = value + 1
            result["interval_95"]["tx_count"] = [
                max(0, value + 1 - half_width),
                value + 1 + half_width,
            ]
        elif case == "figure-alone":
            result["aggregates"]["tx_count"] += 1
        elif case == "transcript":
            signature["transcript"]["policy_version"] = "ee-verify-2"
        elif case == "signature":
            value = bytearray.fromhex(signature["value"])
            value[-1] ^= 1
            signature["value"] = value.hex()
        elif case == "certificate":
            signature["certificate_pem"] = _other_ca_certificate(saved)
        elif case == "resigned-min-cohort":
            result["min_cohort"] = 3
        elif case == "resigned-interval":
            low, high = result["interval_95"][noisy]
            result["interval_95"][noisy] = [low + 1, high - 1]
        elif case == "resigned-noise":
            result["noise_scale"][noisy] /= 2
        elif case == "resigned-epoch":
            result["epoch_id"] = "e-forged"

    altered = _altered(report, change)
    if case.startswith("resigned"):
        altered = saved.resign(altered)
    code, out, err = saved.verify(altered, f"agg-{case}")
    assert code == 1, out
    assert expected in err.splitlines()[-1]
    if case == "figure":  # the node signatures still hold: only the investigator's breaks
        assert "ok    EE: signature valid" in out
        assert "ok    SG: signature valid" in out


def test_a_figure_shown_below_the_signed_min_cohort_fails(saved: Saved) -> None:
    def change(document: dict[str, Any]) -> None:
        result = _ok_result(document, "SG")
        result["match_count"] = 1
        result.pop("noise_scale", None)
        result.pop("interval_95", None)
        result["aggregates"] = {c: 1 for c in COLUMNS}

    code, _, err = saved.verify(saved.resign(_altered(saved.aggregate, change)), "agg-cohort")
    assert code == 1
    assert err.splitlines()[-1].endswith(
        "NOT valid: SG: match_count 1 is below the min_cohort 2 the node signed, so its figures "
        "must be withheld"
    )


def test_tampered_total_only_report_fails(saved: Saved) -> None:
    def drop_node(document: dict[str, Any]) -> None:
        document["total"]["nodes"] = ["EE"]

    code, _, err = saved.verify(saved.resign(_altered(saved.total, drop_node)), "total-nodes")
    assert code == 1
    assert "NOT valid: total: nodes shows ['EE'], the signed answering set is ['EE', 'SG']" in err

    def show_figures(document: dict[str, Any]) -> None:
        _ok_result(document)["match_count"] = 7

    code, _, err = saved.verify(saved.resign(_altered(saved.total, show_figures)), "total-fig")
    assert code == 1
    assert err.splitlines()[-1].endswith(
        "NOT valid: EE: it shows match_count, but the node answered total-only (its own figures "
        "are masked)"
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "figure",
            "NOT valid: the report was altered after the investigator signed it "
            "(its digest does not match)",
        ),
        ("transcript", "NOT valid: EE: the transcript was altered (its digest does not match)"),
        (
            "signature",
            "NOT valid: EE: the signature is not EE's signature over this transcript "
            "(forged or altered)",
        ),
        (
            "certificate",
            "NOT valid: EE: the signing certificate does not chain to the federation CA",
        ),
        (
            "figure-suppressed",
            "NOT valid: overlap: groups EE+SG shows '< 5' but the participants signed min_cohort 2",
        ),
        ("resigned-set-size", "NOT valid: EE: set_size shows 1 but the node signed "),
        ("resigned-overlap-id", "NOT valid: EE: overlap_id shows 'forged' but the node signed "),
        (
            "resigned-cohort",
            "NOT valid: overlap: overlap min_cohort shows 1 but the participants signed at most 2",
        ),
        (
            "resigned-count",
            "NOT valid: overlap: groups EE+SG shows 1, below the signed min_cohort 2",
        ),
    ],
)
def test_tampered_overlap_report_fails(saved: Saved, case: str, expected: str) -> None:
    def change(document: dict[str, Any]) -> None:
        result = _ok_result(document)
        signature = result["signature"]
        if case == "figure":
            document["groups"][0]["count"] += 2
        elif case == "figure-suppressed":
            document["groups"][0]["count"] = "< 5"
        elif case == "transcript":
            signature["transcript"]["set_size"] += 1
        elif case == "signature":
            value = bytearray.fromhex(signature["value"])
            value[-1] ^= 1
            signature["value"] = value.hex()
        elif case == "certificate":
            signature["certificate_pem"] = _other_ca_certificate(saved)
        elif case == "resigned-set-size":
            result["set_size"] = 1
        elif case == "resigned-overlap-id":
            document["overlap"]["overlap_id"] = "forged"
        elif case == "resigned-cohort":
            document["overlap"]["min_cohort"] = 1
        elif case == "resigned-count":
            document["groups"][0]["count"] = 1

    altered = _altered(saved.overlap, change)
    if case.startswith("resigned"):
        altered = saved.resign(altered)
    code, out, err = saved.verify(altered, f"overlap-{case}")
    assert code == 1, out
    assert expected in err.splitlines()[-1]
