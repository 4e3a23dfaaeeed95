"""The audit trail: hash chain, signatures and signed head; each kind of tampering is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.pki import ROLE_NODE, init_ca, issue
from node.audit import HEAD_FILE, TRAIL_FILE, AuditLog, render_entries, select, verify_trail

ENTRIES = 6


@pytest.fixture()
def trail(tmp_path: Path) -> tuple[Path, bytes]:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "node", name="EE", role=ROLE_NODE)
    log = AuditLog(
        tmp_path / "audit",
        (tmp_path / "node" / "key.pem").read_bytes(),
        (tmp_path / "node" / "cert.pem").read_bytes(),
    )
    for number in range(ENTRIES):
        log.append(
            "query",
            {
                "peer": {"jurisdiction": "FR" if number % 2 else "SG"},
                "case_ref": f"C-{number}",
                "item_count": number,
                "outcome": "answered",
            },
        )
    return tmp_path / "audit", (tmp_path / "ca" / "ca.pem").read_bytes()


def _lines(directory: Path) -> list[str]:
    return (directory / TRAIL_FILE).read_text().splitlines()


def _write(directory: Path, lines: list[str]) -> None:
    (directory / TRAIL_FILE).write_text("".join(line + "\n" for line in lines))


def test_intact_trail_verifies(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    result = verify_trail(directory, ca_pem=ca, jurisdiction="EE")
    assert result.ok and result.entries == ENTRIES, result.problem
    first = json.loads(_lines(directory)[0])
    assert first["seq"] == 1 and first["prev"] == "0" * 64 and first["event"] == "query"


def test_edit_is_named(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    lines = _lines(directory)
    lines[2] = lines[2].replace('"item_count":2', '"item_count":9')
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and result.problem.startswith("entry 3 (line 3) was edited")


def test_edit_with_a_recomputed_hash_is_named(trail: tuple[Path, bytes]) -> None:
    from node.audit import entry_hash

    directory, ca = trail
    lines = _lines(directory)
    entry = json.loads(lines[1])
    entry["case_ref"] = "OTHER"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry)
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and "entry 2 (line 2) was edited or forged" in result.problem


def test_delete_is_named(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    lines = _lines(directory)
    del lines[3]
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and result.problem.startswith("entry 4 deleted")


def test_insert_of_a_copy_is_named(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    lines = _lines(directory)
    lines.insert(3, lines[1])
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and result.problem.startswith("entry 2 (line 4) was inserted")


def test_insert_of_a_forged_entry_is_named(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    lines = _lines(directory)
    lines.insert(2, '{"seq": 3, "note": "forged"}')
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and "line 3" in result.problem and "inserted" in result.problem


def test_reorder_is_named(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    lines = _lines(directory)
    lines[1], lines[2] = lines[2], lines[1]
    _write(directory, lines)
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and result.problem.startswith("entries reordered: line 2 holds entry 3")


def test_deleting_the_last_entries_is_detected_by_the_signed_head(
    trail: tuple[Path, bytes],
) -> None:
    directory, ca = trail
    _write(directory, _lines(directory)[:-2])
    result = verify_trail(directory, ca_pem=ca)
    assert not result.ok and result.problem.startswith("entries 5-6 deleted from the end")


def test_a_forged_or_missing_head_is_detected(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    head = json.loads((directory / HEAD_FILE).read_text())
    head["count"] = 4
    (directory / HEAD_FILE).write_text(json.dumps(head))
    assert "head" in verify_trail(directory, ca_pem=ca).problem
    (directory / HEAD_FILE).unlink()
    assert "head" in verify_trail(directory, ca_pem=ca).problem


def test_a_trail_signed_by_another_node_is_refused(trail: tuple[Path, bytes]) -> None:
    directory, ca = trail
    result = verify_trail(directory, ca_pem=ca, jurisdiction="FR")
    assert not result.ok and "not by node FR" in result.problem


def test_select_and_render(trail: tuple[Path, bytes]) -> None:
    from node.audit import entries

    directory, _ = trail
    chosen = select(entries(directory), partner="FR")
    assert [e["case_ref"] for e in chosen] == ["C-1", "C-3", "C-5"]
    assert select(entries(directory), case="C-2")[0]["item_count"] == 2
    csv_text = render_entries(chosen, "csv")
    assert csv_text.splitlines()[0].startswith("seq,time,event,partner")
    assert len(json.loads(render_entries(chosen, "json"))) == 3
    assert "C-3" in render_entries(chosen, "table")


def test_cli_audit_verify_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.setup import init_node

    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    log = AuditLog(
        tmp_path / "EE" / "audit",
        (tmp_path / "EE" / "tls" / "key.pem").read_bytes(),
        (tmp_path / "EE" / "tls" / "cert.pem").read_bytes(),
    )
    log.append("query", {"peer": {"jurisdiction": "FR"}, "case_ref": "C-9", "outcome": "refused"})
    log.append("query", {"peer": {"jurisdiction": "SG"}, "case_ref": "C-8", "outcome": "answered"})
    assert main(["audit", "verify", str(tmp_path / "EE")]) == 0
    assert "intact: 2 entries" in capsys.readouterr().out
    assert main(["audit", "show", str(tmp_path / "EE"), "--partner", "FR", "--format", "json"]) == 0
    assert [e["case_ref"] for e in json.loads(capsys.readouterr().out)] == ["C-9"]
    assert main(["audit", "show", str(tmp_path / "EE"), "--since", "2999-01-01"]) == 0
    assert "0 audit entries" in capsys.readouterr().out
    trail_file = tmp_path / "EE" / "audit" / TRAIL_FILE
    trail_file.write_text(trail_file.read_text().replace("C-9", "C-0"))
    assert main(["audit", "verify", str(tmp_path / "EE")]) == 1
    assert "entry 1 (line 1) was edited" in capsys.readouterr().out
