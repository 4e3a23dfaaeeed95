"""The officer's web console over HTTP (Starlette TestClient) against a real node directory.

The node is made with the CLI (pki init, pki issue, node init), given a policy with a
disclosure-request grant, a few transactions, and follow-up requests submitted through
node.followup as the request service does. Covered: no session no service, the one-time
token, CSRF refusals, approve and refuse (API and forms, audited with the session id),
the release of a freeze order, status codes, escaping, and the read-only pages.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx is what is installed
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from fedtrace.cli import main as fedtrace
from fedtrace.errors import ConfigError
from node import followup
from node.audit import AUDIT_DIR, entries
from node.config import load_node_config
from node.console.app import ConsoleSettings, create_app
from node.console.auth import COOKIE_NAME, SessionStore
from node.console.launch import plan_listen
from node.store import NodeDatabase

# A node directory, a DuckDB file and many HTTP round trips per test: the slow tier.
pytestmark = pytest.mark.slow

A = "0x52908400098527886e0f7030069857d2e4169ee7"
B = "0xde709f2102306220921060314715629080e2fb77"
HOSTILE_CASE = "<script>alert(1)</script>[/]"
FIELDS = ("tx_count", "first_seen", "linked_subjects")
POLICY = """
jurisdiction = "EE"
version = "ee-console-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
legal_bases = ["MLA"]
disclosable_fields = ["tx_count", "total_in_eur", "first_seen", "last_seen", "linked_subjects"]
approval = "officer"
answer_within_days = 10
rate_limit = { queries = 50, per = "day" }
freeze_days_max = 30
"""


@dataclass
class Console:
    node_dir: Path
    client: TestClient
    sessions: SessionStore

    def sign_in(self) -> str:
        """Redeem the token; returns the CSRF token of the new session."""
        answer = self.client.get(f"/?token={self.sessions.start_token}", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/requests"
        answer = self.client.get("/api/session")
        assert answer.status_code == 200
        return str(answer.json()["csrf"])


def submit(node_dir: Path, case: str = "CASE-1", kind: str = "disclose") -> str:
    config = load_node_config(node_dir)
    dataset = config.dataset("wallets")
    assert dataset is not None
    row = followup.submit(
        NodeDatabase(config.database),
        followup.Submission(
            kind=kind,
            partner="FR",
            partner_subject="CN=FR",
            case_ref=case,
            legal_basis="MLA",
            reason="tracing proceeds",
            dataset=dataset,
            item=A,
            fields_asked=FIELDS if kind == "disclose" else (),
            preservation_days=30 if kind in ("preserve", "freeze") else 0,
            amount_eur=40_000 if kind == "freeze" else 0,
            automatic=False,
            answer_within_days=10,
            policy_version="ee-console-1",
            grant_index=1,
            nonce="00",
        ),
        dt.datetime.now(dt.UTC),
    )
    assert row.state == "pending"
    return row.request_id


@pytest.fixture(scope="module")
def node_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console")
    assert fedtrace(["pki", "init", str(root / "ca")]) == 0
    assert (
        fedtrace(
            [
                "pki",
                "issue",
                str(root / "ca"),
                str(root / "fr"),
                "--name",
                "FR",
                "--role",
                "investigator",
            ]
        )
        == 0
    )
    node_dir = root / "EE"
    assert fedtrace(["node", "init", str(node_dir), "--jurisdiction", "EE", "--ca",
                     str(root / "ca")]) == 0  # fmt: skip
    (node_dir / "policy.toml").write_text(POLICY)
    with NodeDatabase(node_dir / "node.duckdb").session() as con:
        con.execute(
            "INSERT INTO transactions VALUES "
            f"('t1', 'eth', '{A}', '{B}', 'ETH', 1, 100.50, '2026-01-02T03:04:05Z', NULL, 1),"
            f"('t2', 'eth', '{B}', '{A}', 'ETH', 1, 20.25, '2026-02-03T04:05:06Z', NULL, 1)"
        )
        con.execute(f"INSERT INTO subject_wallets VALUES ('S-1', '{A}', 'eth', NULL, 1)")
    return node_dir


@pytest.fixture
def console(node_template: Path, tmp_path: Path) -> Iterator[Console]:
    import shutil

    node_dir = tmp_path / "EE"
    shutil.copytree(node_template, node_dir)
    sessions = SessionStore()
    with TestClient(create_app(ConsoleSettings(node_dir), sessions)) as client:
        yield Console(node_dir, client, sessions)


def test_nothing_is_served_without_a_session(console: Console) -> None:
    for path in ("/requests", "/audit", "/policy", "/static/console.css", "/"):
        answer = console.client.get(path, follow_redirects=False)
        assert answer.status_code == 401, path
        assert "open the url printed by" in answer.text.lower()
    for path in ("/api/session", "/api/requests", "/api/audit", "/api/budgets"):
        answer = console.client.get(path)
        assert answer.status_code == 401 and "fedtrace console" in answer.json()["error"]
    answer = console.client.post("/api/requests/RQ-0000000000/approve")
    assert answer.status_code == 401
    assert console.client.get("/", params={"token": ""}).status_code == 401


def test_the_token_opens_one_session_and_cannot_be_reused(console: Console) -> None:
    wrong = console.client.get("/?token=not-the-token", follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE_NAME not in wrong.headers.get("set-cookie", "")
    answer = console.client.get(f"/?token={console.sessions.start_token}", follow_redirects=False)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert console.sessions.start_token not in cookie
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert console.client.get("/requests").status_code == 200

    other = TestClient(console.client.app)
    again = other.get(f"/?token={console.sessions.start_token}", follow_redirects=False)
    assert again.status_code == 401 and COOKIE_NAME not in again.headers.get("set-cookie", "")
    assert other.get("/api/session").status_code == 401
    forged = TestClient(console.client.app, cookies={COOKIE_NAME: "guess"})
    assert forged.get("/api/requests").status_code == 401


def test_state_changes_need_the_csrf_token(console: Console) -> None:
    request_id = submit(console.node_dir)
    csrf = console.sign_in()
    url = f"/api/requests/{request_id}/approve"
    assert console.client.post(url).status_code == 403
    assert console.client.post(url, headers={"X-CSRF-Token": csrf[:-1] + "x"}).status_code == 403
    refused = console.client.post(
        f"/api/requests/{request_id}/refuse", json={"reason": "no"}, headers={"X-CSRF-Token": ""}
    )
    assert refused.status_code == 403
    form = console.client.post(
        f"/requests/{request_id}/approve", data={"csrf": "forged"}, follow_redirects=False
    )
    assert form.status_code == 403
    [pending] = console.client.get("/api/requests", params={"state": "pending"}).json()["requests"]
    assert pending["id"] == request_id and pending["state"] == "pending"


def test_approve_through_the_api_is_audited_with_the_session(console: Console) -> None:
    request_id = submit(console.node_dir)
    csrf = console.sign_in()
    session_id = console.client.get("/api/session").json()["session"]
    listed = console.client.get("/api/requests", params={"state": "pending"}).json()["requests"]
    [found] = [r for r in listed if r["id"] == request_id]
    for key in ("id", "state", "kind", "partner", "case", "deadline"):
        assert key in found
    assert (found["state"], found["kind"], found["partner"], found["case"]) == (
        "pending",
        "disclose",
        "FR",
        "CASE-1",
    )
    assert found["deadline"] and found["fields_asked"] == list(FIELDS)

    headers = {"X-CSRF-Token": csrf}
    url = f"/api/requests/{request_id}/approve"
    assert console.client.post(url, content=b"[1]", headers=headers).status_code == 400
    assert console.client.post(url, content=b"{", headers=headers).status_code == 400
    bad = console.client.post(url, json={"fields": "tx_count"}, headers=headers)
    assert bad.status_code == 400
    not_asked = console.client.post(url, json={"fields": ["total_in_eur"]}, headers=headers)
    assert not_asked.status_code == 400 and "did not ask for total_in_eur" in not_asked.text
    none = console.client.post(url, json={"fields": []}, headers=headers)
    assert none.status_code == 400
    unknown = console.client.post("/api/requests/RQ-0000000000/approve", json={}, headers=headers)
    assert unknown.status_code == 404

    answer = console.client.post(
        url, json={"fields": ["tx_count"], "reason": "case agreed"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    decided = answer.json()
    assert decided["id"] == request_id and decided["state"] == "partly-approved"
    assert decided["fields_disclosed"] == ["tx_count"]
    assert decided["fields_withheld"] == ["first_seen", "linked_subjects"]
    assert console.client.post(url, json={}, headers=headers).status_code == 409

    [entry] = [
        e
        for e in entries(console.node_dir / AUDIT_DIR)
        if e.get("event") == "request-approved" and e.get("request") == request_id
    ]
    # The session names the decider in the trail only; the partner's record keeps the words.
    assert session_id in entry["officer"] and entry["reason"] == "case agreed"
    assert session_id not in decided["decision_reason"]
    trail = (console.node_dir / AUDIT_DIR / "audit.jsonl").read_text()
    assert console.sessions.start_token not in trail and csrf not in trail
    audit = console.client.get("/api/audit", params={"case": "CASE-1"}).json()
    assert audit["verification"]["ok"] is True
    assert any(e.get("request") == request_id for e in audit["entries"])


def test_refuse_needs_a_reason_and_is_final(console: Console) -> None:
    request_id = submit(console.node_dir, kind="preserve")
    headers = {"X-CSRF-Token": console.sign_in()}
    url = f"/api/requests/{request_id}/refuse"
    assert console.client.post(url, headers=headers).status_code == 400
    assert console.client.post(url, json={"reason": "  "}, headers=headers).status_code == 400
    assert console.client.post(url, json={"reason": 3}, headers=headers).status_code == 400
    answer = console.client.post(url, json={"reason": "no legal basis"}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "refused"
    assert answer.json()["decision_reason"] == "no legal basis"
    again = console.client.post(url, json={"reason": "again"}, headers=headers)
    assert again.status_code == 409
    approve = console.client.post(f"/api/requests/{request_id}/approve", headers=headers)
    assert approve.status_code == 409
    assert console.client.get("/api/requests", params={"state": "pending"}).json()["requests"] == []
    assert console.client.get("/api/requests", params={"state": "nonsense"}).status_code == 400
    events = [e.get("event") for e in entries(console.node_dir / AUDIT_DIR)]
    assert events.count("request-refused") == 1


def test_the_forms_decide_and_escape_everything(console: Console) -> None:
    first = submit(console.node_dir, case=HOSTILE_CASE)
    second = submit(console.node_dir, case="CASE-2")
    csrf = console.sign_in()
    page = console.client.get("/requests")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;[/]" in page.text
    assert "<script>" not in page.text
    assert first in page.text and second in page.text
    assert f'name="csrf" value="{csrf}"' in page.text

    answer = console.client.post(
        f"/requests/{first}/approve",
        data={"csrf": csrf, "fields": ["tx_count", "first_seen"], "reason": "<b>ok</b>"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/requests"
    page = console.client.get("/requests").text
    assert f"{first}: partly approved; disclosed tx_count, first_seen" in page
    assert "&lt;b&gt;ok&lt;/b&gt;" in page and "<b>ok</b>" not in page
    assert console.client.get("/requests").text.count("partly approved; disclosed") == 0

    empty = console.client.post(
        f"/requests/{second}/refuse", data={"csrf": csrf, "reason": ""}, follow_redirects=True
    )
    assert "a refusal needs its reason" in empty.text
    console.client.post(f"/requests/{second}/refuse", data={"csrf": csrf, "reason": "not enough"})
    states = {r["id"]: r["state"] for r in console.client.get("/api/requests").json()["requests"]}
    assert states == {first: "partly-approved", second: "refused"}

    audit = console.client.get("/audit", params={"case": HOSTILE_CASE})
    assert audit.status_code == 200 and "Intact:" in audit.text
    assert "&lt;script&gt;" in audit.text and "<script>" not in audit.text
    bad_since = console.client.get("/audit", params={"since": "yesterday"})
    assert "is not a date" in bad_since.text
    assert console.client.get("/api/audit", params={"since": "yesterday"}).status_code == 400


def test_a_freeze_is_approved_then_released_through_api_and_form(console: Console) -> None:
    first = submit(console.node_dir, kind="freeze")
    second = submit(console.node_dir, kind="freeze")
    csrf = console.sign_in()
    headers = {"X-CSRF-Token": csrf}
    early = console.client.post(
        f"/api/requests/{first}/release", json={"reason": "x"}, headers=headers
    )
    assert early.status_code == 409 and "not a freeze in force" in early.json()["error"]
    approved = console.client.post(f"/api/requests/{first}/approve", json={}, headers=headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "frozen" and approved.json()["frozen_until"]
    url = f"/api/requests/{first}/release"
    assert console.client.post(url, json={"reason": "x"}).status_code == 403  # no CSRF token
    assert console.client.post(url, json={"reason": " "}, headers=headers).status_code == 400
    released = console.client.post(url, json={"reason": "seized"}, headers=headers)
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "released"
    assert released.json()["release_reason"] == "seized"
    assert console.client.post(url, json={"reason": "again"}, headers=headers).status_code == 409

    console.client.post(f"/requests/{second}/approve", data={"csrf": csrf, "reason": ""})
    page = console.client.get("/requests").text
    assert f'action="/requests/{second}/release"' in page and "EUR 40,000" in page
    done = console.client.post(
        f"/requests/{second}/release",
        data={"csrf": csrf, "reason": "lifted"},
        follow_redirects=True,
    )
    assert f"{second}: released " in done.text
    events = [
        e["event"]
        for e in entries(console.node_dir / AUDIT_DIR)
        if e.get("request") in (first, second)
    ]
    assert events == ["request-frozen", "request-released", "request-frozen", "request-released"]


def test_policy_budgets_and_datasets(console: Console) -> None:
    console.sign_in()
    policy = console.client.get("/api/policy").json()
    assert policy["version"] == "ee-console-1" and policy["last_change"] is None
    [explanation] = policy["explanations"]
    assert explanation["partner"] == "FR" and "Dataset wallets" in explanation["text"]
    page = console.client.get("/policy").text
    assert "What FR may learn" in page and "None: the audit trail records no policy reload" in page

    budgets = console.client.get("/api/budgets").json()["budgets"]
    assert {
        (b["partner"], b["dataset"], b["limit"], b["used"], b["of"], b["remaining"])
        for b in budgets
    } == {("FR", "wallets", "queries", 0, 50, 50)}
    assert "queries" in console.client.get("/budgets").text

    datasets = console.client.get("/api/datasets").json()
    assert [d["name"] for d in datasets["datasets"]] == ["wallets", "subjects"]
    assert datasets["tables"]["transactions"] == 2
    assert all(d["epoch"] is None for d in datasets["datasets"])
    page = console.client.get("/datasets").text
    assert "no epoch yet" in page and "linked_subjects" in page
    assert re.search(r"secret", json.dumps(datasets)) is None


def test_listening_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    assert plan_listen("127.0.0.1:0", None, None).loopback
    assert plan_listen("[::1]:0", None, None).url(8080, "t") == "http://[::1]:8080/?token=t"
    with pytest.raises(ConfigError, match="not a loopback address.*--tls-cert PEM"):
        plan_listen("0.0.0.0:8080", None, None)
    with pytest.raises(ConfigError, match="go together"):
        plan_listen("0.0.0.0:8080", tmp_path / "cert.pem", None)
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    plan = plan_listen("0.0.0.0:8443", tmp_path / "cert.pem", tmp_path / "key.pem")
    assert not plan.loopback and plan.url(8443, "t").startswith("https://0.0.0.0:8443/")
    assert plan.allowed_hosts() == ()
    assert "127.0.0.2" in plan_listen("127.0.0.2:0", None, None).allowed_hosts()


def test_loopback_refuses_foreign_host_headers_and_signs_out(console: Console) -> None:
    sessions = SessionStore()
    app = create_app(ConsoleSettings(console.node_dir, allowed_hosts=("127.0.0.1",)), sessions)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        token = {"token": sessions.start_token}
        rebound = client.get("/", params=token, headers={"host": "evil.example"})
        assert rebound.status_code == 400 and not sessions.spent
        assert client.get("/", params=token).status_code == 200
        csrf = client.get("/api/session").json()["csrf"]
        assert client.post("/signout", data={"csrf": "x"}).status_code == 403
        out = client.post("/signout", data={"csrf": csrf})
        assert out.status_code == 200 and "Signed out" in out.text
        assert client.get("/api/session").status_code == 401


def test_epochs_usage_and_the_last_policy_change(console: Console) -> None:
    import hashlib

    from fedtrace.pki import read_key_pem
    from node.audit import AuditLog
    from node.epoch import current_epoch

    config = load_node_config(console.node_dir)
    database = NodeDatabase(config.database)
    wallets = config.dataset("wallets")
    assert wallets is not None
    epoch = current_epoch(database, wallets, config.epoch_hours)
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    with database.session() as con:
        con.execute(
            "CREATE TABLE IF NOT EXISTS policy_usage (request_id VARCHAR PRIMARY KEY, partner "
            "VARCHAR NOT NULL, dataset VARCHAR NOT NULL, kind VARCHAR NOT NULL, charged_at_ms "
            "BIGINT NOT NULL, items BIGINT NOT NULL, epsilon DOUBLE NOT NULL)"
        )
        con.execute(
            "INSERT INTO policy_usage VALUES ('r1', 'FR', 'wallets', 'match', ?, 7, 0),"
            "('r2', 'FR', 'wallets', 'match', ?, 3, 0), ('old', 'FR', 'wallets', 'match', ?, 1, 0)",
            [now_ms - 3_600_000, now_ms - 60_000, now_ms - 2 * 86_400_000],
        )
    old_text = POLICY.replace("ee-console-1", "ee-console-0").replace('"officer"', '"automatic"')
    (console.node_dir / "policy.toml.ee-console-0").write_text(old_text)
    AuditLog(
        console.node_dir / AUDIT_DIR,
        read_key_pem(config.tls.key),
        config.tls.cert.read_bytes(),
    ).append(
        "policy-loaded",
        {
            "policy_version": "ee-console-1",
            "policy_sha256": hashlib.sha256(POLICY.encode()).hexdigest(),
            "previous_version": "ee-console-0",
            "previous_sha256": hashlib.sha256(old_text.encode()).hexdigest(),
            "outcome": "loaded",
            "warnings": ["<i>careful</i>"],
        },
    )
    console.sign_in()

    [wallet_set, _] = console.client.get("/api/datasets").json()["datasets"]
    assert wallet_set["epoch"]["epoch_id"] == epoch.epoch_id
    assert wallet_set["epoch"]["item_count"] == 2 and wallet_set["epoch"]["state"] == "current"
    assert epoch.epoch_id[:12] in console.client.get("/datasets").text

    [line] = console.client.get("/api/budgets").json()["budgets"]
    assert (line["used"], line["of"], line["remaining"]) == (2, 50, 48)
    expected = dt.datetime.fromtimestamp((now_ms - 3_600_000 + 86_400_000) / 1000, dt.UTC)
    assert line["frees_at"] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")

    change = console.client.get("/api/policy").json()["last_change"]
    assert (change["previous_version"], change["version"]) == ("ee-console-0", "ee-console-1")
    assert "approval: automatic → officer (tighter" in change["diff"]
    page = console.client.get("/policy").text
    assert "approval: automatic → officer" in page and "&lt;i&gt;careful&lt;/i&gt;" in page
