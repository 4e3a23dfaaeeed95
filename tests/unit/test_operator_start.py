"""A node fails fast at start, before any blinding: its certificate, its directory, its port."""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue
from node.config import load_node_config
from node.server import check_certificate, check_port_free, lock_node_dir
from node.setup import init_node


@pytest.fixture()
def node_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    return tmp_path / "EE"


def test_a_good_certificate_passes(node_dir: Path) -> None:
    check_certificate(load_node_config(node_dir))


def test_a_certificate_for_another_jurisdiction_or_role_names_both(
    node_dir: Path, tmp_path: Path
) -> None:
    tls = node_dir / "tls"
    for name in ("cert.pem", "key.pem"):
        (tls / name).unlink()
    issue(tmp_path / "ca", tmp_path / "fr", name="FR", role=ROLE_INVESTIGATOR)
    for name in ("cert.pem", "key.pem"):
        (tls / name).write_bytes((tmp_path / "fr" / name).read_bytes())
    (tls / "key.pem").chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        check_certificate(load_node_config(node_dir))
    assert str(caught.value) == (
        f"{tls / 'cert.pem'} names FR investigator, but this node is EE node; issue one on the "
        "secretariat's machine with `fedtrace pki issue CA_DIR OUT_DIR --name EE --role node` "
        f"and copy its cert.pem and key.pem into {tls}"
    )


def test_a_certificate_from_another_ca_is_refused(node_dir: Path, tmp_path: Path) -> None:
    init_ca(tmp_path / "other-ca")
    (node_dir / "tls" / "ca.pem").write_bytes((tmp_path / "other-ca" / "ca.pem").read_bytes())
    with pytest.raises(ConfigError) as caught:
        check_certificate(load_node_config(node_dir))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{node_dir / 'tls' / 'cert.pem'}: ")
    assert "not signed by the federation CA" in message


def test_a_missing_certificate_is_reported_before_blinding(
    node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (node_dir / "tls" / "cert.pem").unlink()
    assert main(["node", "serve", str(node_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedtrace: error: {node_dir / 'tls' / 'cert.pem'}: the node ")
    assert "certificate is missing" in err and err.count("\n") == 1


def test_a_second_serve_on_the_same_directory_names_the_first_pid(node_dir: Path) -> None:
    first = lock_node_dir(node_dir)
    try:
        with pytest.raises(ConfigError) as caught:
            lock_node_dir(node_dir)
        assert str(caught.value) == (
            f"{node_dir} is already served by pid {os.getpid()}: stop that process first "
            "(one `fedtrace node serve` per node directory)"
        )
    finally:
        os.close(first)
    os.close(lock_node_dir(node_dir))  # released with its holder


def test_a_port_in_use_fails_with_one_line() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as gRPC's default
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError) as caught:
            check_port_free(listen)
    assert str(caught.value) == (
        f"cannot listen on {listen}: Address already in use (is another node serving there?); "
        "stop it or choose another port with --listen or node.toml's listen"
    )
    check_port_free("127.0.0.1:0")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_epoch_builds_show_live_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.server import epoch_progress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with epoch_progress() as progress:
        progress("dataset wallets: blinding 1,000 items for a new epoch")
    assert "dataset wallets: blinding 1,000 items for a new epoch" in terminal.getvalue()


def test_epoch_builds_are_log_lines_when_not_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from node.server import epoch_progress

    with caplog.at_level("INFO", logger="node.server"), epoch_progress() as progress:
        progress("dataset wallets: blinding 1,000 items for a new epoch")
    assert caplog.messages == ["dataset wallets: blinding 1,000 items for a new epoch"]
