"""Items 4, 5 and part of 9: the trail is anchored outside itself, never extended when spliced,
its chain links are checked, and a trail the node cannot write refuses the query."""

from __future__ import annotations

import json
import logging
import shutil

import grpc
import pytest

from fedtrace.cli import main as fedtrace_main
from fedtrace.errors import ConfigError
from fedtrace.pki import sign
from node.audit import (
    AUDIT_DIR,
    HEAD_FILE,
    TRAIL_FILE,
    AuditError,
    AuditLog,
    entry_hash,
    verify_trail,
)
from node.audit.anchor import close_trail, load_anchor
from tests.adversarial.conftest import Target, run_match


def _log(target: Target) -> AuditLog:
    config = target.config
    return AuditLog(
        target.node_dir / AUDIT_DIR, config.tls.key.read_bytes(), config.tls.cert.read_bytes()
    )


def test_a_deleted_trail_is_reported_at_start_and_by_audit_verify(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    target.state()  # the first start records the genesis in node.duckdb
    shutil.rmtree(target.node_dir / AUDIT_DIR)
    with pytest.raises(ConfigError) as caught:
        target.state()
    assert "trail missing, the node recorded a genesis at" in str(caught.value)
    assert fedtrace_main(["audit", "verify", str(target.node_dir)]) == 1
    out = capsys.readouterr().out
    assert "NOT intact: trail missing, the node recorded a genesis at" in out


def test_a_replaced_trail_is_reported(target: Target) -> None:
    target.state()
    shutil.rmtree(target.node_dir / AUDIT_DIR)
    _log(target).append("node-started", {})  # a fresh, self-consistent trail
    result = verify_trail(target.node_dir / AUDIT_DIR, anchor=load_anchor(target.config.database))
    assert not result.ok and "the trail was replaced" in result.problem


def test_an_empty_trail_on_a_node_that_served_before_the_anchor_is_an_error(
    target: Target,
) -> None:
    target.state()
    with target.database.session() as con:
        con.execute("DELETE FROM meta WHERE key LIKE 'audit_%'")  # a node from before
    shutil.rmtree(target.node_dir / AUDIT_DIR)
    with pytest.raises(ConfigError) as caught:
        target.state()
    assert "database holds epochs" in str(caught.value)


def test_an_append_after_the_end_was_cut_is_refused_and_alerted(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    log = _log(target)
    for n in range(5):
        log.append("query", {"n": n})
    trail = target.node_dir / AUDIT_DIR / TRAIL_FILE
    lines = trail.read_text().splitlines(keepends=True)
    trail.write_text("".join(lines[:3]))  # entries 4-5 deleted
    with caplog.at_level(logging.CRITICAL), pytest.raises(AuditError):
        log.append("query", {"n": "routine"})
    assert any("ALERT" in r.getMessage() for r in caplog.records)
    assert len(trail.read_text().splitlines()) == 3  # nothing appended


def test_a_splice_with_an_old_signed_head_put_back_is_refused(target: Target) -> None:
    state = target.state()
    log = state.gate.audit
    directory = target.node_dir / AUDIT_DIR
    log.append("query", {"n": 1})
    old_head = (directory / HEAD_FILE).read_bytes()
    keep = (directory / TRAIL_FILE).read_text()
    log.append("query", {"n": 2})
    log.append("query", {"n": 3})
    close_trail(log, state.database)  # the node stops: it records its high-water mark
    (directory / TRAIL_FILE).write_text(keep)  # the last two entries cut …
    (directory / HEAD_FILE).write_bytes(old_head)  # … and the head of that moment put back
    with pytest.raises(AuditError):  # the running node notices on its next append
        log.append("query", {"n": "routine"})
    with pytest.raises(ConfigError) as caught:  # and a restart does not forget
        target.state()
    assert "cut back" in str(caught.value)


def test_audit_verify_catches_entries_deleted_before_a_routine_append(target: Target) -> None:
    log = _log(target)
    for n in range(7):
        log.append("query", {"n": n})
    trail = target.node_dir / AUDIT_DIR / TRAIL_FILE
    lines = trail.read_text().splitlines(keepends=True)
    trail.write_text("".join(lines[:3] + lines[5:]))  # entries 4-5 deleted in the middle
    log.append("query", {"n": "routine"})  # the end still matches the head: appended
    result = verify_trail(target.node_dir / AUDIT_DIR)
    assert not result.ok and "entries 4-5 deleted" in result.problem


def test_a_broken_chain_link_is_detected_even_when_hash_and_signature_verify(
    target: Target,
) -> None:
    log = _log(target)
    for n in range(4):
        log.append("query", {"n": n})
    trail = target.node_dir / AUDIT_DIR / TRAIL_FILE
    lines = trail.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["prev"] = "ab" * 32  # re-sealed with the node's own key: only the link is wrong
    entry["hash"] = entry_hash(entry)
    entry["signature"] = sign(
        target.config.tls.key.read_bytes(), bytes.fromhex(entry["hash"])
    ).hex()
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    trail.write_text("\n".join(lines) + "\n")
    result = verify_trail(target.node_dir / AUDIT_DIR)
    assert not result.ok and "does not follow the entry before it" in result.problem


def test_a_query_the_node_cannot_audit_is_refused_internal(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = target.state()
    with target.served(state) as (_, stubs):

        def fail(*args: object, **kwargs: object) -> dict[str, object]:
            raise AuditError("disk full")

        monkeypatch.setattr(state.gate.audit, "append", fail)
        assert run_match(stubs) == grpc.StatusCode.INTERNAL
        monkeypatch.undo()
        assert run_match(stubs) == grpc.StatusCode.OK
    with state.database.session() as con:
        charged = con.execute("SELECT count(*) FROM policy_usage").fetchone()
    assert charged is not None and charged[0] == 1  # the refused query charged nothing
