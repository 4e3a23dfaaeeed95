"""Item 3: the revocation list is signed by the CA, and `audit verify` knows revoked node keys."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from fedtrace.errors import ConfigError
from fedtrace.pki import identity_from_pem
from fedtrace.revocation import RevocationWatch, load_revocations, revoke, signature_path
from node.audit import AUDIT_DIR, AuditLog, verify_trail
from tests.adversarial.conftest import Target


def test_pki_revoke_signs_the_list_and_a_node_refuses_an_unsigned_or_edited_one(
    target: Target,
) -> None:
    ca = target.root / "ca"
    ca_pem = (ca / "ca.pem").read_bytes()
    path, entry = revoke(ca, cert=target.root / "NL" / "cert.pem", reason="lost key")
    assert signature_path(path).exists()
    listed = load_revocations(path, ca_pem=ca_pem)
    assert listed.find(identity_from_pem(target.cert("NL"))) is not None

    tls = target.node_dir / "tls"
    shutil.copy(path, tls / "revoked.toml")  # without its signature
    with pytest.raises(ConfigError) as unsigned:
        with target.served():
            pass
    assert "not signed" in str(unsigned.value) and "\n" not in str(unsigned.value)

    shutil.copy(signature_path(path), tls / "revoked.toml.sig")
    edited = (tls / "revoked.toml").read_text().replace(entry.serial, "ab" * 8)
    (tls / "revoked.toml").write_text(edited)  # a member drops its own entry
    with pytest.raises(ConfigError) as forged:
        load_revocations(tls / "revoked.toml", ca_pem=ca_pem)
    assert "does not verify with the federation CA" in str(forged.value)

    shutil.copy(path, tls / "revoked.toml")
    with target.served():
        pass  # the signed list is accepted


def test_a_running_node_keeps_its_list_when_a_bad_one_arrives(target: Target) -> None:
    ca = target.root / "ca"
    path, _ = revoke(ca, cert=target.root / "NL" / "cert.pem")
    watch = RevocationWatch(path, ca_pem=(ca / "ca.pem").read_bytes())
    nl = identity_from_pem(target.cert("NL"))
    assert watch.current().find(nl) is not None
    path.write_text("# emptied by someone without the CA key\n")
    assert watch.current().find(nl) is not None  # the previous, signed list stays in force


def test_audit_verify_reports_entries_signed_by_a_since_revoked_node_key(target: Target) -> None:
    config = target.config
    directory = target.node_dir / AUDIT_DIR
    log = AuditLog(directory, config.tls.key.read_bytes(), config.tls.cert.read_bytes())
    for n in range(3):
        log.append("query", {"n": n})
    ca = target.root / "ca"
    ca_pem = (ca / "ca.pem").read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    path, _ = revoke(ca, cert=config.tls.cert, reason="key compromise", now=later)
    before = verify_trail(directory, ca_pem=ca_pem, revoked=load_revocations(path, ca_pem=ca_pem))
    assert before.ok and any("since revoked at" in note for note in before.notes)

    path.unlink()
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    path, _ = revoke(ca, cert=config.tls.cert, reason="key compromise", now=earlier)
    after = verify_trail(directory, ca_pem=ca_pem, revoked=load_revocations(path, ca_pem=ca_pem))
    assert not after.ok
    assert "whose certificate was revoked at" in after.problem
    assert earlier.strftime("%Y-%m-%dT%H:%M") in after.problem
