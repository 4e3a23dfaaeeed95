"""End to end: three real nodes over mTLS, the real coordinator, checked against a Python oracle."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fedtrace.identifiers import canonical_address
from fedtrace.pki import verify_signature
from fedtrace.transcript import Transcript

from .conftest import Federation, fedtrace, wait_until

pytestmark = pytest.mark.slow


def _watchlist(federation: Federation, name: str = "watchlist.txt", size: int = 120) -> Path:
    path = federation.root / name
    path.write_text("\n".join(federation.data.watchlist(size)) + "\n")
    return path


def _oracle(federation: Federation, watchlist: Path, code: str) -> list[str]:
    """Plain-Python intersection, in watchlist order, of canonical identifiers."""
    seen: list[str] = []
    for line in watchlist.read_text().splitlines():
        canonical = canonical_address(line.strip())
        if canonical not in seen:
            seen.append(canonical)
    return [item for item in seen if item in federation.data.wallets[code]]


def _by_node(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {r["node"]: r for r in report["results"]}  # type: ignore[index,union-attr]


def test_match_equals_oracle_and_respects_each_policy(federation: Federation) -> None:
    watchlist = _watchlist(federation)
    status, report, stderr = federation.match(watchlist)
    assert report is not None, stderr
    assert status == 3  # SG denies FR: the query ran, not every node answered ok
    assert set(report) >= {"case", "query", "dataset", "results"}
    assert (report["case"], report["query"], report["dataset"]) == ("CASE-7", "match", "wallets")
    results = _by_node(report)

    ee = results["EE"]
    expected_ee = _oracle(federation, watchlist, "EE")
    assert expected_ee, "the planted network must reach EE"
    assert ee["status"] == "ok" and ee["disclosure"] == "membership"
    assert ee["matched"] == expected_ee
    assert ee["match_count"] == len(expected_ee)
    assert ee["policy_version"] == "ee-1"

    fr = results["FR"]  # cardinality only: a count, never the items
    assert fr["status"] == "ok" and fr["disclosure"] == "cardinality"
    assert fr["match_count"] == len(_oracle(federation, watchlist, "FR"))
    assert "matched" not in fr

    sg = results["SG"]
    assert sg["status"] == "denied"
    assert "grants FR no match access" in sg["reason"]  # type: ignore[operator]


def test_each_answer_carries_a_valid_node_signature(federation: Federation) -> None:
    _, report, _ = federation.match(_watchlist(federation))
    assert report is not None
    ee = _by_node(report)["EE"]
    signature = ee["signature"]
    assert isinstance(signature, dict)
    transcript = Transcript.from_json(signature["transcript"])
    assert transcript.digest().hex() == signature["transcript_sha256"]
    assert transcript.jurisdiction == "EE" and transcript.case_ref == "CASE-7"
    assert transcript.investigator == "FR" and transcript.legal_basis == "MLA"
    cert = signature["certificate_pem"].encode()
    assert verify_signature(cert, transcript.digest(), bytes.fromhex(signature["value"]))
    forged = Transcript.from_json({**signature["transcript"], "item_count": 1})
    assert not verify_signature(cert, forged.digest(), bytes.fromhex(signature["value"]))


def test_table_and_csv_formats(federation: Federation) -> None:
    watchlist = _watchlist(federation)
    done = fedtrace(
        "query",
        "match",
        "--federation",
        str(federation.root / "federation.toml"),
        "--watchlist",
        str(watchlist),
        "--dataset",
        "wallets",
        "--case",
        "CASE-7",
    )
    assert done.returncode == 3, done.stderr
    assert "EE" in done.stdout and "denied" in done.stdout and "membership" in done.stdout
    done = fedtrace(
        "query",
        "match",
        "--federation",
        str(federation.root / "federation.toml"),
        "--watchlist",
        str(watchlist),
        "--dataset",
        "wallets",
        "--case",
        "CASE-7",
        "--format",
        "csv",
        "--nodes",
        "EE",
    )
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0] == "node,status,disclosure,match_count,identifier,policy_version,reason"
    assert len(rows) - 1 == len(_oracle(federation, watchlist, "EE"))


def test_certificate_from_another_ca_is_refused(federation: Federation) -> None:
    fed = federation.root / "rogue.toml"
    fed.write_text(
        (federation.root / "federation.toml").read_text().replace("investigator/", "rogue/")
    )
    status, report, stderr = federation.match(_watchlist(federation), fed=fed)
    # The coordinator checks its own certificate first and stops with one line.
    assert status == 2 and report is None
    assert stderr.startswith("fedtrace: error:") and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr


def test_node_refuses_a_client_certificate_from_another_ca(federation: Federation) -> None:
    """The node itself refuses: go around the coordinator's own check."""
    import grpc

    from coordinator.federation import NodeEntry
    from coordinator.transport import GrpcConnection as GrpcTransport

    root = federation.root
    transport = GrpcTransport(
        NodeEntry("EE", federation.nodes["EE"].address),
        (root / "ca/ca.pem").read_bytes(),
        (root / "rogue/key.pem").read_bytes(),
        (root / "rogue/cert.pem").read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as caught:
        transport.info(10)
    transport.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    from coordinator.results import rpc_failure

    result = rpc_failure(NodeEntry("EE", "x"), caught.value)
    assert result.status == "error" and result.reason.startswith("UNAUTHENTICATED:")


def test_stopped_node_is_unavailable_while_others_answer(federation: Federation) -> None:
    node = federation.nodes["SG"]
    assert node.stop() == 0
    try:
        status, report, stderr = federation.match(_watchlist(federation))
    finally:
        node.start()
        federation.write_fed()
    assert report is not None, stderr
    assert status == 3
    results = _by_node(report)
    assert results["SG"]["status"] == "unavailable"
    assert "did not answer" in results["SG"]["reason"]  # type: ignore[operator]
    assert results["EE"]["status"] == "ok"
    assert results["EE"]["matched"] == _oracle(federation, _watchlist(federation), "EE")


def test_bad_watchlist_line_is_reported_and_nothing_runs(federation: Federation) -> None:
    path = federation.root / "bad.txt"
    good = federation.data.watchlist(5)
    path.write_text(
        "\n".join(
            [good[0], "0x52908400098527886e0F7030069857D2E4169EE7", good[1], "bc1qnotanaddress"]
        )
        + "\n"
    )
    status, report, stderr = federation.match(path)
    assert status == 2 and report is None
    assert f"{path}:2:" in stderr and f"{path}:4:" in stderr
    assert "--skip-invalid" in stderr and "Traceback" not in stderr
    status, report, _ = federation.match(path, "--skip-invalid", "--nodes", "EE")
    assert status == 0 and report is not None
    assert report["watchlist"]["skipped_invalid"] == 2  # type: ignore[index]


def test_watchlist_over_the_policy_limit_is_denied(federation: Federation) -> None:
    big = federation.root / "big.txt"
    big.write_text("\n".join(f"0x{i:040x}" for i in range(1, 502)) + "\n")
    status, report, _ = federation.match(big, "--nodes", "EE")
    assert report is not None and status == 3
    reason = _by_node(report)["EE"]["reason"]
    assert _by_node(report)["EE"]["status"] == "denied"
    assert "501 items exceed EE's limit of 500" in reason  # type: ignore[operator]


def test_unknown_dataset_is_a_clear_error(federation: Federation) -> None:
    # Checked against the datasets the nodes announced, before any node is asked; a client
    # that skips the check meets the node's own refusal (test_match_in_memory).
    status, report, stderr = federation.match(
        _watchlist(federation), "--nodes", "EE", dataset="walets"
    )
    assert status == 2 and report is None
    assert stderr == (
        "fedtrace: error: unknown dataset 'walets'; the federation's nodes offer: "
        "subjects, wallets (did you mean 'wallets'?)\n"
    )


def test_restart_reuses_the_epoch_and_ingest_starts_a_new_one(federation: Federation) -> None:
    node = federation.nodes["EE"]
    watchlist = _watchlist(federation)
    _, before, _ = federation.match(watchlist, "--nodes", "EE")
    assert before is not None
    epoch = _by_node(before)["EE"]["epoch_id"]
    assert node.stop(signal.SIGTERM) == 0  # graceful stop exits 0
    node.start()
    federation.write_fed()
    _, after, _ = federation.match(watchlist, "--nodes", "EE")
    assert after is not None and _by_node(after)["EE"]["epoch_id"] == epoch

    # Ingest while the node serves: it waits its turn for the database, and the node
    # starts a new epoch over the new data without a restart.
    new_wallet = f"0x{0xFEED:040x}"
    sender = f"0x{0xBEEF:040x}"
    extra = federation.root / "extra.csv"
    extra.write_text(
        "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
        f"extra-1,eth,{sender},{new_wallet},ETH,1,10.00,2026-01-01T00:00:00Z\n"
    )
    done = fedtrace("node", "ingest", str(node.node_dir), str(extra), "--table", "transactions")
    assert done.returncode == 0, done.stderr
    (federation.root / "one.txt").write_text(new_wallet + "\n")

    def matched_new() -> bool:
        _, report, _ = federation.match(federation.root / "one.txt", "--nodes", "EE")
        assert report is not None
        result = _by_node(report)["EE"]
        return result["matched"] == [new_wallet] and result["epoch_id"] != epoch

    wait_until(matched_new, timeout=40)
    again = fedtrace("node", "ingest", str(node.node_dir), str(extra), "--table", "transactions")
    assert again.returncode == 2 and "already ingested" in again.stderr
