"""The bookkeeping around one query RPC, written once: slot, admission, settlement, refusal.

Every servicer method that answers a query runs inside `query_session`:

- `QuerySession.stream` bounds the wait for the stream's first message (its
  header): a call that sends nothing for ``first_message_seconds`` is refused
  with DEADLINE_EXCEEDED, audited;
- `QuerySession.admit` goes through the node's gate (`node.gate`); only an
  admitted query then takes one of the node's bounded query slots, and at most
  ``per_partner`` of them for one partner (else RESOURCE_EXHAUSTED, audited,
  charge refunded), released when the call ends: a caller who is not granted
  anything never holds a slot;
- `QuerySession.answered` settles the admission before the answer leaves;
- a `QueryRefused` raised inside settles the admission as refused (charge
  refunded), or, before admission, records the refusal with what is known of
  the request; any other error settles it as failed; then the refusal leaves
  through `abort`.

`abort` is the one way a refusal becomes a gRPC status: every refusal that has
a renewal time carries it in the `RENEWS_AT_METADATA` trailer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import grpc

from fedtrace.pki import Identity
from fedtrace.wire import RENEWS_AT_FORMAT, RENEWS_AT_METADATA, Level
from node.auth import peer_identity
from node.gate import Admission, Outcome, QueryContextInfo, QueryRefused
from node.policy import QueryKind
from node.state import NodeState

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


def first_within(requests: Iterator[T], seconds: float) -> Iterator[T]:
    """`requests`, but its first message must arrive within `seconds` (else DEADLINE_EXCEEDED).

    The first message is awaited on a helper thread, so a caller who opens a stream
    and sends nothing holds the servicer only this long; the helper ends with the call.
    """
    arrived: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def read() -> None:
        try:
            arrived.put((True, next(requests, _END)))
        except BaseException as exc:  # noqa: BLE001 - handed to the servicer's thread
            arrived.put((False, exc))

    threading.Thread(target=read, daemon=True, name="first-message").start()
    try:
        ok, value = arrived.get(timeout=seconds)
    except queue.Empty:
        raise QueryRefused(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the stream sent no header within {seconds:g} seconds; the call is closed",
        ) from None
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    if value is _END:
        return
    yield cast(T, value)
    yield from requests


def abort(context: grpc.ServicerContext, refusal: QueryRefused) -> NoReturn:
    """End the call with the refusal's status and message (and its renewal time, if any)."""
    if refusal.renews_at is not None and hasattr(context, "set_trailing_metadata"):
        context.set_trailing_metadata(
            ((RENEWS_AT_METADATA, refusal.renews_at.astimezone(dt.UTC).strftime(RENEWS_AT_FORMAT)),)
        )
    context.abort(refusal.code, str(refusal))
    raise AssertionError("grpc.ServicerContext.abort returned")  # it always raises


def caller(context: grpc.ServicerContext) -> Identity:
    """The identity of the calling certificate (the IdentityInterceptor refused any other)."""
    identity = peer_identity(context)
    assert identity is not None  # IdentityInterceptor guarantees it
    return identity


@dataclass
class QuerySession:
    """One query in progress: who asks, what is known of the request, and its admission."""

    state: NodeState
    identity: Identity
    kind: QueryKind
    asked: Level | None = None  # recorded with a refusal before admission
    dataset: str = ""
    context: QueryContextInfo | None = None
    item_count: int = 0
    admission: Admission | None = None
    slot: bool = False  # whether an admitted query must hold a query slot
    holding: bool = False  # it holds one now

    def stream(self, requests: Iterator[T]) -> Iterator[T]:
        """The request stream, its first message bounded by ``first_message_seconds``."""
        return first_within(requests, self.state.config.limits.first_message_seconds)

    def hold_slot(self) -> None:
        """Take a query slot for an authorised call, or raise QueryRefused (RESOURCE_EXHAUSTED)."""
        if not self.slot or self.holding:
            return
        state, partner = self.state, self.identity.jurisdiction
        limits = state.config.limits
        if not state.concurrency.acquire(blocking=False):
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{state.config.jurisdiction} is answering its maximum of "
                f"{limits.max_concurrent_queries} queries; retry shortly",
            )
        if not state.partner_queries.acquire(partner, limits.per_partner):
            state.concurrency.release()
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{partner} already has {limits.per_partner} queries in progress at "
                f"{state.config.jurisdiction}, its maximum; retry when one ends",
            )
        self.holding = True

    def release_slot(self) -> None:
        if self.holding:
            self.holding = False
            self.state.partner_queries.release(self.identity.jurisdiction)
            self.state.concurrency.release()

    def describe(self, dataset: str, context: QueryContextInfo, item_count: int) -> None:
        """What a refusal before admission records of the request."""
        self.dataset, self.context, self.item_count = dataset, context, item_count

    def admit(
        self,
        dataset: str,
        context: QueryContextInfo,
        item_count: int,
        asked: Level,
        *,
        epsilon: float = 0.0,
        columns: Sequence[str] = (),
    ) -> Admission:
        """Admit the request through the gate (audited, charged) or raise QueryRefused."""
        self.describe(dataset, context, item_count)
        self.admission = self.state.gate.admit(
            self.identity,
            self.kind,
            dataset,
            context,
            item_count,
            asked,
            epsilon=epsilon,
            columns=columns,
        )
        self.hold_slot()  # authorisation first, resources after
        return self.admission

    def answered(
        self, *, transcript_sha256: str = "", details: Mapping[str, Any] | None = None
    ) -> None:
        """Settle the admission as answered: call it before the first byte of the answer."""
        assert self.admission is not None, "answered before admitted"
        self.state.gate.settle(
            self.admission, Outcome.ANSWERED, transcript_sha256=transcript_sha256, details=details
        )


@contextlib.contextmanager
def query_session(
    state: NodeState,
    context: grpc.ServicerContext,
    kind: QueryKind,
    *,
    asked: Level | None = None,
    slot: bool = True,
    label: str = "query",
) -> Iterator[QuerySession]:
    """Slot → admit → settle → release around one query RPC; refusals leave through `abort`.

    `slot=False` for calls that hold no query slot (an overlap join, a follow-up
    request); otherwise the slot is taken once the query is admitted
    (`QuerySession.admit`) or otherwise authorised (`QuerySession.hold_slot`).
    `label` names the query in the node's log.
    """
    identity = caller(context)
    gate = state.gate
    session = QuerySession(state, identity, kind, asked, slot=slot)
    try:
        yield session
    except QueryRefused as refusal:
        log.info(
            "%s refused: partner=%s code=%s reason=%s",
            label,
            identity.jurisdiction,
            refusal.code.name,
            refusal,
        )
        if session.admission is not None:
            gate.settle(session.admission, Outcome.REFUSED, reason=str(refusal), code=refusal.code)
        elif not refusal.audited:
            gate.refuse(
                identity,
                kind,
                refusal,
                dataset=session.dataset,
                context=session.context,
                item_count=session.item_count,
                asked=asked,
            )
        abort(context, refusal)
    except BaseException:
        if session.admission is not None:  # nothing was disclosed unless settled as answered
            gate.settle(
                session.admission,
                Outcome.FAILED,
                reason="internal error",
                code=grpc.StatusCode.INTERNAL,
            )
        raise
    finally:
        session.release_slot()
