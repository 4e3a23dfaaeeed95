"""`fedtrace node health` against real nodes: every node of FED.toml, one node, a node checking
itself from its directory, and a stopped node (exit 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fedtrace.cli
from fedtrace.errors import ExitCode
from fedtrace.health import HealthState, MemberCredentials, check_node, dial_address
from tests.integration.conftest import Federation

pytestmark = pytest.mark.slow


def health(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = fedtrace.cli.main(["node", "health", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_node_of_the_federation_serves(
    federation: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = str(federation.write_fed())
    code, out, _ = health(capsys, "--federation", fed, "--format", "json")
    assert code == ExitCode.OK
    nodes = json.loads(out)["nodes"]
    assert [n["node"] for n in nodes] == ["EE", "FR", "SG"]
    assert {n["status"] for n in nodes} == {"serving"}
    assert nodes[0]["address"] == federation.nodes["EE"].address

    code, out, _ = health(capsys, "--federation", fed, "--node", "FR")
    assert code == ExitCode.OK
    header, row = out.splitlines()
    assert header.split() == ["NODE", "ADDRESS", "STATUS", "REASON"]
    assert row.split() == ["FR", federation.nodes["FR"].address, "serving"]


def test_a_node_checks_itself_from_its_directory(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ee = federation.nodes["EE"]
    code, out, _ = health(capsys, str(ee.node_dir), "--address", ee.address)
    assert code == ExitCode.OK and "serving" in out

    # The HEALTHCHECK form reads the address from node.toml: a copy that names the real port.
    node_dir = tmp_path / "EE"
    node_dir.mkdir()
    shutil.copytree(ee.node_dir / "tls", node_dir / "tls")
    text = (ee.node_dir / "node.toml").read_text()
    listen = next(line for line in text.splitlines() if line.startswith("listen = "))
    port = ee.address.rsplit(":", 1)[1]
    (node_dir / "node.toml").write_text(text.replace(listen, f'listen = "0.0.0.0:{port}"'))
    code, out, _ = health(capsys, str(node_dir), "--format", "json")
    assert code == ExitCode.OK
    (result,) = json.loads(out)["nodes"]
    assert result == {
        "node": "EE",
        "address": f"127.0.0.1:{port}",
        "status": "serving",
        "reason": "",
    }


def test_the_tls_name_must_be_the_nodes(federation: Federation) -> None:
    ee = federation.nodes["EE"]
    credentials = MemberCredentials.from_files(
        ee.node_dir / "tls" / "ca.pem",
        ee.node_dir / "tls" / "cert.pem",
        ee.node_dir / "tls" / "key.pem",
    )
    # FR's address, but expecting EE's certificate: the TLS handshake fails.
    result = check_node("EE", federation.nodes["FR"].address, credentials, timeout=5)
    assert result.state is HealthState.UNREACHABLE and result.reason


def test_a_stopped_node_makes_the_check_exit_3(
    federation: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    sg = federation.nodes["SG"]
    fed = str(federation.write_fed())
    address = sg.address
    assert sg.stop() == 0
    try:
        code, out, _ = health(capsys, "--federation", fed, "--format", "json", "--timeout", "3")
        assert code == ExitCode.PARTIAL
        by_node = {n["node"]: n for n in json.loads(out)["nodes"]}
        assert by_node["EE"]["status"] == by_node["FR"]["status"] == "serving"
        assert by_node["SG"]["status"] == "unreachable" and by_node["SG"]["reason"]

        code, _, _ = health(capsys, str(sg.node_dir), "--address", address, "--timeout", "3")
        assert code == ExitCode.PARTIAL
    finally:
        sg.start()
        federation.write_fed()


def test_usage_errors_exit_2(federation: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    ee_dir = str(federation.nodes["EE"].node_dir)
    fed = str(federation.root / "federation.toml")
    assert health(capsys)[0] == ExitCode.USAGE
    assert health(capsys, ee_dir, "--federation", fed)[0] == ExitCode.USAGE
    assert health(capsys, ee_dir, "--node", "EE")[0] == ExitCode.USAGE
    code, _, err = health(capsys, "--federation", fed, "--node", "XX")
    assert code == ExitCode.USAGE and "XX" in err


def test_a_wildcard_listen_address_is_dialled_on_loopback() -> None:
    assert dial_address("0.0.0.0:7001") == "127.0.0.1:7001"
    assert dial_address("[::]:7001") == "[::1]:7001"
    assert dial_address("ee.example.org:7001") == "ee.example.org:7001"
