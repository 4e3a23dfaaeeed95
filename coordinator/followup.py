"""The investigator's follow-up requests: submit, follow their state, export a case record.

`submit_request` sends one disclosure or preservation request to one node;
`request_status` asks nodes for the investigator's requests under a case. Every
record a node returns is checked before it is shown: its digest, the node's
certificate (chains to the federation CA, names that node) and the node's
signature. `case_record` builds the self-contained evidence document that
`fedtrace report verify` accepts (`verify_case_record`), and `case_record_html`
its human-readable page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from coordinator.federation import Federation, NodeEntry
from coordinator.match import NodeFailure, rpc_failure
from coordinator.transport import node_channel, read_federation_file
from coordinator.verify import ReportVerification, check_investigator
from fedtrace.errors import FedtraceError
from fedtrace.followup import (
    EXPORT_DOCUMENT,
    KIND_DISCLOSE,
    FollowUpRecord,
    canonical_json,
    record_digest,
    state_label,
)
from fedtrace.identifiers import InvalidIdentifier, canonical_address, parse_person
from fedtrace.pki import (
    ROLE_NODE,
    InvalidCertificate,
    PkiError,
    read_key_pem,
    verify_issued_by,
    verify_signature,
)
from fedtrace.transcript import SIGNATURE_ALGORITHM
from fedtrace.v1 import node_pb2, node_pb2_grpc, requests_pb2, requests_pb2_grpc

KINDS = {
    "disclose": requests_pb2.FOLLOW_UP_KIND_DISCLOSE,
    "preserve": requests_pb2.FOLLOW_UP_KIND_PRESERVE,
}


class ItemError(FedtraceError):
    """The item named on the command line is not a valid identifier for the dataset."""


class RequestTransport(Protocol):
    def info(self, timeout: float) -> node_pb2.NodeInfo: ...

    def submit(
        self, request: requests_pb2.SubmitFollowUpRequest, timeout: float
    ) -> requests_pb2.FollowUpRecord: ...

    def status(
        self, request: requests_pb2.FollowUpStatusRequest, timeout: float
    ) -> Iterator[requests_pb2.FollowUpRecord]: ...

    def close(self) -> None: ...


class GrpcRequestTransport:
    """Mutual TLS to the node FED.toml names at this address: NodeService and RequestService."""

    def __init__(self, entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> None:
        self._channel = node_channel(entry, root, key, cert)
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)
        self._requests = requests_pb2_grpc.RequestServiceStub(self._channel)

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        reply: node_pb2.NodeInfo = self._node.GetInfo(node_pb2.GetInfoRequest(), timeout=timeout)
        return reply

    def submit(
        self, request: requests_pb2.SubmitFollowUpRequest, timeout: float
    ) -> requests_pb2.FollowUpRecord:
        record: requests_pb2.FollowUpRecord = self._requests.Submit(request, timeout=timeout)
        return record

    def status(
        self, request: requests_pb2.FollowUpStatusRequest, timeout: float
    ) -> Iterator[requests_pb2.FollowUpRecord]:
        return iter(self._requests.Status(request, timeout=timeout))

    def close(self) -> None:
        self._channel.close()


def grpc_transports(federation: Federation) -> Callable[[NodeEntry], RequestTransport]:
    root = read_federation_file(federation.ca, "federation CA certificate")
    cert = read_federation_file(federation.cert, "investigator certificate")
    key = read_key_pem(federation.key)
    return lambda entry: GrpcRequestTransport(entry, root, key, cert)


# --- checking what a node signed ----------------------------------------------------------------


@dataclass(frozen=True)
class SignedRecord:
    record: FollowUpRecord
    signature: dict[str, str]  # algorithm, record_sha256, value, certificate_pem

    def as_json(self) -> dict[str, Any]:
        return {**self.record.as_json(), "signature": dict(self.signature)}


def _signed_at(record: FollowUpRecord) -> dt.datetime:
    try:
        return dt.datetime.strptime(record.signed_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"signed_at {record.signed_at!r} is not a UTC time") from None


def check_record(
    node: str, record_json: bytes, signature: bytes, cert_pem: bytes, ca_pem: bytes
) -> FollowUpRecord:
    """The record, after checking its form, the node's certificate and signature; ValueError."""
    try:
        document = json.loads(record_json)
    except ValueError:
        raise ValueError(f"{node} sent a record that is not JSON") from None
    record = FollowUpRecord.from_json(document)
    if canonical_json(document) != record_json:
        raise ValueError(f"{node}'s record is not in canonical form")
    try:
        identity = verify_issued_by(cert_pem, ca_pem, at=_signed_at(record))
    except (InvalidCertificate, PkiError) as exc:
        raise ValueError(
            f"{node}'s signing certificate does not chain to the federation CA: {exc}"
        ) from None
    if identity.role != ROLE_NODE or identity.jurisdiction != node:
        raise ValueError(f"the record is signed by {identity.describe()}, not by node {node}")
    if record.jurisdiction != node:
        raise ValueError(f"the record says it is from {record.jurisdiction}, not {node}")
    if not verify_signature(cert_pem, record_digest(record_json), signature):
        raise ValueError(f"the signature is not {node}'s signature over this record")
    return record


def _verified(node: str, message: requests_pb2.FollowUpRecord, ca_pem: bytes) -> SignedRecord:
    body = bytes(message.record_json)
    digest = record_digest(body)
    if bytes(message.record_sha256) != digest:
        raise NodeFailure("error", f"{node}'s record arrived altered (its digest does not match)")
    try:
        record = check_record(
            node, body, bytes(message.signature), bytes(message.certificate_pem), ca_pem
        )
    except ValueError as exc:
        raise NodeFailure("error", f"{exc}; the answer was discarded") from None
    if record.request_id != message.request_id or record.state != message.state:
        raise NodeFailure("error", f"{node}'s answer disagrees with the record it signed")
    return SignedRecord(
        record,
        {
            "algorithm": SIGNATURE_ALGORITHM,
            "record_sha256": digest.hex(),
            "value": bytes(message.signature).hex(),
            "certificate_pem": bytes(message.certificate_pem).decode(),
        },
    )


# --- submitting and following requests --------------------------------------------------------


@dataclass
class FollowUpResult:
    node: str
    status: str  # ok | denied | unavailable | error
    reason: str = ""
    requests: list[SignedRecord] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "status": self.status}
        if self.status != "ok":
            out["reason"] = self.reason
            return out
        out["disclosure"] = "disclosure-request"
        out["requests"] = [r.as_json() for r in self.requests]
        if len(self.requests) == 1:
            only = self.requests[0]
            out["request_id"] = only.record.request_id
            out["state"] = only.record.state
            out["policy_version"] = only.record.policy_version
            out["signature"] = dict(only.signature)
        return out


@dataclass(frozen=True)
class FollowUpAsk:
    kind: str  # disclose | preserve
    dataset: str
    item: str  # as typed; canonicalised for the dataset's kind
    case_ref: str
    legal_basis: str
    reason: str = ""
    fields: tuple[str, ...] = ()
    preservation_days: int = 0
    identifier_kind: str | None = None  # wallet | person; None: as the node's dataset says


def canonical_request_item(kind: str, value: str) -> str:
    """The item as the node expects it: a canonical address, or canonical NAME|DOB[|DOC]."""
    try:
        if kind == "wallet":
            return canonical_address(value)
        keys = parse_person(value)
    except InvalidIdentifier as exc:
        raise ItemError(f"--item is not a valid {kind}: {exc.reason}") from None
    name_dob = next(k.value for k in keys if k.type == "name_dob")
    document = next((k.value for k in keys if k.type == "document"), None)
    return name_dob if document is None else f"{name_dob}|{document}"


def _run(entry: NodeEntry, action: Callable[[], FollowUpResult]) -> FollowUpResult:
    try:
        return action()
    except NodeFailure as exc:
        return FollowUpResult(entry.name, exc.status, str(exc))
    except grpc.RpcError as exc:
        failure = rpc_failure(entry, exc)
        return FollowUpResult(entry.name, failure.status, failure.reason)


def submit_request(
    federation: Federation,
    entry: NodeEntry,
    ask: FollowUpAsk,
    transports: Callable[[NodeEntry], RequestTransport],
    ca_pem: bytes,
) -> FollowUpResult:
    """Send one follow-up to one node; the node's refusal becomes the result, never an exception.

    An item that is not a valid identifier raises ItemError (nothing was sent).
    """
    if ask.identifier_kind is not None:  # a bad item stops here, before any network
        canonical_request_item(ask.identifier_kind, ask.item)
    transport = transports(entry)
    try:

        def action() -> FollowUpResult:
            info = transport.info(federation.deadline_seconds)
            dataset = next((d for d in info.datasets if d.name == ask.dataset), None)
            if dataset is None:
                names = ", ".join(d.name for d in info.datasets) or "none"
                raise NodeFailure(
                    "error", f"{entry.name} has no dataset {ask.dataset!r} (it has: {names})"
                )
            canonical = canonical_request_item(
                ask.identifier_kind or dataset.identifier_kind, ask.item
            )
            request = requests_pb2.SubmitFollowUpRequest(
                context=node_pb2.QueryContext(
                    case_ref=ask.case_ref,
                    legal_basis=ask.legal_basis,
                    nonce=secrets.token_bytes(16),
                    timestamp_unix_ms=int(time.time() * 1000),
                ),
                kind=KINDS[ask.kind],
                dataset=ask.dataset,
                item=canonical,
                reason=ask.reason,
                fields=list(ask.fields),
                preservation_days=ask.preservation_days,
            )
            answer = transport.submit(request, federation.deadline_seconds)
            signed = _verified(entry.name, answer, ca_pem)
            mismatch = (
                signed.record.item != canonical
                or signed.record.case_ref != ask.case_ref
                or signed.record.kind != ask.kind
                or signed.record.dataset != ask.dataset
            )
            if mismatch:
                raise NodeFailure("error", f"{entry.name} signed a record of another request")
            return FollowUpResult(entry.name, "ok", requests=[signed])

        return _run(entry, action)
    finally:
        transport.close()


def request_status(
    federation: Federation,
    entries: Sequence[NodeEntry],
    case_ref: str,
    transports: Callable[[NodeEntry], RequestTransport],
    ca_pem: bytes,
    request_id: str = "",
) -> list[FollowUpResult]:
    """Each node's records of our requests under `case_ref`, checked; in roster order."""
    results = []
    for entry in entries:
        transport = transports(entry)
        try:

            def action(
                transport: RequestTransport = transport, entry: NodeEntry = entry
            ) -> FollowUpResult:
                messages = transport.status(
                    requests_pb2.FollowUpStatusRequest(case_ref=case_ref, request_id=request_id),
                    federation.deadline_seconds,
                )
                signed = [_verified(entry.name, m, ca_pem) for m in messages]
                if any(s.record.case_ref != case_ref for s in signed):
                    raise NodeFailure("error", f"{entry.name} answered records of another case")
                return FollowUpResult(entry.name, "ok", requests=signed)

            results.append(_run(entry, action))
        finally:
            transport.close()
    return results


# --- reports ------------------------------------------------------------------------------------


def report_json(case: str, query: str, dataset: str, results: Sequence[FollowUpResult]) -> str:
    report = {
        "case": case,
        "query": query,
        "dataset": dataset,
        "results": [r.as_json() for r in results],
    }
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return "-" if value is None else str(value)


def report_table(case: str, query: str, results: Sequence[FollowUpResult]) -> str:
    lines = [f"{query} · case {case}"]
    for result in results:
        if result.status != "ok":
            lines.append(f"{result.node}: {result.status}: {result.reason}")
            continue
        if not result.requests:
            lines.append(f"{result.node}: no requests under this case")
        for signed in result.requests:
            r = signed.record
            asks = (
                ", ".join(r.fields_asked)
                if r.kind == KIND_DISCLOSE
                else f"{r.preservation_days} days"
            )
            lines.append(
                f"{r.jurisdiction} {r.request_id}: {r.kind} {r.dataset} {r.item} — "
                f"{state_label(r.state).upper()} (asked {asks}; submitted {r.submitted_at}"
                + (f"; deadline {r.deadline}" if r.deadline else "")
                + ")"
            )
            if r.decided_at:
                lines.append(f"    decided {r.decided_at} by {r.decided_by}: {r.decision_reason}")
            if r.fields_withheld:
                lines.append(f"    withheld: {', '.join(r.fields_withheld)}")
            if r.preserved_until:
                lines.append(f"    preserved until {r.preserved_until}")
            for number, held in enumerate(r.disclosed, 1):
                prefix = f"    record {number}: " if len(r.disclosed) > 1 else "    "
                lines.append(prefix + "; ".join(f"{k} = {_value_text(v)}" for k, v in held.items()))
            lines.append(
                f"    signed by {r.jurisdiction} (record sha256 "
                f"{signed.signature['record_sha256'][:16]}…), signature verified"
            )
    return "\n".join(lines) + "\n"


# --- evidence: the exported case record ---------------------------------------------------------


def case_record(signed: SignedRecord, exported_by: str, now: dt.datetime) -> dict[str, Any]:
    """The self-contained evidence document for one request (to be signed by the investigator)."""
    r = signed.record
    return {
        "document": EXPORT_DOCUMENT,
        "case": r.case_ref,
        "node": r.jurisdiction,
        "request_id": r.request_id,
        "state": r.state,
        "legal_basis": r.legal_basis,
        "record": r.as_json(),
        "signature": dict(signed.signature),
        "exported_by": exported_by,
        "exported_at": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


_EXPORT_KEYS = {
    "document",
    "case",
    "node",
    "request_id",
    "state",
    "legal_basis",
    "record",
    "signature",
    "exported_by",
    "exported_at",
    "investigator_signature",
}


def verify_case_record(
    document: dict[str, Any], ca_pem: bytes, *, require_investigator_signature: bool = True
) -> ReportVerification:
    """Check an exported case record: the node's signature over the record, then the document's."""
    outcome = ReportVerification()
    unknown = sorted(set(document) - _EXPORT_KEYS)
    if unknown:
        outcome.fail(f"the case record holds fields no signature covers: {', '.join(unknown)}")
        return outcome
    node = str(document.get("node", "?"))
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM:
        outcome.fail(f"{node}: the case record carries no node signature it can check")
        return outcome
    try:
        body = canonical_json(document.get("record"))
        if signature.get("record_sha256") != record_digest(body).hex():
            raise ValueError("the record was altered (its digest does not match the signed one)")
        record = check_record(
            node,
            body,
            bytes.fromhex(str(signature.get("value", ""))),
            str(signature.get("certificate_pem", "")).encode(),
            ca_pem,
        )
    except (ValueError, TypeError) as exc:
        outcome.fail(f"{node}: {exc}")
        return outcome
    shown = {
        "case": record.case_ref,
        "request_id": record.request_id,
        "state": record.state,
        "legal_basis": record.legal_basis,
    }
    mismatches = [
        f"{name} shows {document.get(name)!r} but the node signed {signed!r}"
        for name, signed in shown.items()
        if document.get(name) != signed
    ]
    if mismatches:
        outcome.fail(f"{node}: " + "; ".join(mismatches))
        return outcome
    outcome.note(
        f"{node}: record {record.request_id} signed by node {node}, {state_label(record.state)}, "
        f"case {record.case_ref}, policy {record.policy_version}"
    )
    check_investigator(
        document, ca_pem, {record.investigator}, outcome, require_investigator_signature
    )
    return outcome


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_value_text(v))}</td></tr>"
        for k, v in pairs
    )


def case_record_html(document: dict[str, Any]) -> str:
    """A human-readable page of the case record (the JSON beside it is what verifies)."""
    r = FollowUpRecord.from_json(document["record"])
    signature = document["signature"]
    investigator = document.get("investigator_signature") or {}
    asked = (
        ", ".join(r.fields_asked)
        if r.kind == KIND_DISCLOSE
        else f"preservation for {r.preservation_days} days"
    )
    disclosed = ""
    for number, held in enumerate(r.disclosed, 1):
        disclosed += f"<h3>Record {number}</h3>\n<table>\n{_rows(list(held.items()))}\n</table>\n"
    if not disclosed:
        disclosed = "<p>No data disclosed.</p>"
    title = f"Case {r.case_ref} — {r.kind} request {r.request_id} to {r.jurisdiction}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
th{{text-align:left;padding-right:1em;vertical-align:top}}td{{word-break:break-all}}
table{{border-collapse:collapse;margin-bottom:1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>State: <strong>{html.escape(state_label(r.state))}</strong></p>
<h2>Request</h2>
<table>
{
        _rows(
            [
                ("case", r.case_ref),
                ("requesting jurisdiction", r.investigator),
                ("requested jurisdiction", r.jurisdiction),
                ("kind", r.kind),
                ("legal basis", r.legal_basis),
                ("dataset", r.dataset),
                ("item", r.item),
                ("asked", asked),
                ("reason", r.reason or "-"),
                ("submitted", r.submitted_at),
                ("answer deadline", r.deadline or "-"),
            ]
        )
    }
</table>
<h2>Decision (approvals)</h2>
<table>
{
        _rows(
            [
                ("decided", r.decided_at or "not yet"),
                ("by", r.decided_by or "-"),
                ("reason", r.decision_reason or "-"),
                ("fields disclosed", r.fields_disclosed),
                ("fields withheld", r.fields_withheld),
                ("preserved until", r.preserved_until or "-"),
                ("policy version", r.policy_version),
            ]
        )
    }
</table>
<h2>Disclosed data</h2>
{disclosed}
<h2>Signatures</h2>
<table>
{
        _rows(
            [
                ("node signature", signature.get("algorithm")),
                ("record SHA-256", signature.get("record_sha256")),
                ("signed at", r.signed_at),
                ("signature (hex)", signature.get("value")),
                ("investigator report SHA-256", investigator.get("report_sha256", "-")),
                ("investigator signature (hex)", investigator.get("value", "-")),
            ]
        )
    }
</table>
<h3>Node certificate</h3>
<pre>{html.escape(str(signature.get("certificate_pem", "")))}</pre>
<p>This page is a rendering. The JSON file beside it is the evidence: check it with
<code>fedtrace report verify FILE.json --ca CA.pem</code>.</p>
</body></html>
"""
