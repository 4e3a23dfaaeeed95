"""Replay guard, coordinator retries, revocation lists and torn audit writes, without a network."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import grpc
import pytest

from coordinator.retry import RetryPolicy, with_retries
from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_INVESTIGATOR, identity_from_pem, init_ca, issue
from fedtrace.revocation import RevocationWatch, load_revocations, revoke
from node.audit import AuditLog, verify_trail
from node.replay import ReplayGuard, ReplayRefused, ReplayWindow, seed_from_audit

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _guard() -> ReplayGuard:
    return ReplayGuard(ReplayWindow(300), clock=lambda: NOW)


def test_a_fresh_nonce_passes_and_its_replay_is_already_exists() -> None:
    guard = _guard()
    guard.check("ab" * 16, NOW_MS)
    with pytest.raises(ReplayRefused) as caught:
        guard.check("ab" * 16, NOW_MS)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert str(caught.value).startswith("replayed request: this query's nonce was already used")


@pytest.mark.parametrize(
    ("nonce", "when", "message"),
    [
        ("", NOW_MS, "needs a fresh random nonce of 16 bytes, got 0"),
        ("zz" * 16, NOW_MS, "needs a fresh random nonce of 16 bytes, got 0"),
        ("ab" * 8, NOW_MS, "needs a fresh random nonce of 16 bytes, got 8"),
        ("cd" * 16, NOW_MS - 301_000, "sent 301 s before the node's time, outside the ±300 s"),
        ("cd" * 16, NOW_MS + 400_000, "sent 400 s after the node's time, outside the ±300 s"),
        ("cd" * 16, 0, "before the node's time, outside the ±300 s window"),
    ],
)
def test_bad_nonces_and_times_are_invalid_argument(nonce: str, when: int, message: str) -> None:
    with pytest.raises(ReplayRefused) as caught:
        _guard().check(nonce, when)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(caught.value)


def test_nonces_older_than_twice_the_window_are_forgotten() -> None:
    moment = [NOW]
    guard = ReplayGuard(ReplayWindow(300), clock=lambda: moment[0])
    for i in range(50):
        guard.check(f"{i:032x}", NOW_MS)
    moment[0] = NOW + dt.timedelta(seconds=601)
    guard.check("ff" * 16, int(moment[0].timestamp() * 1000))
    assert len(guard) == 1


def test_the_guard_is_seeded_from_the_audit_trail(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    old = (NOW - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    recent = (NOW - dt.timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    lines = [
        {"time": old, "nonce": "01" * 16, "query_time_ms": NOW_MS - 3_600_000},
        {"time": recent, "nonce": "02" * 16, "query_time_ms": NOW_MS - 30_000},
        {"time": recent, "event": "node-started"},
    ]
    trail.write_text("\n".join(json.dumps(x) for x in lines) + "\n" + '{"torn')
    guard = _guard()
    assert seed_from_audit(guard, trail) == 1
    with pytest.raises(ReplayRefused):
        guard.check("02" * 16, NOW_MS - 30_000)


class Failure(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str = "", renews: bool = False) -> None:
        super().__init__(details)
        self._code, self._details, self._renews = code, details, renews

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("fedtrace-renews-at", "2026-11-26T00:00:00Z"),) if self._renews else ()


def _flaky(failures: list[Failure]) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "answer"

    return calls, call


def test_transient_errors_are_retried_with_growing_backoff() -> None:
    sleeps: list[float] = []
    calls, call = _flaky(
        [
            Failure(grpc.StatusCode.UNAVAILABLE, "connection refused"),
            Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy; retry shortly"),
        ]
    )
    clock = [0.0]
    answer = with_retries(call, 100.0, sleep=sleeps.append, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert answer == "answer" and len(calls) == 3
    assert 0.125 <= sleeps[0] <= 0.25 and 0.25 <= sleeps[1] <= 0.5


@pytest.mark.parametrize(
    "failure",
    [
        Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "budget used up", renews=True),
        Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "5 items exceed this node's ceiling of 4"),
        Failure(grpc.StatusCode.PERMISSION_DENIED, "no grant"),
        Failure(grpc.StatusCode.UNAVAILABLE, "Hostname Verification Check failed"),
        Failure(grpc.StatusCode.INVALID_ARGUMENT, "bad point"),
    ],
)
def test_lasting_errors_are_not_retried(failure: Failure) -> None:
    calls, call = _flaky([failure])
    with pytest.raises(Failure):
        with_retries(call, 100.0, sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_down_node_gets_a_bounded_number_of_attempts_within_the_deadline() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    calls, call = _flaky([Failure(grpc.StatusCode.UNAVAILABLE, "refused")] * 50)
    with pytest.raises(Failure):
        with_retries(
            call, 100.0, RetryPolicy(unavailable_attempts=4), sleep=sleep, clock=lambda: clock[0]
        )  # type: ignore[arg-type]
    assert len(calls) == 4 and clock[0] < 2.0
    calls, call = _flaky([Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")] * 500)
    clock[0] = 0.0
    with pytest.raises(Failure):
        with_retries(call, 10.0, sleep=sleep, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert clock[0] <= 10.0  # a busy node is retried until the deadline, never past it


def test_pki_revoke_writes_a_list_the_node_reads(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "FR", name="FR", role=ROLE_INVESTIGATOR)
    issue(tmp_path / "ca", tmp_path / "FR2", name="FR", role=ROLE_INVESTIGATOR)
    identity = identity_from_pem((tmp_path / "FR" / "cert.pem").read_bytes())
    other = identity_from_pem((tmp_path / "FR2" / "cert.pem").read_bytes())
    watch = RevocationWatch(tmp_path / "ca" / "revoked.toml")
    assert watch.current().find(identity) is None
    path, entry = revoke(tmp_path / "ca", cert=tmp_path / "FR" / "cert.pem", reason="lost key")
    assert entry.serial == identity.serial and entry.jurisdiction == "FR"
    found = watch.current().find(identity)
    assert found is not None and found.reason == "lost key"
    assert watch.current().find(other) is None
    revoke(tmp_path / "ca", serial="0x" + other.serial.upper())
    assert load_revocations(path).find(other) is not None
    assert len(load_revocations(path).entries) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[revoked]]\nreason = 'x'\n", "give 'serial' or 'fingerprint_sha256'"),
        ("[[revoked]]\nserial = 'xyz'\n", "'serial' must be hexadecimal, got 'xyz'"),
        ("[[revoked]]\nserail = '01'\n", "unknown key 'serail' (did you mean \"serial\"?)"),
        ("revoked = 3\n", "'revoked' must be an array of tables"),
    ],
)
def test_a_broken_revocation_list_is_a_config_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "revoked.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_revocations(path)
    assert message in str(caught.value)


def test_a_torn_last_line_is_noted_then_set_aside_and_the_repair_audited(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "EE", name="EE", role="node")
    key = (tmp_path / "EE" / "key.pem").read_bytes()
    cert = (tmp_path / "EE" / "cert.pem").read_bytes()
    log = AuditLog(tmp_path / "audit", key, cert)
    for n in range(3):
        log.append("query", {"n": n})
    trail = tmp_path / "audit" / "audit.jsonl"
    with trail.open("ab") as handle:
        handle.write(b'{"event":"qu')
    result = verify_trail(tmp_path / "audit")
    assert result.ok and result.entries == 3
    assert any("line 4 is a torn write (12 characters, no newline)" in n for n in result.notes)
    log.append("query", {"n": 3})
    result = verify_trail(tmp_path / "audit")
    assert result.ok and result.entries == 5 and not result.notes
    lines = [json.loads(x) for x in trail.read_text().splitlines()]
    assert [x["event"] for x in lines[3:]] == ["trail-repaired", "query"]
    assert lines[3]["torn_bytes"] == 12
    assert (tmp_path / "audit" / lines[3]["set_aside"]).read_bytes() == b'{"event":"qu'


def test_a_whole_entry_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", tmp_path / "EE", name="EE", role="node")
    log = AuditLog(
        tmp_path / "audit",
        (tmp_path / "EE" / "key.pem").read_bytes(),
        (tmp_path / "EE" / "cert.pem").read_bytes(),
    )
    log.append("query", {"n": 0})
    trail = tmp_path / "audit" / "audit.jsonl"
    trail.write_bytes(trail.read_bytes().rstrip(b"\n"))
    log.append("query", {"n": 1})
    result = verify_trail(tmp_path / "audit")
    assert result.ok and result.entries == 2
