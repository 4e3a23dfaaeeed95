"""Who is calling: the peer's identity from its client certificate, checked in one interceptor.

TLS already refused certificates not issued by the federation CA; this layer
rejects certificates that carry no usable fedtrace identity, so servicers only
ever see authenticated calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc

from fedtrace.pki import Identity, InvalidCertificate, identity_from_pem

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
    """Aborts with UNAUTHENTICATED any fedtrace call whose certificate names no identity."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        return _guarded(handler)


def _guarded(handler: Any) -> Any:
    def check(context: grpc.ServicerContext) -> None:
        if peer_identity(context) is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "client certificate carries no fedtrace identity (CN=jurisdiction, "
                "OU=node|investigator); ask the federation secretariat for a certificate",
            )

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_ss(requests, context)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_su = handler.stream_unary

    def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return inner_su(requests, context)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, handler.request_deserializer, handler.response_serializer
    )
