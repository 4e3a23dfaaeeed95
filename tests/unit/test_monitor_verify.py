"""The monitor's recomputation and verdicts, on sealed openings made here (no node involved).

Each export is written the way `node monitor-export` writes it (docs/accountability.md);
the node-side path to it is tested in tests/adversarial/test_monitor_misuse.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from fedtrace import blinding, group, pki, psi
from fedtrace.aggregate import match_positions, position_tags
from fedtrace.bench import sealing as sealing_bench
from fedtrace.canonical import canonical_json
from fedtrace.cli import main
from fedtrace.items import item_bytes
from fedtrace.monitor import CONSISTENT, MISUSE, UNVERIFIABLE, load_monitor_key, read_export
from fedtrace.monitor.export import ExportError
from fedtrace.monitor.recompute import (
    additive_points,
    differing,
    honest_positions,
    indicator_finding,
    listed,
    multiplicative_points,
)
from fedtrace.monitor.verify import (
    MonitorKeyError,
    MonitorReport,
    check_monitor_key,
    verify_export,
)
from fedtrace.opening import (
    KIND_MATCH,
    Blinding,
    Opening,
    SealedOpening,
    Statement,
    monitor_public_key,
    points_digest,
    seal,
)


def _items(count: int, start: int = 0) -> list[bytes]:
    return [item_bytes("wallet", f"0x{n:040x}") for n in range(start, start + count)]


# --- recomputation ----------------------------------------------------------------------


def test_multiplicative_points_are_what_the_coordinator_sends() -> None:
    items = _items(5)
    scalar = group.random_scalar()
    expected = [group.exponentiate([group.hash_to_group(item)], scalar)[0] for item in items]
    assert multiplicative_points(items, scalar) == expected


def test_additive_points_are_what_a_pool_sends() -> None:
    items = _items(4)
    secret = group.random_scalar()
    binding = blinding.PoolBinding("EE", "wallets", "e1", blinding.blinding_point(secret))
    pool = blinding.prepare_pool(binding, 4)
    sent, entries = blinding.hash_and_blind(items, pool, binding)
    masks = [entry.scalar for entry in entries]
    assert additive_points(items, masks, binding.blinding_point) == sent


def test_differing_names_the_indices_and_refuses_other_lengths() -> None:
    assert differing([b"a", b"b", b"c"], [b"a", b"x", b"c"]) == [1]
    with pytest.raises(ValueError, match="recomputes 1 points; the node received 2"):
        differing([b"a"], [b"a", b"b"])


def test_honest_positions_are_the_rows_the_watchlist_matches() -> None:
    table_items = _items(40)
    node_key = group.random_scalar()
    table = psi.build_table(table_items, node_key)
    tags = position_tags(table)
    watchlist = _items(10, start=35)  # 35..39 held, 40..44 not
    scalar = group.random_scalar()
    blinded = multiplicative_points(watchlist, scalar)
    answer = psi.shuffled(psi.evaluate(blinded, node_key))
    held = set(group.blind_items(table_items[35:], node_key))
    expected = sorted(row for row, point in enumerate(table) if point in held)
    assert honest_positions(tags, answer, scalar) == expected
    assert len(expected) == 5
    unblinded = group.exponentiate(answer, group.invert_scalar(scalar))
    assert match_positions(tags, unblinded) == expected


def test_indicator_findings() -> None:
    honest = [1, 3]
    assert not indicator_finding([0, 1, 0, 1, 0], 5, honest).misuse
    weighted = indicator_finding([0, 2, 0, 1, 0], 5, honest)
    assert weighted.misuse and weighted.not_binary == (1,)
    selective = indicator_finding([1, 1, 0, 1, 0], 5, honest)
    assert selective.misuse and selective.outside == (0,)
    fewer = indicator_finding([0, 0, 0, 1, 0, 7], 5, honest)  # slot 5 is past the table
    assert not fewer.misuse and fewer.missing == (1,)


def test_listed_shortens_long_lists() -> None:
    assert listed([1, 2]) == "1, 2"
    assert listed(list(range(60))).endswith("… (60 in all)")


# --- verdicts ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Keys:
    root: Path
    investigator_key: bytes
    investigator_cert: bytes
    monitor_cert: bytes
    monitor_key_file: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("monitor-pki")
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "FR", name="FR", role=pki.ROLE_INVESTIGATOR)
    pki.issue(root / "ca", root / "OVS", name="OVS", role=pki.ROLE_MONITOR)
    pki.issue(root / "ca", root / "OTHER", name="OTHER", role=pki.ROLE_MONITOR)
    return Keys(
        root,
        pki.read_key_pem(root / "FR" / "key.pem"),
        (root / "FR" / "cert.pem").read_bytes(),
        (root / "OVS" / "cert.pem").read_bytes(),
        root / "OVS" / "key.pem",
    )


def sealed_match(
    keys: Keys,
    items: list[bytes],
    sent: list[bytes],
    opening: Opening,
    *,
    monitor_cert: bytes | None = None,
) -> SealedOpening:
    """What the client seals for `sent` points, claiming `opening`."""
    statement = Statement(
        kind=KIND_MATCH,
        monitor="OVS",
        node="EE",
        dataset="wallets",
        epoch_id="e1",
        case_ref="C-1",
        legal_basis="MLA",
        investigator="FR",
        nonce=os.urandom(16),
        timestamp_unix_ms=int(time.time() * 1000),
        item_count=len(sent),
        points_sha256=points_digest(sent),
    )
    key = monitor_public_key(monitor_cert or keys.monitor_cert)
    return seal(statement, opening, key, keys.investigator_key)


def export_row(
    keys: Keys, sealed: SealedOpening, sent: list[bytes], seq: int, **changes: Any
) -> dict[str, Any]:
    """One queries.jsonl line as the node writes it."""
    row = {
        "audit_seq": seq,
        "time": "2026-11-30T06:00:00Z",
        "partner": "FR",
        "case_ref": "C-1",
        "kind": KIND_MATCH,
        "dataset": "wallets",
        "epoch_id": "e1",
        "statement": sealed.statement.hex(),
        "signature": sealed.signature.hex(),
        "enc": sealed.enc.hex(),
        "ciphertext": sealed.ciphertext.hex(),
        "investigator_cert_pem": keys.investigator_cert.decode(),
        "received_points": b"".join(sent).hex(),
        "answer_points": "",
        "indicator_ciphertexts": [],
        "blinding_point": "",
        "node_points_sha256": points_digest(sent).hex(),
        "opening_sha256": sealed.digest().hex(),
    }
    row.update(changes)
    return row


def write_export(directory: Path, rows: list[dict[str, Any]]) -> Path:
    directory.mkdir()
    manifest = {
        "v": 1,
        "node": "EE",
        "monitor": "OVS",
        "exported_at": "2026-11-30T07:00:00Z",
        "count": len(rows),
        "epochs": {},
    }
    (directory / "manifest.json").write_text(canonical_json(manifest).decode())
    (directory / "queries.jsonl").write_text(
        "".join(canonical_json(row).decode() + "\n" for row in rows)
    )
    return directory


def honest(keys: Keys, items: list[bytes], seq: int) -> dict[str, Any]:
    scalar = group.random_scalar()
    sent = multiplicative_points(items, scalar)
    opening = Opening(KIND_MATCH, tuple(items), Blinding("multiplicative", scalar=scalar))
    return export_row(keys, sealed_match(keys, items, sent, opening), sent, seq)


def tagged(keys: Keys, items: list[bytes], seq: int, tag_at: list[int]) -> dict[str, Any]:
    """Points with a per-item scalar at `tag_at` (linkable answers), sealed as honest."""
    scalar = group.random_scalar()
    sent = multiplicative_points(items, scalar)
    for index in tag_at:
        sent[index] = multiplicative_points([items[index]], group.random_scalar())[0]
    opening = Opening(KIND_MATCH, tuple(items), Blinding("multiplicative", scalar=scalar))
    return export_row(keys, sealed_match(keys, items, sent, opening), sent, seq)


def _verify(keys: Keys, directory: Path) -> MonitorReport:
    key = load_monitor_key(pki.read_key_pem(keys.monitor_key_file))
    return verify_export(read_export(directory), key)


def test_honest_and_tagged_queries(keys: Keys, tmp_path: Path) -> None:
    rows = [
        honest(keys, _items(6), 1),
        tagged(keys, _items(6), 2, [1, 4]),
        honest(keys, _items(3, 50), 3),
    ]
    report = _verify(keys, write_export(tmp_path / "x", rows))
    assert [v.status for v in report.verdicts] == [CONSISTENT, MISUSE, CONSISTENT]
    assert report.verdicts[1].points == (1, 4)
    assert report.as_json()["checked"] == 3 and report.misuse == 1
    evidence = report.as_json()["queries"][1]["evidence"]
    assert evidence["statement"] == rows[1]["statement"]
    assert evidence["signature"] == rows[1]["signature"]


def test_additive_blinding_verifies(keys: Keys, tmp_path: Path) -> None:
    items = _items(5)
    binding = blinding.PoolBinding(
        "EE", "wallets", "e1", blinding.blinding_point(b"\x07" + bytes(31))
    )
    sent, entries = blinding.hash_and_blind(items, blinding.prepare_pool(binding, 5), binding)
    claimed = Blinding(
        "additive", blinding_point=binding.blinding_point, r=tuple(e.scalar for e in entries)
    )
    sealed = sealed_match(keys, items, sent, Opening(KIND_MATCH, tuple(items), claimed))
    row = export_row(keys, sealed, sent, 1, blinding_point=binding.blinding_point.hex())
    sent_tagged = list(sent)
    sent_tagged[2] = group.add_points(sent[2], group.hash_to_group(b"tag"))
    sealed = sealed_match(keys, items, sent_tagged, Opening(KIND_MATCH, tuple(items), claimed))
    bad = export_row(keys, sealed, sent_tagged, 2, blinding_point=binding.blinding_point.hex())
    report = _verify(keys, write_export(tmp_path / "x", [row, bad]))
    assert [(v.status, v.points) for v in report.verdicts] == [(CONSISTENT, ()), (MISUSE, (2,))]


def test_seals_that_do_not_open_to_what_was_sent(keys: Keys, tmp_path: Path) -> None:
    items = _items(4)
    flipped = honest(keys, items, 1)
    ciphertext = bytearray(bytes.fromhex(flipped["ciphertext"]))
    ciphertext[10] ^= 1
    flipped["ciphertext"] = bytes(ciphertext).hex()
    flipped["opening_sha256"] = (
        SealedOpening(
            "OVS",
            "P256-SHA256-AES128GCM",
            bytes.fromhex(flipped["enc"]),
            bytes(ciphertext),
            bytes.fromhex(flipped["statement"]),
            bytes.fromhex(flipped["signature"]),
        )
        .digest()
        .hex()
    )
    # A client that seals another watchlist than the one it blinds.
    scalar = group.random_scalar()
    sent = multiplicative_points(items, scalar)
    other = Opening(KIND_MATCH, tuple(_items(4, 900)), Blinding("multiplicative", scalar=scalar))
    elsewhere = export_row(keys, sealed_match(keys, items, sent, other), sent, 2)
    # Sealed to another monitor's key.
    mine = Opening(KIND_MATCH, tuple(items), Blinding("multiplicative", scalar=scalar))
    other_cert = (keys.root / "OTHER" / "cert.pem").read_bytes()
    stray = export_row(
        keys, sealed_match(keys, items, sent, mine, monitor_cert=other_cert), sent, 3
    )
    # A signature over another statement.
    forged = honest(keys, items, 4)
    forged["signature"] = honest(keys, items, 5)["signature"]
    report = _verify(keys, write_export(tmp_path / "x", [flipped, elsewhere, stray, forged]))
    assert [v.status for v in report.verdicts] == [UNVERIFIABLE] * 4
    reasons = [v.reason for v in report.verdicts]
    assert "does not open" in reasons[0] and "does not open" in reasons[2]
    assert "other items" in reasons[1] and report.verdicts[1].points == (0, 1, 2, 3)
    assert "signature does not verify" in reasons[3]
    assert report.misuse == 4


def test_the_node_digests_must_match_the_statement(keys: Keys, tmp_path: Path) -> None:
    row = honest(keys, _items(3), 1)
    row["node_points_sha256"] = "00" * 32
    other_bound = honest(keys, _items(3), 2)
    other_bound["opening_sha256"] = "11" * 32
    report = _verify(keys, write_export(tmp_path / "x", [row, other_bound]))
    assert "points digest" in report.verdicts[0].reason
    assert "audit trail binds another" in report.verdicts[1].reason


def test_case_and_since_select_queries(keys: Keys, tmp_path: Path) -> None:
    early = honest(keys, _items(2), 1)
    late = dict(honest(keys, _items(2), 2), time="2026-12-02T10:00:00Z")
    directory = write_export(tmp_path / "x", [early, late])
    key = load_monitor_key(pki.read_key_pem(keys.monitor_key_file))
    export = read_export(directory)
    since = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert [v.audit_seq for v in verify_export(export, key, since=since).verdicts] == [2]
    assert verify_export(export, key, case="C-2").verdicts == ()


# --- the command ------------------------------------------------------------------------


def test_command_exit_codes_and_output(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(keys.monitor_key_file)
    good = write_export(tmp_path / "good", [honest(keys, _items(3), 1)])
    assert main(["monitor", "verify", str(good), "--key", key]) == 0
    assert capsys.readouterr().out == "checked 1 queries: 1 consistent, 0 misuse\n"
    bad = write_export(
        tmp_path / "bad", [honest(keys, _items(3), 1), tagged(keys, _items(5), 7, [3])]
    )
    assert main(["monitor", "verify", str(bad), "--key", key]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("misuse: #7 FR case C-1 ") and "points 3:" in out[0]
    assert out[-1] == "checked 2 queries: 1 consistent, 1 misuse"
    assert main(["monitor", "verify", str(bad), "--key", key, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert {k: document[k] for k in ("checked", "consistent", "misuse")} == {
        "checked": 2,
        "consistent": 1,
        "misuse": 1,
    }
    assert document["queries"][1]["points"] == [3]


def test_command_usage_errors_are_one_line(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(keys.monitor_key_file)
    assert main(["monitor", "verify", str(tmp_path / "absent"), "--key", key]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    not_key = tmp_path / "cert.pem"
    not_key.write_bytes(keys.monitor_cert)
    not_key.chmod(0o600)
    good = write_export(tmp_path / "good", [honest(keys, _items(1), 1)])
    assert main(["monitor", "verify", str(good), "--key", str(not_key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedtrace: error: ") and err.count("\n") == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"v": 1, "count": 1}')
    (broken / "queries.jsonl").write_text("{not json\n")
    assert main(["monitor", "verify", str(broken), "--key", key]) == 2
    assert "queries.jsonl:1: not JSON" in capsys.readouterr().err
    with pytest.raises(ExportError):
        read_export(good / "manifest.json")


def test_a_key_that_is_not_the_exports_monitors_is_a_usage_error(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_export(tmp_path / "good", [honest(keys, _items(2), 1)])
    other = str(keys.root / "OTHER" / "key.pem")  # cert.pem beside it names OTHER
    assert main(["monitor", "verify", str(good), "--key", other]) == 2
    assert "this export is monitor OVS's; the key belongs to OTHER monitor" in (
        capsys.readouterr().err
    )
    lone = tmp_path / "lone" / "key.pem"  # no certificate beside it: nothing to compare
    lone.parent.mkdir()
    lone.write_bytes((keys.root / "OTHER" / "key.pem").read_bytes())
    lone.chmod(0o600)
    assert main(["monitor", "verify", str(good), "--key", str(lone)]) == 1
    captured = capsys.readouterr()
    assert "unverifiable: #1 FR" in captured.out
    assert "no sealed opening opened under" in captured.err


def test_check_monitor_key_compares_the_key_with_its_certificate(keys: Keys) -> None:
    key = load_monitor_key(pki.read_key_pem(keys.monitor_key_file))
    check_monitor_key(key, keys.monitor_cert, "OVS")
    other_key = load_monitor_key(pki.read_key_pem(keys.root / "OTHER" / "key.pem"))
    with pytest.raises(MonitorKeyError, match="does not belong"):
        check_monitor_key(other_key, keys.monitor_cert, "OVS")
    with pytest.raises(MonitorKeyError, match="belongs to FR investigator"):
        check_monitor_key(key, keys.investigator_cert, "OVS")


@pytest.mark.slow  # homomorphic encryption: a few seconds
def test_the_sealing_bench_runs_at_toy_sizes() -> None:
    figures = sealing_bench.measure((40,), rows=300)
    for mode in ("multiplicative", "additive"):
        row = figures["points"][f"{mode}-40"]
        assert row["opening_bytes"] > row["points_bytes"] and row["monitor_verify_ms"] > 0
    assert figures["indicator"]["opening_bytes"] > 1_000_000  # the HE secret key, in hex
