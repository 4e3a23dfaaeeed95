"""Tests for the federation PKI: CA, issuance, identities, verification, signatures, mTLS."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedtrace import pki

ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@dataclass(frozen=True)
class Federation:
    """A CA with one node (EE) and one investigator (FR), all in a temporary directory."""

    root: Path
    ca_dir: Path
    node_dir: Path
    investigator_dir: Path

    @property
    def ca_pem(self) -> bytes:
        return (self.ca_dir / "ca.pem").read_bytes()


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    ca_dir, node_dir, investigator_dir = tmp_path / "ca", tmp_path / "ee", tmp_path / "fr"
    pki.init_ca(ca_dir)
    pki.issue(ca_dir, node_dir, name="EE", role=pki.ROLE_NODE)
    pki.issue(ca_dir, investigator_dir, name="FR", role=pki.ROLE_INVESTIGATOR)
    return Federation(tmp_path, ca_dir, node_dir, investigator_dir)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _extension(certificate: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return certificate.extensions.get_extension_for_class(kind)


def _forge(
    ca_dir: Path,
    *,
    subject: list[x509.NameAttribute[str]],
    usages: list[x509.ObjectIdentifier],
    dns_names: list[str],
) -> bytes:
    """A certificate signed by the real CA key but with hand-chosen subject and extensions."""
    ca_cert = pki.load_certificate(ca_dir / "ca.pem")
    ca_key = serialization.load_pem_private_key(pki.read_key_pem(ca_dir / "ca.key"), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _subject(jurisdiction: str, role: str | None) -> list[x509.NameAttribute[str]]:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtrace")]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, jurisdiction))
    return attributes


# --- CA ----------------------------------------------------------------------------------


@posix_only
def test_init_ca_writes_public_cert_and_private_key(tmp_path: Path) -> None:
    ca_dir = tmp_path / "new" / "ca"
    cert_path = pki.init_ca(ca_dir, name="Test federation CA", days=30)

    assert cert_path == ca_dir / "ca.pem"
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.pem") == 0o644
    assert _mode(ca_dir / "ca.key") == 0o600

    ca_cert = pki.load_certificate(cert_path)
    assert ca_cert.subject.rfc4514_string() == "CN=Test federation CA,O=fedtrace"
    assert ca_cert.issuer == ca_cert.subject
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    constraints = _extension(ca_cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _extension(ca_cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert _extension(ca_cert, x509.SubjectKeyIdentifier).value.digest
    validity = ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc
    assert validity == dt.timedelta(days=30)


def test_init_ca_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    key_before = (tmp_path / "ca.key").read_bytes()

    with pytest.raises(pki.PkiError, match="a CA already exists at .*ca.key: refusing"):
        pki.init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == key_before


def test_init_ca_rejects_a_nonpositive_validity(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="invalid validity 0 days"):
        pki.init_ca(tmp_path / "ca", days=0)
    assert not (tmp_path / "ca").exists()


# --- issuance ----------------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize(
    ("role", "usages"),
    [
        (pki.ROLE_NODE, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        (pki.ROLE_INVESTIGATOR, {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_issue_writes_member_files_with_role_extensions(
    tmp_path: Path, role: str, usages: set[x509.ObjectIdentifier]
) -> None:
    ca_dir, out_dir = tmp_path / "ca", tmp_path / "member"
    pki.init_ca(ca_dir)

    cert_path = pki.issue(ca_dir, out_dir, name="EE", role=role, days=90)

    assert cert_path == out_dir / "cert.pem"
    assert _mode(out_dir) == 0o700
    assert _mode(out_dir / "key.pem") == 0o600
    assert _mode(out_dir / "cert.pem") == 0o644
    assert (out_dir / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()

    cert = pki.load_certificate(cert_path)
    ca_cert = pki.load_certificate(ca_dir / "ca.pem")
    assert cert.subject.rfc4514_string() == f"CN=EE,OU={role},O=fedtrace"
    assert cert.issuer == ca_cert.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)
    assert set(_extension(cert, x509.ExtendedKeyUsage).value) == usages
    dns_names = _extension(cert, x509.SubjectAlternativeName).value
    assert dns_names.get_values_for_type(x509.DNSName) == [f"ee.{role}.fedtrace"]
    key_usage = _extension(cert, x509.KeyUsage).value
    assert key_usage.digital_signature and not key_usage.key_cert_sign
    assert not _extension(cert, x509.BasicConstraints).value.ca
    authority_key_id = _extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert authority_key_id == _extension(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert _extension(cert, x509.SubjectKeyIdentifier).value.digest != authority_key_id

    key = serialization.load_pem_private_key(pki.read_key_pem(out_dir / "key.pem"), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()


def test_issue_draws_a_fresh_serial_and_key_each_time(federation: Federation) -> None:
    pki.issue(federation.ca_dir, federation.root / "ee2", name="EE", role=pki.ROLE_NODE)
    first = pki.identity_from_pem((federation.node_dir / "cert.pem").read_bytes())
    second = pki.identity_from_pem((federation.root / "ee2" / "cert.pem").read_bytes())
    assert first.serial != second.serial
    assert first.fingerprint_sha256 != second.fingerprint_sha256


def test_issue_refuses_to_overwrite_an_existing_key(federation: Federation) -> None:
    key_before = (federation.node_dir / "key.pem").read_bytes()

    with pytest.raises(pki.PkiError, match=r"key.pem already exists: refusing to overwrite"):
        pki.issue(federation.ca_dir, federation.node_dir, name="EE", role=pki.ROLE_NODE)
    assert (federation.node_dir / "key.pem").read_bytes() == key_before


def test_issue_refuses_a_different_ca_copy_in_the_output_directory(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca")
    pki.init_ca(tmp_path / "old-ca")
    (tmp_path / "member").mkdir()
    (tmp_path / "member" / "ca.pem").write_bytes((tmp_path / "old-ca" / "ca.pem").read_bytes())

    with pytest.raises(pki.PkiError, match="holds a different CA certificate"):
        pki.issue(tmp_path / "ca", tmp_path / "member", name="EE", role=pki.ROLE_NODE)
    assert not (tmp_path / "member" / "key.pem").exists()


def test_issue_without_the_ca_key_says_so(federation: Federation) -> None:
    public_only = federation.root / "public-ca"
    public_only.mkdir()
    (public_only / "ca.pem").write_bytes(federation.ca_pem)

    with pytest.raises(pki.PkiError, match=r"the CA directory .*public-ca holds no ca.key"):
        pki.issue(public_only, federation.root / "x", name="EE", role=pki.ROLE_NODE)
    assert not (federation.root / "x").exists()


def test_issue_rejects_bad_names_roles_and_lifetimes(federation: Federation) -> None:
    out_dir = federation.root / "x"
    with pytest.raises(pki.PkiError, match="invalid jurisdiction code 'ee'.*did you mean 'EE'"):
        pki.issue(federation.ca_dir, out_dir, name="ee", role=pki.ROLE_NODE)
    with pytest.raises(pki.PkiError, match="invalid role 'admin': use one of node, investigator"):
        pki.issue(federation.ca_dir, out_dir, name="EE", role="admin")
    with pytest.raises(pki.PkiError, match="the CA in .* expires on .*: issue for fewer days"):
        pki.issue(federation.ca_dir, out_dir, name="EE", role=pki.ROLE_NODE, days=100_000)
    assert not out_dir.exists()


# --- names and identities ----------------------------------------------------------------


@pytest.mark.parametrize("code", ["EE", "FR", "SG", "X1", "EUROPOL", "A" * 16])
def test_valid_jurisdiction_codes_are_returned_unchanged(code: str) -> None:
    assert pki.validate_jurisdiction(code) == code


@pytest.mark.parametrize("code", ["", "E", "ee", "1E", "E-E", "E E", " EE", "A" * 17, "ÉE"])
def test_invalid_jurisdiction_codes_are_rejected_with_the_rule(code: str) -> None:
    with pytest.raises(pki.PkiError) as caught:
        pki.validate_jurisdiction(code)
    message = str(caught.value)
    assert message.startswith(f"invalid jurisdiction code {code!r}")
    assert "2-16 characters, an upper-case letter followed by upper-case letters or digits" in (
        message
    )
    assert "\n" not in message


def test_server_name_is_the_lower_case_tls_name_of_a_member() -> None:
    assert pki.server_name("EE") == "ee.node.fedtrace"
    assert pki.server_name("FR", pki.ROLE_INVESTIGATOR) == "fr.investigator.fedtrace"
    with pytest.raises(pki.PkiError, match="invalid role"):
        pki.server_name("EE", "admin")
    with pytest.raises(pki.PkiError, match="invalid jurisdiction code"):
        pki.server_name("e")


def test_identity_from_pem_reads_jurisdiction_role_serial_and_fingerprint(
    federation: Federation,
) -> None:
    cert_pem = (federation.investigator_dir / "cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)

    identity = pki.identity_from_pem(cert_pem)

    assert identity == pki.Identity(
        jurisdiction="FR",
        role=pki.ROLE_INVESTIGATOR,
        subject="CN=FR,OU=investigator,O=fedtrace",
        serial=f"{cert.serial_number:x}",
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
    )
    assert identity.not_after.tzinfo is not None
    assert identity.describe() == (
        f"FR investigator (serial {identity.serial[:8]}…, "
        f"sha256 {identity.fingerprint_sha256[:8]}…)"
    )


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        (_subject("EE", None), "has 0 OU \\(role\\) attributes, expected one"),
        (_subject("EE", "auditor"), "unknown role 'auditor' in its OU"),
        (_subject("ee", "node"), "invalid jurisdiction code 'ee' in its CN"),
        (_subject("Example Org", "node"), "invalid jurisdiction code 'Example Org'"),
    ],
)
def test_identity_from_pem_rejects_certificates_without_a_valid_identity(
    federation: Federation, subject: list[x509.NameAttribute[str]], message: str
) -> None:
    forged = _forge(
        federation.ca_dir,
        subject=subject,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        dns_names=["x.node.fedtrace"],
    )
    with pytest.raises(pki.InvalidCertificate, match=message):
        pki.identity_from_pem(forged)


def test_identity_from_pem_rejects_garbage() -> None:
    with pytest.raises(pki.InvalidCertificate, match="is not a PEM X.509 certificate"):
        pki.identity_from_pem(b"hello")


def test_load_certificate_names_the_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"certificate file .*nope.pem does not exist"):
        pki.load_certificate(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(pki.InvalidCertificate, match=r"garbage.pem is not a PEM X.509"):
        pki.load_certificate(garbage)


# --- verification ------------------------------------------------------------------------


def test_verify_issued_by_accepts_both_roles(federation: Federation) -> None:
    node = pki.verify_issued_by((federation.node_dir / "cert.pem").read_bytes(), federation.ca_pem)
    investigator = pki.verify_issued_by(
        (federation.investigator_dir / "cert.pem").read_bytes(), federation.ca_pem
    )
    assert (node.jurisdiction, node.role) == ("EE", pki.ROLE_NODE)
    assert (investigator.jurisdiction, investigator.role) == ("FR", pki.ROLE_INVESTIGATOR)


def test_verify_issued_by_rejects_a_ca_with_the_same_name_but_another_key(
    federation: Federation,
) -> None:
    # Both CAs carry the default name, so only the signature tells them apart.
    pki.init_ca(federation.root / "rogue-ca")
    pki.issue(federation.root / "rogue-ca", federation.root / "rogue", name="FR", role="node")
    rogue_pem = (federation.root / "rogue" / "cert.pem").read_bytes()

    with pytest.raises(pki.InvalidCertificate, match="FR node .* is not signed by the federation"):
        pki.verify_issued_by(rogue_pem, federation.ca_pem)


def test_verify_issued_by_rejects_a_ca_with_another_name(federation: Federation) -> None:
    pki.init_ca(federation.root / "rogue-ca", name="Rogue CA")
    pki.issue(federation.root / "rogue-ca", federation.root / "rogue", name="FR", role="node")
    rogue_pem = (federation.root / "rogue" / "cert.pem").read_bytes()

    with pytest.raises(pki.InvalidCertificate, match="was issued by 'CN=Rogue CA,O=fedtrace'"):
        pki.verify_issued_by(rogue_pem, federation.ca_pem)


def test_verify_issued_by_rejects_an_expired_certificate_with_its_date(
    federation: Federation,
) -> None:
    pki.issue(
        federation.ca_dir,
        federation.root / "old",
        name="FR",
        role=pki.ROLE_INVESTIGATOR,
        days=30,
        _not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    old_pem = (federation.root / "old" / "cert.pem").read_bytes()

    with pytest.raises(pki.InvalidCertificate) as caught:
        pki.verify_issued_by(old_pem, federation.ca_pem)
    assert "FR investigator (serial " in str(caught.value)
    assert "expired on 2020-01-30 23:55:00 UTC" in str(caught.value)
    assert "ask the federation secretariat for a new certificate" in str(caught.value)


def test_verify_issued_by_rejects_a_certificate_not_yet_valid(federation: Federation) -> None:
    cert_pem = (federation.node_dir / "cert.pem").read_bytes()
    not_before = x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc

    with pytest.raises(pki.InvalidCertificate, match="is not valid before 20"):
        pki.verify_issued_by(cert_pem, federation.ca_pem, at=not_before - dt.timedelta(days=1))
    identity = pki.verify_issued_by(cert_pem, federation.ca_pem, at=not_before)
    assert identity.jurisdiction == "EE"


def test_verify_issued_by_rejects_a_role_its_key_usages_do_not_fit(
    federation: Federation,
) -> None:
    investigator_acting_as_server = _forge(
        federation.ca_dir,
        subject=_subject("FR", pki.ROLE_INVESTIGATOR),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        dns_names=["fr.investigator.fedtrace"],
    )
    node_without_server_auth = _forge(
        federation.ca_dir,
        subject=_subject("EE", pki.ROLE_NODE),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        dns_names=["ee.node.fedtrace"],
    )
    with pytest.raises(pki.InvalidCertificate, match="do not fit its role"):
        pki.verify_issued_by(investigator_acting_as_server, federation.ca_pem)
    with pytest.raises(pki.InvalidCertificate, match="needs exactly clientAuth\\+serverAuth"):
        pki.verify_issued_by(node_without_server_auth, federation.ca_pem)


def test_verify_issued_by_rejects_a_tls_name_of_another_jurisdiction(
    federation: Federation,
) -> None:
    ee_named_as_fr = _forge(
        federation.ca_dir,
        subject=_subject("EE", pki.ROLE_NODE),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        dns_names=["fr.node.fedtrace"],
    )
    with pytest.raises(pki.InvalidCertificate, match="instead of \\['ee.node.fedtrace'\\]"):
        pki.verify_issued_by(ee_named_as_fr, federation.ca_pem)


def test_verify_issued_by_rejects_a_member_certificate_posing_as_the_ca(
    federation: Federation,
) -> None:
    node_pem = (federation.node_dir / "cert.pem").read_bytes()
    with pytest.raises(pki.InvalidCertificate, match="is not a CA certificate"):
        pki.verify_issued_by(node_pem, node_pem)


# --- keys and signatures -----------------------------------------------------------------


def test_sign_and_verify_round_trip(federation: Federation) -> None:
    key_pem = pki.read_key_pem(federation.node_dir / "key.pem")
    cert_pem = (federation.node_dir / "cert.pem").read_bytes()
    result = b'{"case":"CASE-1","node":"EE","match_count":3}'

    signature = pki.sign(key_pem, result)

    assert pki.verify_signature(cert_pem, result, signature)
    assert not pki.verify_signature(cert_pem, result.replace(b"3", b"4"), signature)
    tampered = bytearray(signature)
    tampered[-1] ^= 0x01
    assert not pki.verify_signature(cert_pem, result, bytes(tampered))
    assert not pki.verify_signature(cert_pem, result, b"not a signature")
    other_cert = (federation.investigator_dir / "cert.pem").read_bytes()
    assert not pki.verify_signature(other_cert, result, signature)


def test_sign_rejects_a_key_that_is_not_p256() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(pki.PkiError, match="is not an ECDSA P-256 key"):
        pki.sign(p384, b"data")
    with pytest.raises(pki.PkiError, match="is not a PEM private key"):
        pki.sign(b"garbage", b"data")


@posix_only
def test_read_key_pem_refuses_a_key_others_can_read(federation: Federation) -> None:
    key_path = federation.node_dir / "key.pem"
    key_path.chmod(0o640)

    with pytest.raises(pki.PkiError) as caught:
        pki.read_key_pem(key_path)
    assert "accessible by group or others (mode 0640)" in str(caught.value)
    assert f"run 'chmod 600 {key_path}'" in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)

    key_path.chmod(0o600)
    assert pki.read_key_pem(key_path).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_read_key_pem_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"private key file .*key.pem does not exist"):
        pki.read_key_pem(tmp_path / "key.pem")


# --- mutual TLS through gRPC -------------------------------------------------------------


@contextmanager
def _health_server(node_dir: Path) -> Iterator[int]:
    """A gRPC server with the node's certificate that demands client certificates."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [((node_dir / "key.pem").read_bytes(), (node_dir / "cert.pem").read_bytes())],
        root_certificates=(node_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _check_health(port: int, client_dir: Path, ca_pem: bytes, node: str = "EE") -> str:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=(client_dir / "key.pem").read_bytes(),
        certificate_chain=(client_dir / "cert.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", pki.server_name(node))]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_mtls_accepts_an_investigator_of_the_federation(federation: Federation) -> None:
    with _health_server(federation.node_dir) as port:
        assert _check_health(port, federation.investigator_dir, federation.ca_pem) == "SERVING"


def test_mtls_refuses_a_client_certificate_from_another_ca(federation: Federation) -> None:
    pki.init_ca(federation.root / "rogue-ca")
    pki.issue(
        federation.root / "rogue-ca", federation.root / "rogue", name="FR", role="investigator"
    )

    with _health_server(federation.node_dir) as port, pytest.raises(grpc.RpcError) as caught:
        _check_health(port, federation.root / "rogue", federation.ca_pem)
    # The server rejects the client certificate after the client's side of the TLS 1.3
    # handshake is done, so the client only sees the connection close:
    # "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:PORT:
    # Socket closed". The reason is logged by the server only.
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert (error.details() or "").startswith("failed to connect to all addresses")


def test_mtls_refuses_an_expired_client_certificate(federation: Federation) -> None:
    pki.issue(
        federation.ca_dir,
        federation.root / "old",
        name="FR",
        role=pki.ROLE_INVESTIGATOR,
        days=30,
        _not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    with _health_server(federation.node_dir) as port, pytest.raises(grpc.RpcError) as caught:
        _check_health(port, federation.root / "old", federation.ca_pem)
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert (error.details() or "").startswith("failed to connect to all addresses")


def test_mtls_client_refuses_a_node_answering_for_another_jurisdiction(
    federation: Federation,
) -> None:
    with _health_server(federation.node_dir) as port, pytest.raises(grpc.RpcError) as caught:
        _check_health(port, federation.investigator_dir, federation.ca_pem, node="FR")
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification Check failed" in (error.details() or "")


# --- integration with the rest of fedtrace -----------------------------------------------


def test_pki_errors_are_fedtrace_errors_the_cli_reports_as_one_line() -> None:
    from fedtrace.errors import FedtraceError

    assert issubclass(pki.InvalidCertificate, pki.PkiError)
    assert issubclass(pki.PkiError, FedtraceError)


@posix_only
def test_file_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        pki.init_ca(tmp_path / "ca")
        pki.issue(tmp_path / "ca", tmp_path / "ee", name="EE", role=pki.ROLE_NODE)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "ca" / "ca.pem") == 0o644
    assert _mode(tmp_path / "ee" / "cert.pem") == 0o644
    assert _mode(tmp_path / "ee" / "ca.pem") == 0o644
    assert _mode(tmp_path / "ee" / "key.pem") == 0o600
