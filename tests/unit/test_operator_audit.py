"""`fedtrace audit show` for officers: --until, --limit, --follow, versions, partners, width."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.pki import init_ca
from node.audit import AUDIT_DIR, AuditLog, entries, render_entries
from node.audit.show import Filters, follow
from node.setup import init_node


@pytest.fixture()
def node_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    return tmp_path / "EE"


def _log(node_dir: Path) -> AuditLog:
    tls = node_dir / "tls"
    return AuditLog(
        node_dir / AUDIT_DIR, (tls / "key.pem").read_bytes(), (tls / "cert.pem").read_bytes()
    )


def _query(log: AuditLog, partner: str, case: str) -> None:
    log.append("query", {"peer": {"jurisdiction": partner}, "case_ref": case, "outcome": "ok"})


def _show(capsys: pytest.CaptureFixture[str], node_dir: Path, *more: str) -> list[str]:
    assert main(["audit", "show", str(node_dir), "--format", "json", *more]) == 0
    return [e.get("case_ref", "") for e in json.loads(capsys.readouterr().out)]


def test_until_and_limit(node_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(node_dir)
    for number in range(5):
        _query(log, "FR", f"C-{number}")
    assert _show(capsys, node_dir, "--until", "2000-01-01") == []
    assert _show(capsys, node_dir, "--until", "2999-12-31") == [f"C-{n}" for n in range(5)]
    assert _show(capsys, node_dir, "--limit", "2") == ["C-3", "C-4"]
    assert _show(capsys, node_dir, "--limit", "0") == []
    assert main(["audit", "show", str(node_dir), "--until", "soon"]) == 2
    assert capsys.readouterr().err == (
        "fedtrace: error: --until 'soon' is not a date such as 2026-11-25 or 2026-11-25T08:00Z\n"
    )


def test_partner_in_any_case_and_a_suggestion_when_nothing_matches(
    node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(node_dir)
    _query(log, "FR", "C-1")
    _query(log, "SG", "C-2")
    assert _show(capsys, node_dir, "--partner", "fr") == ["C-1"]
    assert main(["audit", "show", str(node_dir), "--partner", "fx"]) == 0
    assert capsys.readouterr().err == (
        "note: no audit entry names partner 'fx' (did you mean FR?); partners in the trail: "
        "FR, SG\n"
    )


def test_policy_loaded_rows_show_the_version(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    _log(node_dir).append("policy-loaded", {"policy_version": "2026-12-01.2", "outcome": "ok"})
    table = render_entries(entries(node_dir / AUDIT_DIR), "table")
    assert "policy 2026-12-01.2" in table


def test_tables_fit_columns_when_not_a_terminal(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _log(node_dir)
    log.append("query", {"peer": {"jurisdiction": "FR"}, "reason": "[bold]x[/bold] " * 20})
    monkeypatch.setenv("COLUMNS", "80")
    narrow = render_entries(entries(node_dir / AUDIT_DIR), "table")
    assert max(map(len, narrow.splitlines())) <= 80 and "[bold]x[/bold]" in narrow
    monkeypatch.delenv("COLUMNS")
    log.append("query", {"peer": {"jurisdiction": "FR"}, "case_ref": "C", "kind": "match"})
    default = render_entries(entries(node_dir / AUDIT_DIR), "table")
    assert max(map(len, default.splitlines())) <= 100


def test_follow_prints_new_entries_until_stopped(node_dir: Path) -> None:
    log = _log(node_dir)
    _query(log, "FR", "C-old")
    directory = node_dir / AUDIT_DIR
    out = io.StringIO()
    stop = threading.Event()
    follower = threading.Thread(
        target=follow,
        args=(directory, Filters(partner="fr"), "json", out.write, stop),
        kwargs={"after": len(entries(directory)), "poll_seconds": 0.02},
    )
    follower.start()
    try:
        _query(log, "SG", "C-other")
        _query(log, "FR", "C-new")
        deadline = time.monotonic() + 5
        while "C-new" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()
    assert [json.loads(line)["case_ref"] for line in out.getvalue().splitlines()] == ["C-new"]


def test_follow_on_the_command_line_ends_with_ctrl_c(
    node_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.audit import show

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(show, "follow", interrupted)
    _query(_log(node_dir), "FR", "C-1")
    assert main(["audit", "show", str(node_dir), "--follow", "--format", "json"]) == 0
    assert "C-1" in capsys.readouterr().out
