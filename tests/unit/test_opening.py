"""Sealed openings: seal and open, strict statements, refusals before parsing, stable bytes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fedtrace import group, opening, pki, psi
from fedtrace.items import item_bytes
from fedtrace.opening import (
    Blinding,
    Opening,
    OpeningError,
    SealedOpening,
    Statement,
    check_form,
    open_sealed,
    seal,
)


@dataclasses.dataclass(frozen=True)
class Keys:
    investigator_key: bytes
    investigator_cert: bytes
    other_cert: bytes
    monitor_cert: bytes
    monitor_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "fr", name="FR", role=pki.ROLE_INVESTIGATOR)
    pki.issue(root / "ca", root / "de", name="DE", role=pki.ROLE_INVESTIGATOR)
    pki.issue(root / "ca", root / "ovs", name="OVS", role=pki.ROLE_MONITOR)
    key = pki._load_private_key(pki.read_key_pem(root / "ovs" / "key.pem"), None)
    return Keys(
        pki.read_key_pem(root / "fr" / "key.pem"),
        (root / "fr" / "cert.pem").read_bytes(),
        (root / "de" / "cert.pem").read_bytes(),
        (root / "ovs" / "cert.pem").read_bytes(),
        key,
    )


def _statement(points: list[bytes], kind: str = opening.KIND_MATCH) -> Statement:
    return Statement(
        kind=kind,
        monitor="OVS",
        node="EE",
        dataset="wallets",
        epoch_id="e1",
        case_ref="CASE-1",
        legal_basis="AMLD6-art10",
        investigator="FR",
        nonce=bytes(range(16)),
        timestamp_unix_ms=1_700_000_000_000,
        item_count=len(points),
        points_sha256=opening.points_digest(points),
    )


def _match(keys: Keys) -> tuple[SealedOpening, Opening, list[bytes]]:
    items = [item_bytes("wallet", f"bc1q{i:04d}") for i in range(5)]
    query = psi.BlindedQuery(items)
    the_opening = Opening(
        opening.KIND_MATCH,
        items=tuple(items),
        blinding=Blinding(opening.MODE_MULTIPLICATIVE, scalar=query._scalar),
    )
    sealed = seal(
        _statement(query.blinded),
        the_opening,
        opening.monitor_public_key(keys.monitor_cert),
        keys.investigator_key,
    )
    return sealed, the_opening, query.blinded


def test_seal_open_round_trip(keys: Keys) -> None:
    sealed, the_opening, points = _match(keys)
    statement = check_form(
        sealed,
        kind=opening.KIND_MATCH,
        item_count=len(points),
        signer_certificate_pem=keys.investigator_cert,
    )
    assert statement.differences(_statement(points)) == []
    assert len(sealed.enc) == opening.ENC_BYTES
    opened = open_sealed(SealedOpening.from_proto(sealed.to_proto()), keys.monitor_key)
    assert opened == the_opening
    assert group.blind_items(list(opened.items), opened.blinding.scalar) == points  # type: ignore[union-attr]


def test_wrong_monitor_key_does_not_open(keys: Keys) -> None:
    sealed, _, _ = _match(keys)
    with pytest.raises(OpeningError, match="does not decrypt"):
        open_sealed(sealed, ec.generate_private_key(ec.SECP256R1()))


def test_tampering_is_refused(keys: Keys) -> None:
    sealed, _, points = _match(keys)
    form = {"kind": opening.KIND_MATCH, "item_count": len(points)}
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(OpeningError, match="does not decrypt"):
        open_sealed(dataclasses.replace(sealed, ciphertext=flipped), keys.monitor_key)
    other = _statement(points)
    altered = dataclasses.replace(other, case_ref="CASE-2", opening_sha256=bytes(32)).to_bytes()
    with pytest.raises(OpeningError, match="signature"):
        check_form(
            dataclasses.replace(sealed, statement=altered),
            signer_certificate_pem=keys.investigator_cert,
            **form,  # type: ignore[arg-type]
        )
    with pytest.raises(OpeningError, match="does not decrypt"):
        open_sealed(dataclasses.replace(sealed, statement=altered), keys.monitor_key)
    bad_signature = bytes([sealed.signature[0], sealed.signature[1] ^ 1]) + sealed.signature[2:]
    with pytest.raises(OpeningError, match="signature"):
        check_form(
            dataclasses.replace(sealed, signature=bad_signature),
            signer_certificate_pem=keys.investigator_cert,
            **form,  # type: ignore[arg-type]
        )
    with pytest.raises(OpeningError, match="not the caller's"):
        check_form(sealed, signer_certificate_pem=keys.other_cert, **form)  # type: ignore[arg-type]


def test_plaintext_not_the_signed_one_is_refused(keys: Keys) -> None:
    sealed, the_opening, points = _match(keys)
    # A client that signs one opening and seals another: decrypts, but the digest differs.
    other = dataclasses.replace(the_opening, items=the_opening.items[:-1] + (b"x",))
    honest = seal(
        _statement(points),
        other,
        opening.monitor_public_key(keys.monitor_cert),
        keys.investigator_key,
    )
    mixed = dataclasses.replace(honest, statement=sealed.statement, signature=sealed.signature)
    with pytest.raises(OpeningError):
        open_sealed(mixed, keys.monitor_key)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("enc", b"\x04" * 64, "encapsulated key"),
        ("ciphertext", b"\0" * (opening.max_ciphertext_bytes("match", 5) + 1), "ciphertext"),
        ("statement", b"{" * (opening.MAX_STATEMENT_BYTES + 1), "statement is"),
        ("signature", b"\0" * 81, "signature is"),
        ("suite", "X25519", "suite"),
    ],
)
def test_oversize_fields_are_refused_before_parsing(
    keys: Keys, field: str, value: Any, message: str
) -> None:
    sealed, _, points = _match(keys)
    with pytest.raises(OpeningError, match=message):
        check_form(
            dataclasses.replace(sealed, **{field: value}),
            kind=opening.KIND_MATCH,
            item_count=len(points),
            signer_certificate_pem=keys.investigator_cert,
        )


def test_statement_is_strict_and_canonical() -> None:
    points = [group.hash_to_group(b"x")]
    statement = dataclasses.replace(_statement(points), opening_sha256=bytes(32))
    data = statement.to_bytes()
    assert data == statement.to_bytes()
    assert data.startswith(b'{"case_ref":"CASE-1","dataset":"wallets","epoch_id":"e1"')
    assert Statement.from_bytes(data) == statement
    with pytest.raises(OpeningError, match="canonical"):
        Statement.from_bytes(data.replace(b'{"case_ref"', b'{ "case_ref"'))
    with pytest.raises(OpeningError, match="unknown keys"):
        Statement.from_bytes(data.replace(b'"v":1}', b'"v":1,"w":2}'))
    with pytest.raises(OpeningError, match="lowercase hex"):
        Statement.from_bytes(data.replace(statement.nonce.hex().encode(), b"00" * 15 + b"AB"))
    with pytest.raises(OpeningError, match="aggregate-indicator"):
        Statement.from_bytes(dataclasses.replace(statement, query_id=b"\1" * 16).to_bytes())


def test_additive_and_indicator_openings_round_trip() -> None:
    additive = Opening(
        opening.KIND_AGGREGATE_POINTS,
        items=(b"a", b"b"),
        blinding=Blinding(opening.MODE_ADDITIVE, blinding_point=b"\2" * 32, r=(b"\3" * 32,) * 2),
    )
    assert Opening.from_bytes(additive.to_bytes()) == additive
    bitmap = opening.indicator_bitmap(10, [0, 9])
    assert bitmap == b"\x80\x40"
    assert opening.bitmap_positions(bitmap, 10) == [0, 9]
    indicator = Opening(
        opening.KIND_AGGREGATE_INDICATOR,
        he_secret_context=b"\5" * 40,
        indicator=bitmap,
        row_count=10,
        positions=(0, 9),
    )
    assert Opening.from_bytes(indicator.to_bytes()) == indicator
    with pytest.raises(OpeningError, match="holds"):
        Opening.from_bytes(dataclasses.replace(indicator, row_count=20).to_bytes())


def test_digests() -> None:
    assert (
        opening.indicator_digest([b"ab", b""]).hex() == opening.indicator_digest([b"ab", b""]).hex()
    )
    assert opening.indicator_digest([b"ab"]) != opening.indicator_digest([b"a", b"b"])
    assert opening.points_digest([b"a", b"b"]) == opening.points_digest([b"ab"])


def test_sealed_opening_digest_binds_every_field(tmp_path: Path) -> None:
    sealed = SealedOpening("OVS", opening.SUITE, b"e", b"c", b"s", b"g")
    assert sealed.digest() != dataclasses.replace(sealed, signature=b"h").digest()
    assert sealed.digest() != dataclasses.replace(sealed, monitor="OV").digest()


def test_he_secret_key_travels_in_an_opening() -> None:
    from fedtrace.he import SecretHeContext

    secret = SecretHeContext.generate()
    ciphertexts = secret.encrypt_indicator([1, 0, 1])
    rebuilt = SecretHeContext.from_secret_key(secret.secret_key_bytes())
    # The monitor decrypts what the client encrypted (an indicator, not an answer: no flooding).
    assert rebuilt.decrypt_slots(ciphertexts[0])[:4] == [1, 0, 1, 0]
