"""End to end: a real node enforcing its policy file, its audit trail, and signed reports.

One node (EE) serves its own module-level federation so that policy edits,
restarts and spent budgets here never disturb the shared federation of the
other integration tests.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.harness import LocalFederation, LocalNode
from fedtrace.pki import init_ca

from .conftest import fedtrace, wait_until

pytestmark = pytest.mark.slow

POLICY = """jurisdiction = "EE"
version = "{version}"

[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "{fr_level}"
max_items_per_query = 500
legal_bases = ["MLA"]

[[grant]]
partners = ["SG"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 500
rate_limit = {{ queries = 3, per = "day" }}
item_budget = {{ items = 250, per = "30d" }}
"""


@dataclass
class PolicyFederation:
    root: Path
    data: DemoData
    node: LocalNode
    local: LocalFederation

    @property
    def policy_file(self) -> Path:
        return self.node.node_dir / "policy.toml"

    def write_policy(self, version: str, fr_level: str = "membership") -> None:
        self.policy_file.write_text(POLICY.format(version=version, fr_level=fr_level))

    def write_fed(self, investigator: str) -> Path:
        return self.local.write_federation_file(
            f"fed-{investigator}.toml", investigator_dir=investigator, investigator=investigator
        )

    def watchlist(self, size: int) -> Path:
        path = self.root / f"watchlist-{size}.txt"
        items = self.data.watchlist(400)
        path.write_text("\n".join(items[:size]) + "\n")
        return path

    def match(
        self, investigator: str, size: int = 100, *extra: str
    ) -> tuple[int, dict[str, object]]:
        done = fedtrace(
            "query",
            "match",
            "--federation",
            str(self.write_fed(investigator)),
            "--watchlist",
            str(self.watchlist(size)),
            "--dataset",
            "wallets",
            "--case",
            "CASE-P",
            "--legal-basis",
            "MLA",
            "--format",
            "json",
            *extra,
        )
        report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        assert report is not None, done.stderr
        return done.returncode, report["results"][0]

    def audit_lines(self) -> list[dict[str, object]]:
        path = self.node.node_dir / "audit" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def policy_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyFederation]:
    root = tmp_path_factory.mktemp("policy-federation")
    data = generate_federation_data(root / "data", ("EE",), 600, seed=23)
    with LocalFederation(root) as local:
        node = local.add_node("EE", tables=data.tables("EE"))
        for code in ("FR", "SG"):
            local.issue_investigator(code, name=code)
        federation = PolicyFederation(root, data, node, local)
        federation.write_policy("p1")
        node.start()
        yield federation


def test_a_grant_changed_on_disk_changes_the_answer_within_seconds(
    policy_federation: PolicyFederation,
) -> None:
    fed = policy_federation
    _, result = fed.match("FR")
    assert result["status"] == "ok" and result["disclosure"] == "membership"
    assert result["policy_version"] == "p1"
    fed.write_policy("p2", fr_level="cardinality")
    started = time.monotonic()

    def answered_at_cardinality() -> bool:
        _, again = fed.match("FR")
        return again["disclosure"] == "cardinality" and again["policy_version"] == "p2"

    wait_until(answered_at_cardinality, timeout=15)
    assert time.monotonic() - started < 15
    loaded = [e for e in fed.audit_lines() if e["event"] == "policy-loaded"]
    assert loaded and loaded[-1]["policy_version"] == "p2"


def test_an_invalid_policy_keeps_the_old_one_and_is_audited(
    policy_federation: PolicyFederation,
) -> None:
    fed = policy_federation
    fed.write_policy("p3")
    wait_until(lambda: fed.match("FR")[1]["policy_version"] == "p3", timeout=15)
    fed.policy_file.write_text(
        fed.policy_file.read_text()
        .replace('version = "p3"', 'version = "p4"')
        .replace("max_items_per_query", "max_item_per_query")
    )
    wait_until(lambda: any(e["event"] == "policy-rejected" for e in fed.audit_lines()), timeout=15)
    rejected = [e for e in fed.audit_lines() if e["event"] == "policy-rejected"][-1]
    assert rejected["policy_version"] == "p3"  # the version that stays in force
    assert "policy.toml:" in str(rejected["reason"])
    _, result = fed.match("FR")
    assert result["status"] == "ok" and result["policy_version"] == "p3"
    assert "policy file rejected" in (fed.node.node_dir / "serve.log").read_text()
    fed.write_policy("p5")
    wait_until(lambda: fed.match("FR")[1]["policy_version"] == "p5", timeout=15)


def test_rate_limit_and_item_budget_survive_a_restart(policy_federation: PolicyFederation) -> None:
    fed = policy_federation
    for _ in range(2):  # 2 queries and 200 items of SG's 3 queries and 250 items
        status, result = fed.match("SG", 100)
        assert status == 0 and result["status"] == "ok", result
    assert fed.node.stop() == 0
    fed.node.start()
    status, result = fed.match("SG", 100)
    # An exhausted limit is the policy refusing for now: denied, with when it renews.
    assert status == 3 and result["status"] == "denied"
    reason = str(result["reason"])
    assert reason.startswith("item budget used up; renews at 20")
    assert "RESOURCE_EXHAUSTED:" in reason and "item budget" in reason
    assert "200 of 250 items per 30d used" in reason and "renews at 20" in reason
    status, result = fed.match("SG", 10)  # 210 items, third query: fits
    assert status == 0, result
    status, result = fed.match("SG", 10)  # a fourth query today does not
    assert result["status"] == "denied"
    reason = str(result["reason"])
    assert reason.startswith("rate limit used up; renews at 20")
    assert "RESOURCE_EXHAUSTED:" in reason and "rate limit" in reason
    assert "3 of 3 queries per day used" in reason and "renews at 20" in reason
    refusals = [e for e in fed.audit_lines() if e.get("code") == "RESOURCE_EXHAUSTED"]
    assert len(refusals) == 2 and all(e["renews_at"] for e in refusals)
    assert all(e["budget"]["spent"]["items"] == 0 for e in refusals)  # type: ignore[index]


def test_the_audit_trail_records_every_request_and_no_identifier(
    policy_federation: PolicyFederation,
) -> None:
    fed = policy_federation
    done = fedtrace("audit", "verify", str(fed.node.node_dir))
    assert done.returncode == 0 and "intact" in done.stdout, done.stdout + done.stderr
    queries = [e for e in fed.audit_lines() if e["event"] == "query"]
    assert {e["outcome"] for e in queries} >= {"answered", "refused"}
    answered = next(e for e in queries if e["outcome"] == "answered")
    assert answered["case_ref"] == "CASE-P" and answered["legal_basis"] == "MLA"
    assert answered["peer"]["subject"] and answered["transcript_sha256"]  # type: ignore[index]
    text = (fed.node.node_dir / "audit" / "audit.jsonl").read_text().lower()
    for item in fed.data.watchlist(400):
        assert item.lower() not in text
    shown = fedtrace("audit", "show", str(fed.node.node_dir), "--partner", "SG", "--format", "csv")
    assert shown.returncode == 0 and shown.stdout.count("\n") >= 5


def _tampered_copy(fed: PolicyFederation, name: str) -> Path:
    copy = fed.root / f"tampered-{name}"
    copy.mkdir()
    shutil.copy(fed.node.node_dir / "node.toml", copy / "node.toml")
    shutil.copytree(fed.node.node_dir / "tls", copy / "tls")
    shutil.copytree(fed.node.node_dir / "audit", copy / "audit")
    return copy


@pytest.mark.parametrize(
    ("way", "named"),
    [
        ("edit", "entry 3 (line 3) was edited"),
        ("delete", "entry 3 deleted"),
        ("insert", "entry 2 (line 4) was inserted"),
        ("reorder", "entries reordered: line 3 holds entry 4"),
        ("truncate", "deleted from the end of the trail"),
    ],
)
def test_tampering_with_the_audit_trail_is_detected_and_named(
    policy_federation: PolicyFederation, way: str, named: str
) -> None:
    copy = _tampered_copy(policy_federation, way)
    trail = copy / "audit" / "audit.jsonl"
    lines = trail.read_text().splitlines()
    if way == "edit":
        lines[2] = lines[2].replace('"outcome":"', '"outcome":"x', 1)
    elif way == "delete":
        del lines[2]
    elif way == "insert":
        lines.insert(3, lines[1])
    elif way == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    else:
        lines = lines[:-1]
    trail.write_text("".join(line + "\n" for line in lines))
    done = fedtrace("audit", "verify", str(copy))
    assert done.returncode == 1 and named in done.stdout, done.stdout + done.stderr


def test_a_saved_report_verifies_and_a_forged_or_altered_one_does_not(
    policy_federation: PolicyFederation,
) -> None:
    fed = policy_federation
    out = fed.root / "report.json"
    fed_file = fed.write_fed("FR")
    done = fedtrace(
        "query",
        "match",
        "--federation",
        str(fed_file),
        "--watchlist",
        str(fed.watchlist(100)),
        "--dataset",
        "wallets",
        "--case",
        "CASE-P",
        "--legal-basis",
        "MLA",
        "--format",
        "json",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    done = fedtrace("report", "verify", str(out), "--federation", str(fed_file))
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr
    original = json.loads(out.read_text())

    def verify(report: dict[str, object], *extra: str) -> tuple[int, str]:
        path = fed.root / "altered.json"
        path.write_text(json.dumps(report))
        done = fedtrace(
            "report", "verify", str(path), "--ca", str(fed.root / "ca" / "ca.pem"), *extra
        )
        return done.returncode, done.stdout + done.stderr

    altered = json.loads(json.dumps(original))
    altered["results"][0]["policy_version"] = "p0"
    code, text = verify(altered)
    assert code == 1 and "policy_version shows 'p0'" in text

    altered = json.loads(json.dumps(original))
    altered["results"][0]["signature"]["transcript"]["disclosure"] = "cardinality"
    code, text = verify(altered)
    assert code == 1 and "transcript was altered" in text

    altered = json.loads(json.dumps(original))
    value = altered["results"][0]["signature"]["value"]
    altered["results"][0]["signature"]["value"] = value[:-4] + (
        "0000" if value[-4:] != "0000" else "1111"
    )
    code, text = verify(altered)
    assert code == 1 and "forged or altered" in text

    altered = json.loads(json.dumps(original))
    altered["results"][0]["match_count"] = 0
    altered["results"][0].pop("matched", None)
    code, text = verify(altered)
    assert code == 1 and "altered after the investigator signed it" in text
    altered.pop("investigator_signature")
    code, text = verify(altered)
    assert code == 1 and "no investigator signature" in text

    rogue = json.loads(json.dumps(original))
    init_ca(fed.root / "rogue-ca")
    code, text = verify(rogue, "--ca", str(fed.root / "rogue-ca" / "ca.pem"))
    assert code == 1 and "does not chain to the federation CA" in text
