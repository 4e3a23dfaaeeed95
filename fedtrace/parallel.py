"""A reusable process pool for CPU-bound protocol work (blinding, exponentiation).

The group operations run inside the node's gRPC server process, where ``fork`` is
unsafe (gRPC's threads and locks would be copied mid-flight), so workers are
started with ``forkserver`` where the platform has it and ``spawn`` otherwise.
The pool is created lazily on first use, shared by every caller, and shut down
at interpreter exit.

Work is handed over as plain ``bytes`` chunks and comes back as ``bytes``, so
the only serialisation is multiprocessing's own transfer of those arguments.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

ChunkResult = TypeVar("ChunkResult")

_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_busy = 0  # callers inside run_chunks / stream_chunks right now (under _pool_lock)


def default_workers(workers: int | None) -> int:
    """Resolve a ``workers`` argument: ``None`` means every CPU, and at least one."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def _start_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def worker_pool(min_size: int) -> ProcessPoolExecutor:
    """Return the shared pool, creating it (or growing it) to at least ``min_size`` processes.

    Growing replaces the pool only when no larger one exists; the old pool
    finishes its queued work before its processes exit.
    """
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < min_size:
            old = _pool
            size = max(min_size, os.cpu_count() or 1)
            context = multiprocessing.get_context(_start_method())
            _pool = ProcessPoolExecutor(max_workers=size, mp_context=context)
            _pool_size = size
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def pool_ready(size: int) -> bool:
    """Whether the shared pool already runs ``size`` workers and no caller is using it.

    A mid-sized batch handed to it then pays no start-up and does not wait behind
    long chunks (an epoch being built); otherwise the caller stays in its process.
    """
    with _pool_lock:
        return _pool is not None and _pool_size >= size and _busy == 0


def warm_pool(size: int | None = None) -> None:
    """Start the shared pool now, every worker forked and answering.

    A serving node calls it once at start, so its first mid-sized request already finds
    the pool running (`pool_ready`) instead of staying on one core.
    """
    workers = default_workers(size)
    if workers < 2:
        return
    run_chunks(_ready, [(index,) for index in range(workers)], workers)


def _ready(index: int) -> int:
    return index + 1  # the worker is forked and answering; tasks import what they need


@contextlib.contextmanager
def _using_pool() -> Iterator[None]:
    global _busy
    with _pool_lock:
        _busy += 1
    try:
        yield
    finally:
        with _pool_lock:
            _busy -= 1


def shutdown_pool() -> None:
    """Stop the shared pool's processes (idempotent; registered with atexit)."""
    global _pool, _pool_size
    with _pool_lock:
        pool, _pool, _pool_size = _pool, None, 0
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pool)


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is pool:
            _pool, _pool_size = None, 0
    pool.shutdown(wait=False, cancel_futures=True)


def run_chunks(
    task: Callable[..., ChunkResult],
    chunk_args: Sequence[tuple[object, ...]],
    parallelism: int,
) -> list[ChunkResult]:
    """Run ``task(*args)`` for every chunk on the pool; results come back in chunk order.

    At most ``parallelism`` chunks are in flight at once, so a caller asking for
    two workers uses two processes even when the shared pool is larger.
    ``task`` must be a module-level function (it is sent to the workers by name).
    """
    with _using_pool():
        return _run_chunks(task, chunk_args, parallelism)


def _run_chunks(
    task: Callable[..., ChunkResult],
    chunk_args: Sequence[tuple[object, ...]],
    parallelism: int,
) -> list[ChunkResult]:
    pool = worker_pool(parallelism)
    results: list[ChunkResult | None] = [None] * len(chunk_args)
    pending: dict[Future[ChunkResult], int] = {}
    next_chunk = 0
    try:
        while next_chunk < len(chunk_args) or pending:
            while next_chunk < len(chunk_args) and len(pending) < parallelism:
                pending[pool.submit(task, *chunk_args[next_chunk])] = next_chunk
                next_chunk += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
    except BrokenProcessPool:
        _discard_pool(pool)  # a worker died; the next call starts a fresh pool
        raise
    finally:
        for future in pending:
            future.cancel()
    return [result for result in results if result is not None]


def stream_chunks(
    task: Callable[..., ChunkResult],
    chunk_args: Iterable[tuple[object, ...]],
    parallelism: int,
    *,
    in_flight: int | None = None,
) -> Iterator[ChunkResult]:
    """Like `run_chunks`, but chunks are drawn lazily and results yielded in chunk order.

    At most ``in_flight`` chunks (default ``2 * parallelism``) are submitted and not yet
    yielded, so a caller streaming a large input holds a bounded number of chunks.
    """
    with _using_pool():
        yield from _stream_chunks(task, chunk_args, parallelism, in_flight)


def _stream_chunks(
    task: Callable[..., ChunkResult],
    chunk_args: Iterable[tuple[object, ...]],
    parallelism: int,
    in_flight: int | None,
) -> Iterator[ChunkResult]:
    limit = max(parallelism, in_flight or 2 * parallelism)
    pool = worker_pool(parallelism)
    source = iter(chunk_args)
    window: list[Future[ChunkResult]] = []
    exhausted = False
    try:
        while True:
            while not exhausted and len(window) < limit:
                args = next(source, None)
                if args is None:
                    exhausted = True
                else:
                    window.append(pool.submit(task, *args))
            if not window:
                return
            yield window.pop(0).result()
    except BrokenProcessPool:
        _discard_pool(pool)  # a worker died; the next call starts a fresh pool
        raise
    finally:
        for future in window:
            future.cancel()


def chunk_bounds(count: int, chunks: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into ``chunks`` contiguous, nearly equal ``(start, stop)`` pairs."""
    chunks = max(1, min(chunks, count))
    base, extra = divmod(count, chunks)
    bounds: list[tuple[int, int]] = []
    start = 0
    for index in range(chunks):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
