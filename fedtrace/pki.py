"""The federation PKI: the CA, member certificates, identities and signatures.

The federation secretariat runs one CA (`init_ca`) and admits members by issuing
each a certificate (`issue`) that names the holder's jurisdiction code
(subject CN) and role (subject OU, ``node``, ``investigator`` or ``monitor``). Nodes and
coordinators authenticate each other with these certificates over mutual TLS;
the TLS name a coordinator expects from a node is `server_name`. Nodes sign
their results with the same key (`sign`, `verify_signature`).

Every failure is a `PkiError` whose message is one line saying what went wrong,
where, and what to do. Private keys are never logged or put in messages.

Keys are ECDSA P-256, stored unencrypted as PKCS#8 PEM and protected by file
mode 0600; `read_key_pem` refuses a key file that group or others may access.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtrace.errors import FedtraceError

ROLE_NODE = "node"
ROLE_INVESTIGATOR = "investigator"
ROLE_MONITOR = "monitor"  # a supervisor who opens sealed openings; never a query partner
ROLES = (ROLE_NODE, ROLE_INVESTIGATOR, ROLE_MONITOR)

ORGANIZATION = "fedtrace"
SERVER_NAME_SUFFIX = "fedtrace"

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

DEFAULT_CA_NAME = "fedtrace federation CA"
DEFAULT_CA_DAYS = 3650
DEFAULT_MEMBER_DAYS = 825

# Certificates start a few minutes in the past so that a peer whose clock is
# slightly behind does not reject a freshly issued certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)

_JURISDICTION_RE = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_ROLE_EKUS: dict[str, frozenset[x509.ObjectIdentifier]] = {
    ROLE_NODE: frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ROLE_INVESTIGATOR: frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
    ROLE_MONITOR: frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
}
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644
_PRIVATE_DIR_MODE = 0o700


class PkiError(FedtraceError):
    """A PKI operation failed; the message is one actionable line (what, where, what to do)."""


class InvalidCertificate(PkiError):
    """A certificate is malformed, untrusted, outside its validity or names no valid identity."""


@dataclass(frozen=True)
class Identity:
    """Who a federation certificate names: jurisdiction and role, plus what pins the cert."""

    jurisdiction: str
    role: str
    subject: str
    serial: str
    fingerprint_sha256: str
    not_after: dt.datetime

    def describe(self) -> str:
        """One line for logs and messages, e.g. ``EE investigator (serial 1a2b3c4d…, sha256 …)``."""
        return (
            f"{self.jurisdiction} {self.role} "
            f"(serial {_abbreviate(self.serial)}, sha256 {_abbreviate(self.fingerprint_sha256)})"
        )


def _abbreviate(hex_text: str, length: int = 8) -> str:
    return hex_text if len(hex_text) <= length else hex_text[:length] + "…"


# --- names -----------------------------------------------------------------------------


def validate_jurisdiction(code: str) -> str:
    """Return `code` if it is a valid jurisdiction code (``EE``, ``FR``, ``SG`` …)."""
    if isinstance(code, str) and _JURISDICTION_RE.fullmatch(code):
        return code
    hint = ""
    if isinstance(code, str) and _JURISDICTION_RE.fullmatch(code.strip().upper()):
        hint = f" (did you mean {code.strip().upper()!r}?)"
    raise PkiError(
        f"invalid jurisdiction code {code!r}{hint}: use 2-16 characters, an upper-case "
        "letter followed by upper-case letters or digits, e.g. 'EE'"
    )


def validate_role(role: str) -> str:
    """Return `role` if it is one of `ROLES`."""
    if role in ROLES:
        return role
    raise PkiError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")


def server_name(jurisdiction: str, role: str = ROLE_NODE) -> str:
    """The DNS name in a member's certificate, e.g. ``ee.node.fedtrace``.

    The coordinator checks a node's TLS certificate against this name
    (``grpc.ssl_target_name_override``), so the address in FED.toml need not match it.
    """
    code = validate_jurisdiction(jurisdiction)
    return f"{code.lower()}.{validate_role(role)}.{SERVER_NAME_SUFFIX}"


# --- CA and issuance -------------------------------------------------------------------


def init_ca(ca_dir: Path, *, name: str = DEFAULT_CA_NAME, days: int = DEFAULT_CA_DAYS) -> Path:
    """Create the federation CA in `ca_dir` and return the path of its certificate.

    Writes ``ca.pem`` (0644) and ``ca.key`` (0600); creates `ca_dir` with mode 0700
    if it does not exist. Refuses to touch an existing CA.
    """
    if not name.strip():
        raise PkiError("the CA name is empty: pass a name such as 'fedtrace federation CA'")
    _check_days(days)
    ca_dir = Path(ca_dir)
    cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    for existing in (key_path, cert_path):
        if existing.exists():
            raise PkiError(
                f"a CA already exists at {existing}: refusing to overwrite it; "
                "choose another directory or move the old CA away first"
            )
    _make_private_dir(ca_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    not_before = _now() - CLOCK_SKEW
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new_file(key_path, _private_key_pem(key), _PRIVATE_FILE_MODE)
    _write_new_file(
        cert_path, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_FILE_MODE
    )
    return cert_path


def issue(
    ca_dir: Path,
    out_dir: Path,
    *,
    name: str,
    role: str,
    days: int = DEFAULT_MEMBER_DAYS,
    _not_before: dt.datetime | None = None,
) -> Path:
    """Issue a member certificate from the CA in `ca_dir` into `out_dir`; return its path.

    Writes ``cert.pem`` (0644), ``key.pem`` (0600) and ``ca.pem`` (a copy of the CA
    certificate); creates `out_dir` with mode 0700 if it does not exist. Refuses to
    overwrite an existing key or certificate, or a different ``ca.pem``.

    `_not_before` is for tests only: it backdates the validity window.
    """
    jurisdiction = validate_jurisdiction(name)
    validate_role(role)
    _check_days(days)
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert_path, ca_key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    if not ca_key_path.is_file():
        raise PkiError(
            f"the CA directory {ca_dir} holds no {CA_KEY_FILE}: issue certificates on the "
            "secretariat's machine that holds the CA key, or run 'fedtrace pki init' first"
        )
    ca_cert = load_certificate(ca_cert_path)
    ca_key = _load_private_key(read_key_pem(ca_key_path), ca_key_path)
    if ca_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise PkiError(
            f"{ca_key_path} does not belong to {ca_cert_path}: restore the matching "
            "CA key and certificate"
        )

    not_before = (_not_before if _not_before is not None else _now()) - CLOCK_SKEW
    not_after = not_before + dt.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise PkiError(
            f"the CA in {ca_dir} expires on {_date(ca_cert.not_valid_after_utc)}, before the "
            f"requested {days} days end on {_date(not_after)}: issue for fewer days or "
            "renew the CA"
        )

    cert_path, key_path = out_dir / CERT_FILE, out_dir / KEY_FILE
    ca_copy_path = out_dir / CA_CERT_FILE
    for existing in (key_path, cert_path):
        if existing.exists():
            raise PkiError(
                f"{existing} already exists: refusing to overwrite a member's key or "
                "certificate; choose another output directory or move the old files away"
            )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    if ca_copy_path.exists() and ca_copy_path.read_bytes() != ca_pem:
        raise PkiError(
            f"{ca_copy_path} holds a different CA certificate than {ca_cert_path}: "
            "choose another output directory or remove the stale ca.pem"
        )
    _make_private_dir(out_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, jurisdiction),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(sorted(_ROLE_EKUS[role], key=str)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name(jurisdiction, role))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_new_file(key_path, _private_key_pem(key), _PRIVATE_FILE_MODE)
    _write_new_file(
        cert_path, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_FILE_MODE
    )
    if not ca_copy_path.exists():
        _write_new_file(ca_copy_path, ca_pem, _PUBLIC_FILE_MODE)
    return cert_path


# --- reading and checking certificates -------------------------------------------------


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate from `path`."""
    path = Path(path)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(
            f"certificate file {path} does not exist: check the path, or issue one with "
            "'fedtrace pki issue'"
        ) from None
    except OSError as error:
        raise PkiError(f"cannot read certificate file {path}: {error.strerror}") from None
    return _parse_certificate(pem, where=str(path))


def identity_from_pem(pem: bytes) -> Identity:
    """The identity named by a PEM certificate (CN = jurisdiction, OU = role)."""
    return identity_from_certificate(_parse_certificate(pem, where="the certificate"))


def identity_from_certificate(certificate: x509.Certificate) -> Identity:
    """The identity named by a parsed certificate (CN = jurisdiction, OU = role)."""
    subject = certificate.subject.rfc4514_string()
    jurisdiction = _single_attribute(certificate, NameOID.COMMON_NAME, "CN (jurisdiction)")
    role = _single_attribute(certificate, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    if not _JURISDICTION_RE.fullmatch(jurisdiction):
        raise InvalidCertificate(
            f"certificate {subject} names an invalid jurisdiction code {jurisdiction!r} in its "
            "CN: re-issue it with 'fedtrace pki issue --name CODE'"
        )
    if role not in ROLES:
        raise InvalidCertificate(
            f"certificate {subject} names an unknown role {role!r} in its OU (expected "
            f"{' or '.join(ROLES)}): re-issue it with 'fedtrace pki issue --role'"
        )
    return Identity(
        jurisdiction=jurisdiction,
        role=role,
        subject=subject,
        serial=f"{certificate.serial_number:x}",
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        not_after=certificate.not_valid_after_utc,
    )


def verify_issued_by(cert_pem: bytes, ca_pem: bytes, *, at: dt.datetime | None = None) -> Identity:
    """Check that `cert_pem` is a valid member certificate of the CA `ca_pem`; return its identity.

    Checks the issuer name and the CA's signature, both validity windows at `at`
    (default: now), that the certificate is not itself a CA, and that its extended
    key usage and DNS name match the role and jurisdiction it names.
    """
    moment = _now() if at is None else at
    if moment.tzinfo is None:
        raise ValueError("verify_issued_by: 'at' must be timezone-aware")
    certificate = _parse_certificate(cert_pem, where="the certificate")
    ca_certificate = _parse_certificate(ca_pem, where="the CA certificate")
    identity = identity_from_certificate(certificate)
    who = identity.describe()

    if not _is_ca(ca_certificate):
        raise InvalidCertificate(
            f"{ca_certificate.subject.rfc4514_string()} is not a CA certificate: "
            "point 'ca' at the federation CA's ca.pem"
        )
    if certificate.issuer != ca_certificate.subject:
        raise InvalidCertificate(
            f"{who} was issued by {certificate.issuer.rfc4514_string()!r}, not by the "
            f"federation CA {ca_certificate.subject.rfc4514_string()!r}: use a certificate "
            "issued by this federation's CA"
        )
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError):
        raise InvalidCertificate(
            f"{who} is not signed by the federation CA "
            f"{ca_certificate.subject.rfc4514_string()!r} (same name, different key): "
            "use a certificate issued by this federation's CA"
        ) from None

    _check_validity(ca_certificate, moment, what="the federation CA")
    _check_validity(certificate, moment, what=who)

    if _is_ca(certificate):
        raise InvalidCertificate(f"{who} is a CA certificate, not a member certificate")
    try:
        usages = set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    required = _ROLE_EKUS[identity.role]
    forbidden = {ExtendedKeyUsageOID.SERVER_AUTH} if identity.role != ROLE_NODE else set()
    if not required <= usages or usages & forbidden:
        raise InvalidCertificate(
            f"{who} has extended key usages that do not fit its role "
            f"(has {_eku_names(usages) or 'none'}, needs exactly {_eku_names(required)}): "
            "re-issue it with 'fedtrace pki issue'"
        )
    expected_name = server_name(identity.jurisdiction, identity.role)
    try:
        dns_names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if dns_names != [expected_name]:
        raise InvalidCertificate(
            f"{who} carries DNS names {dns_names} instead of [{expected_name!r}]: "
            "re-issue it with 'fedtrace pki issue'"
        )
    return identity


# --- keys and signatures ---------------------------------------------------------------


def read_key_pem(path: Path) -> bytes:
    """Read a private key file, refusing one that group or others may access.

    Refusing (rather than warning) follows OpenSSH: a key others could read must be
    treated as leaked, and the fix (``chmod 600``) is one command.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PkiError(f"private key file {path} does not exist: check the path") from None
    except OSError as error:
        raise PkiError(f"cannot read private key file {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise PkiError(f"private key path {path} is not a regular file: check the path")
    if os.name == "posix" and mode & 0o077:
        raise PkiError(
            f"private key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run 'chmod 600 {path}', and replace the key "
            "if others may have read it"
        )
    try:
        key_pem = path.read_bytes()
    except OSError as error:
        raise PkiError(f"cannot read private key file {path}: {error.strerror}") from None
    _load_private_key(key_pem, path)
    return key_pem


def sign(key_pem: bytes, data: bytes) -> bytes:
    """Sign `data` with an ECDSA P-256 private key (SHA-256); return a DER signature."""
    key = _load_private_key(key_pem, None)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(cert_pem: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is a valid ECDSA P-256 / SHA-256 signature of `data` by `cert_pem`'s key.

    Does not check the certificate itself; use `verify_issued_by` for that.
    """
    certificate = _parse_certificate(cert_pem, where="the signer's certificate")
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise InvalidCertificate(
            f"certificate {certificate.subject.rfc4514_string()} does not hold an ECDSA "
            "P-256 key: federation signatures need a certificate from 'fedtrace pki issue'"
        )
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- internals -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _date(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise PkiError(f"invalid validity {days!r} days: use a whole number of days, 1 or more")


def _parse_certificate(pem: bytes, *, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError):
        raise InvalidCertificate(
            f"{where} is not a PEM X.509 certificate: expected a file starting with "
            "'-----BEGIN CERTIFICATE-----', such as cert.pem or ca.pem from 'fedtrace pki'"
        ) from None


def _load_private_key(key_pem: bytes, path: Path | None) -> ec.EllipticCurvePrivateKey:
    where = f"private key file {path}" if path is not None else "the private key"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise PkiError(
            f"{where} is encrypted: fedtrace expects an unencrypted key protected by file mode 0600"
        ) from None
    except ValueError:
        raise PkiError(
            f"{where} is not a PEM private key: use key.pem from 'fedtrace pki issue'"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"{where} is not an ECDSA P-256 key: use key.pem from 'fedtrace pki issue'")
    return key


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_private_dir(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise PkiError(f"{directory} exists and is not a directory: choose another path")
        return
    try:
        directory.mkdir(parents=True, mode=_PRIVATE_DIR_MODE)
        os.chmod(directory, _PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    except OSError as error:
        raise PkiError(f"cannot create directory {directory}: {error.strerror}") from None


def _write_new_file(path: Path, content: bytes, mode: int) -> None:
    """Create `path` exclusively with exactly `mode`; a secret is never briefly world-readable."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists: refusing to overwrite it") from None
    except OSError as error:
        raise PkiError(f"cannot create {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "wb") as handle:
        os.chmod(path, mode)  # the umask may have narrowed the public mode
        handle.write(content)


def _single_attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = certificate.subject.get_attributes_for_oid(oid)
    subject = certificate.subject.rfc4514_string()
    if len(values) != 1:
        raise InvalidCertificate(
            f"certificate {subject!r} has {len(values)} {label} attributes, expected one: "
            "use a certificate from 'fedtrace pki issue'"
        )
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_validity(certificate: x509.Certificate, moment: dt.datetime, *, what: str) -> None:
    if moment < certificate.not_valid_before_utc:
        raise InvalidCertificate(
            f"{what} is not valid before {_date(certificate.not_valid_before_utc)}: "
            "check this machine's clock, or wait until then"
        )
    if moment > certificate.not_valid_after_utc:
        raise InvalidCertificate(
            f"{what} expired on {_date(certificate.not_valid_after_utc)}: "
            "ask the federation secretariat for a new certificate"
        )


def _eku_names(usages: set[x509.ObjectIdentifier] | frozenset[x509.ObjectIdentifier]) -> str:
    names = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    return "+".join(sorted(names.get(usage, usage.dotted_string) for usage in usages))
