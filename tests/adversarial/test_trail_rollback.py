"""A node that rewrites its history behind heads it signed: restored, truncated, rewritten, wiped.

A partner keeps the signed audit heads the node sent with its answers (`fedtrace
audit heads`); `fedtrace audit verify NODE_DIR --heads HEADS.json` then catches a
trail that no longer holds them, even when the trail is consistent in itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coordinator.heads import head_entry, heads_document
from fedtrace.audit_head import SignedHead
from fedtrace.cli import main as fedtrace_main
from fedtrace.pki import sign
from fedtrace.v1 import node_pb2
from node.audit import AUDIT_DIR, HEAD_FILE, TRAIL_FILE, canonical_json, entry_hash, head_digest
from tests.adversarial.conftest import Stubs, Target, match_stream

ROLLED_BACK = "trail rolled back or truncated behind a signed head held by a partner"


def _answer_head(stubs: Stubs) -> SignedHead:
    """A match answered; the head its trailer carries."""
    messages = list(stubs.node.Evaluate(match_stream(2), timeout=30))
    trailer = messages[-1].trailer
    assert trailer.HasField("audit_head")
    return SignedHead.from_proto(trailer.audit_head)


def _collect(target: Target, count: int) -> list[SignedHead]:
    """Serve, answer `count` matches and one GetInfo; every head the partner received."""
    with target.served() as (_, stubs):
        heads = [_answer_head(stubs) for _ in range(count)]
        info = stubs.node.GetInfo(node_pb2.GetInfoRequest(), timeout=30)
        heads.append(SignedHead.from_proto(info.audit_head))
    return heads


def _heads_file(target: Target, heads: list[SignedHead]) -> Path:
    cert = target.config.tls.cert.read_text()
    path = target.root / "HEADS.json"
    document = heads_document([head_entry(h, cert) for h in heads], [])
    path.write_text(json.dumps(document))
    return path


def _verify(target: Target, heads: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = fedtrace_main(["audit", "verify", str(target.node_dir), "--heads", str(heads)])
    return code, capsys.readouterr().out


def test_heads_grow_with_every_answer_and_verify(target: Target) -> None:
    heads = _collect(target, 2)
    cert = target.config.tls.cert.read_bytes()
    assert all(h.jurisdiction == "EE" and h.verifies(cert) for h in heads)
    assert heads[0].entries < heads[1].entries < heads[2].entries
    lines = (target.node_dir / AUDIT_DIR / TRAIL_FILE).read_text().splitlines()
    entry = json.loads(lines[heads[0].entries - 1])
    assert entry["event"] == "query" and entry["outcome"] == "answered"  # the answer's own entry
    assert entry["hash"] == heads[0].head_sha256.hex()


def test_an_honest_trail_holds_every_head(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = _heads_file(target, _collect(target, 2))
    code, out = _verify(target, heads, capsys)
    assert code == 0, out
    assert "audit trail intact" in out and "3 signed heads" in out


def test_a_node_dir_restored_from_an_earlier_copy_is_caught(
    target: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    early = _collect(target, 1)
    backup = tmp_path / "EE-backup"
    shutil.copytree(target.node_dir, backup)  # the node directory before the later queries
    later = _collect(target, 2)
    heads = _heads_file(target, early + later)
    shutil.rmtree(target.node_dir)
    shutil.copytree(backup, target.node_dir)  # restored: trail, signed head and database
    assert fedtrace_main(["audit", "verify", str(target.node_dir)]) == 0  # consistent in itself
    capsys.readouterr()
    code, out = _verify(target, heads, capsys)
    assert code == 1
    assert f"NOT intact: {ROLLED_BACK}: head of {later[-1].entries} entries" in out
    assert f"trail has {early[-1].entries} entries" in out  # the copy's last entry: a GetInfo


def test_a_truncated_trail_is_caught(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    heads = _heads_file(target, _collect(target, 2))
    trail = target.node_dir / AUDIT_DIR / TRAIL_FILE
    lines = trail.read_text().splitlines(keepends=True)
    trail.write_text("".join(lines[:3]))
    code, out = _verify(target, heads, capsys)
    assert code == 1 and ROLLED_BACK in out and "trail has 3 entries" in out


def test_a_rewritten_and_re_signed_entry_is_caught(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = _collect(target, 2)
    path = _heads_file(target, heads)
    directory = target.node_dir / AUDIT_DIR
    key = target.config.tls.key.read_bytes()
    entries = [json.loads(line) for line in (directory / TRAIL_FILE).read_text().splitlines()]
    rewrite = heads[0].entries  # the first answer's entry becomes a refusal
    entries[rewrite - 1]["outcome"] = "refused"
    previous = entries[rewrite - 2]["hash"]
    for entry in entries[rewrite - 1 :]:  # re-chained and re-signed with the node's own key
        entry["prev"] = previous
        entry["hash"] = entry_hash(entry)
        entry["signature"] = sign(key, bytes.fromhex(entry["hash"])).hex()
        previous = entry["hash"]
    (directory / TRAIL_FILE).write_text("".join(canonical_json(e).decode() + "\n" for e in entries))
    head = json.loads((directory / HEAD_FILE).read_text())
    head["last_hash"] = previous
    head["signature"] = sign(key, head_digest(head)).hex()
    (directory / HEAD_FILE).write_text(canonical_json(head).decode() + "\n")
    assert fedtrace_main(["audit", "verify", str(target.node_dir)]) == 0  # consistent in itself
    capsys.readouterr()
    code, out = _verify(target, path, capsys)
    assert code == 1
    assert f"differs at entry {rewrite}" in out


def test_a_wiped_trail_is_caught(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    heads = _heads_file(target, _collect(target, 1))
    shutil.rmtree(target.node_dir / AUDIT_DIR)
    code, out = _verify(target, heads, capsys)
    assert code == 1
    assert "trail missing" in out  # the genesis anchor
    assert f"{ROLLED_BACK}" in out and "trail has 0 entries" in out


def test_getinfo_carries_a_head_signed_by_the_node_certificate(target: Target) -> None:
    """Any change to the head breaks its signature (the coordinator's check: test_audit_head)."""
    with target.served() as (_, stubs):
        info = stubs.node.GetInfo(node_pb2.GetInfoRequest(), timeout=30)
    head = SignedHead.from_proto(info.audit_head)
    assert head.verifies(bytes(info.certificate_pem))
    forged = SignedHead.from_dict({**head.to_dict(), "entries": head.entries - 1})
    assert not forged.verifies(bytes(info.certificate_pem))


def test_a_heads_file_that_does_not_parse_is_a_usage_error(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    target.state()
    bad = target.root / "BAD.json"
    bad.write_text('{"v": 1, "heads": [{"jurisdiction": "EE"}]}')
    assert fedtrace_main(["audit", "verify", str(target.node_dir), "--heads", str(bad)]) == 2
    assert "BAD.json: head 1: a held head lacks its certificate_pem" in capsys.readouterr().err
