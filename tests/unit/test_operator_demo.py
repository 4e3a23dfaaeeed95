"""`fedtrace demo --keep DIR`: the kept nodes serve again where they did, by printed commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrace.demo import keep_addresses, restart_commands
from fedtrace.harness import LocalFederation
from node.config import load_node_config

pytestmark = pytest.mark.slow  # node init runs as a subprocess through the harness


def test_kept_nodes_keep_their_ports_and_the_commands_to_restart_them(tmp_path: Path) -> None:
    federation = LocalFederation(tmp_path)
    for code, port in (("EE", 41001), ("FR", 41002)):
        federation.add_node(code).address = f"127.0.0.1:{port}"
    keep_addresses(federation)
    assert load_node_config(tmp_path / "nodes" / "EE").listen == "127.0.0.1:41001"
    assert load_node_config(tmp_path / "nodes" / "FR").listen == "127.0.0.1:41002"
    commands = restart_commands(federation, tmp_path / "watchlist.txt")
    assert (
        commands[0]
        == f"fedtrace node serve {tmp_path / 'nodes' / 'EE'} &   # EE on 127.0.0.1:41001"
    )
    fed = tmp_path / "federation.toml"
    assert (
        f"fedtrace query aggregate --federation {fed} --dataset wallets --legal-basis MLA "
        f"--watchlist {tmp_path / 'watchlist.txt'} --case DEMO-5 --sum total_in_eur "
        "--sum tx_count --total-only"
    ) in commands
