"""Retrying a node call that failed for a passing reason, with backoff and a bounded total time.

Transient: ``UNAVAILABLE`` (the node restarting, a connection reset; not a TLS
certificate rejection, which a retry cannot fix) and ``RESOURCE_EXHAUSTED``
without a renewal time (the node busy at its concurrency limit, or gRPC's
concurrent-RPC limit). A budget or rate limit that renews later carries
``fedtrace-renews-at`` and is not retried: the answer would be the same until then.

Each retry runs the whole node exchange again, so the node sees a fresh nonce
(node.replay); an attempt that failed after the node had settled its answer is
charged twice — the safe side.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedtrace.wire import RENEWS_AT_METADATA

T = TypeVar("T")
_PERMANENT_UNAVAILABLE = ("Hostname Verification", "CERTIFICATE_VERIFY_FAILED")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying; backoff starts at `first_backoff`, grows ×`multiplier` up to
    `max_backoff`, with jitter so busy investigators do not retry in step.

    A node that is down (UNAVAILABLE) gets `unavailable_attempts` tries; a node that
    says it is busy is retried while `busy_budget_seconds` of waiting and the query
    deadline last — it asked to be retried, and a busy answer costs it nothing.
    """

    unavailable_attempts: int = 4
    busy_budget_seconds: float = 30.0
    first_backoff: float = 0.25
    multiplier: float = 2.0
    max_backoff: float = 2.0


def is_busy(exc: grpc.RpcError) -> bool:
    """RESOURCE_EXHAUSTED that will pass soon: no renewal time, not the per-request ceiling."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    trailing = getattr(exc, "trailing_metadata", lambda: None)() or ()
    renews = any(key == RENEWS_AT_METADATA for key, _ in trailing)
    return not renews and "ceiling" not in (exc.details() or "")


def is_transient(exc: grpc.RpcError) -> bool:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return not any(marker in (exc.details() or "") for marker in _PERMANENT_UNAVAILABLE)
    return is_busy(exc)


def with_retries(
    call: Callable[[], T],
    deadline: float,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `call`; on a transient gRPC error sleep and run it again, never past `deadline`."""
    backoff = policy.first_backoff
    unavailable = 0
    slept_busy = 0.0
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not is_transient(exc):
                raise
            busy = is_busy(exc)
            unavailable += 0 if busy else 1
            pause = min(backoff * random.uniform(0.5, 1.0), deadline - clock() - 0.05)
            if busy:
                pause = min(pause, policy.busy_budget_seconds - slept_busy)
            elif unavailable >= policy.unavailable_attempts:
                raise
            if pause < 0.01:  # no time left worth waiting for
                raise
        sleep(pause)
        slept_busy += pause if busy else 0.0
        backoff = min(backoff * policy.multiplier, policy.max_backoff)
