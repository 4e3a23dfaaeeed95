"""`fedtrace node serve` refuses at once, in one line, a directory or a port already served."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrace.harness import LocalFederation, run_cli

pytestmark = pytest.mark.slow


def test_a_second_serve_of_a_directory_or_a_port_fails_in_one_line(tmp_path: Path) -> None:
    with LocalFederation(tmp_path) as federation:
        first = federation.add_node("EE")
        address = first.start()
        again = run_cli("node", "serve", str(first.node_dir), check=False, timeout=60)
        assert again.returncode == 2
        assert again.stderr == (
            f"fedtrace: error: {first.node_dir} is already served by pid {first.pid}: stop that "
            "process first (one `fedtrace node serve` per node directory)\n"
        )
        other = federation.add_node("SG")
        same_port = run_cli(
            "node", "serve", str(other.node_dir), "--listen", address, check=False, timeout=60
        )
        assert same_port.returncode == 2
        assert same_port.stderr == (
            f"fedtrace: error: cannot listen on {address}: Address already in use (is another "
            "node serving there?); stop it or choose another port with --listen or node.toml's "
            "listen\n"
        )
        assert first.running
