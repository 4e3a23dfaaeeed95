"""Who is calling: the peer's identity from its client certificate, checked in one interceptor.

TLS already refused certificates not issued by the federation CA; this layer
rejects certificates that carry no usable fedtrace identity, and certificates the
federation revoked (fedtrace.revocation; each attempt is audited), so servicers
only ever see authenticated calls. It also turns a request that does not decode
as its protobuf message into INVALID_ARGUMENT (gRPC's own answer would be
INTERNAL), for every RPC registered on the node.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from fedtrace.pki import ROLE_MONITOR, Identity, InvalidCertificate, identity_from_pem
from fedtrace.revocation import RevocationWatch
from node.audit import AuditError, AuditLog

log = logging.getLogger(__name__)

# Services anyone with a federation certificate may call without a fedtrace identity check.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@functools.lru_cache(maxsize=256)
def _identity(pem: bytes) -> Identity:
    return identity_from_pem(pem)


def peer_identity(context: grpc.ServicerContext) -> Identity | None:
    """The identity in the peer's verified certificate, or None when it has none usable."""
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        return None
    try:
        return _identity(certs[0])
    except InvalidCertificate:
        return None


class IdentityInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Aborts with UNAUTHENTICATED any fedtrace call whose certificate names no identity
    or is revoked in the federation's revocation list (audited when `audit` is given)."""

    def __init__(
        self, revocations: RevocationWatch | None = None, audit: AuditLog | None = None
    ) -> None:
        self._revocations = revocations
        self._audit = audit

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        return _guarded(handler, lambda context: self._check(context, details.method))

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        identity = peer_identity(context)
        if identity is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "client certificate carries no fedtrace identity (CN=jurisdiction, "
                "OU=node|investigator); ask the federation secretariat for a certificate",
            )
            return
        if identity.role == ROLE_MONITOR:  # a supervisor reads exports; it is no partner
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity.jurisdiction} holds a monitor certificate; monitors take no part in "
                "queries (they receive 'fedtrace node monitor-export')",
            )
            return
        revoked = self._revocations.current().find(identity) if self._revocations else None
        if revoked is None:
            return
        reason = (
            f"the certificate of {identity.describe()} was revoked by the federation"
            f"{' on ' + revoked.revoked_at if revoked.revoked_at else ''}"
            f"{' (' + revoked.reason + ')' if revoked.reason else ''}; "
            "ask the federation secretariat for a new certificate"
        )
        if self._audit is not None:
            try:
                self._audit.append(
                    "peer-refused",
                    {
                        "peer": {
                            "jurisdiction": identity.jurisdiction,
                            "role": identity.role,
                            "subject": identity.subject,
                            "serial": identity.serial,
                            "fingerprint_sha256": identity.fingerprint_sha256,
                        },
                        "method": method,
                        "outcome": "refused",
                        "code": grpc.StatusCode.UNAUTHENTICATED.name,
                        "reason": reason,
                    },
                )
            except AuditError as exc:
                log.error("revoked peer refused and not audited: %s", exc)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)


class _Undecodable:
    """Stands in for a request that did not decode, so the call can answer INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(deserializer: Any) -> Any:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 - any decode failure is the caller's bad input
            return _Undecodable(f"the request is not a valid {name} message")

    return decode


def _decoded(request: Any, context: grpc.ServicerContext) -> Any:
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    return request


def _decoded_stream(requests: Any, context: grpc.ServicerContext) -> Any:
    for request in requests:
        yield _decoded(request, context)


def _guarded(handler: Any, check: Callable[[grpc.ServicerContext], None]) -> Any:

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_uu(_decoded(request, context), context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _lenient(handler.request_deserializer), handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_us(_decoded(request, context), context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _lenient(handler.request_deserializer), handler.response_serializer
        )
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_ss(_decoded_stream(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, _lenient(handler.request_deserializer), handler.response_serializer
        )
    inner_su = handler.stream_unary

    def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return inner_su(_decoded_stream(requests, context), context)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, _lenient(handler.request_deserializer), handler.response_serializer
    )
