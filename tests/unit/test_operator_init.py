"""`fedtrace node init --ca DIR`: with the CA, with what `pki issue` wrote, or with neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, init_ca, issue
from node.config import load_node_config
from node.server import check_certificate


@pytest.fixture()
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_init_installs_the_directory_pki_issue_wrote(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = tmp_path / "issued-ee"
    issue(ca, issued, name="EE", role=ROLE_NODE)
    assert sorted(p.name for p in issued.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    node_dir = tmp_path / "EE"
    assert main(["node", "init", str(node_dir), "--jurisdiction", "EE", "--ca", str(issued)]) == 0
    out = capsys.readouterr().out
    assert f"  certificate and key from {issued} installed into {node_dir / 'tls'}\n" in out
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert (node_dir / "tls" / name).read_bytes() == (issued / name).read_bytes()
    assert (node_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    check_certificate(load_node_config(node_dir))


def test_init_refuses_an_issued_certificate_for_someone_else(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = tmp_path / "issued-fr"
    issue(ca, issued, name="FR", role=ROLE_INVESTIGATOR)
    node_dir = tmp_path / "EE"
    assert main(["node", "init", str(node_dir), "--jurisdiction", "EE", "--ca", str(issued)]) == 2
    assert capsys.readouterr().err == (
        f"fedtrace: error: {issued / 'cert.pem'} names FR investigator, not EE node; issue one "
        "with `fedtrace pki issue CA_DIR OUT_DIR --name EE --role node`; nothing changed\n"
    )
    assert not node_dir.exists()


def test_a_ca_directory_without_key_says_which_files_to_copy_where(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = tmp_path / "ca-public"
    public.mkdir()
    (public / "ca.pem").write_bytes((ca / "ca.pem").read_bytes())
    node_dir = tmp_path / "EE"
    assert main(["node", "init", str(node_dir), "--jurisdiction", "EE", "--ca", str(public)]) == 0
    out = capsys.readouterr().out
    assert (
        f"  {public} holds neither the CA key (ca.key) nor an issued node certificate: on the "
        "secretariat's machine run `fedtrace pki issue CA_DIR OUT_DIR --name EE --role node`, "
        f"then copy OUT_DIR/cert.pem and OUT_DIR/key.pem into {node_dir / 'tls'} (key.pem mode "
        "0600), or run `fedtrace node init` again with --ca OUT_DIR\n"
    ) in out


def test_init_with_the_ca_key_still_issues(ca: Path, tmp_path: Path) -> None:
    assert (
        main(["node", "init", str(tmp_path / "EE"), "--jurisdiction", "EE", "--ca", str(ca)]) == 0
    )
    check_certificate(load_node_config(tmp_path / "EE"))
