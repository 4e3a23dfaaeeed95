"""The Dask backend of an epoch build: chunks blinded on an existing cluster or a LocalCluster.

``[compute] scheduler = "tls://HOST:PORT"`` (or ``tcp://`` on loopback) connects to
a running scheduler with this node's client certificate (`distributed.security.
Security`); ``"local"`` starts a LocalCluster for the build, one single-threaded
worker process per core, talking TLS with a throwaway certificate, its scratch
directory inside the node directory. ``distributed`` is imported here only, and
this module only when a scheduler is configured.

What a worker sees: the chunks' items in clear and the epoch's secret scalar, for
the duration of the build. The scalar travels inside each task's argument
(`node.epochs.tasks.BlindChunk`, whose ``repr`` hides it) and never in a task key
(keys are ``fedtrace-blind-<random build id>-<chunk>``). Results are held in
worker memory until this node gathers them, then released; spilling to disk is
switched off for clusters this module starts, and the operator of an external
cluster must switch it off too (docs/scale-out.md).

A worker that dies mid-task has its chunks rerun on the others (the scheduler's
``allowed-failures``); a task that fails is retried `TASK_RETRIES` times; a chunk
whose worker died every time, a lost scheduler, or no worker for
`NO_WORKER_SECONDS` fails the build with `EpochBuildError` and nothing is stored.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from node.config import LOCAL_CLUSTER, ComputeConfig
from node.epochs import EpochBuildError
from node.epochs.tasks import BlindChunk, blind_and_hash

log = logging.getLogger(__name__)

CONNECT_SECONDS = 30.0
TASK_RETRIES = 2
#: A build waits this long for a worker to (re)appear before it fails.
NO_WORKER_SECONDS = 60.0
#: How often a build waiting for a chunk checks that workers remain.
POLL_SECONDS = 2.0
#: Where a LocalCluster's workers keep their (unused: no spill) scratch space.
SCRATCH_DIR = "compute"
#: Dask settings for clusters this module starts: results stay in memory, never on disk.
NO_SPILL = {
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.target": False,
}


def cluster_security(compute: ComputeConfig) -> Any:
    """The client's TLS settings for a ``tls://`` scheduler; None for loopback ``tcp://``."""
    from distributed.security import Security

    if not compute.scheduler.startswith("tls://"):
        return None
    security: Any = Security  # distributed ships no complete type information
    return security(
        tls_ca_file=str(compute.tls_ca),
        tls_client_cert=str(compute.tls_cert),
        tls_client_key=str(compute.tls_key),
        require_encryption=True,
    )


def _local_cluster(node_dir: Path, stack: ExitStack) -> tuple[Any, Any]:
    """A LocalCluster over TLS with a throwaway certificate, scratch space in the node dir."""
    import dask
    import distributed
    from distributed.security import Security

    temporary: Any = Security.temporary  # distributed ships no complete type information
    local_cluster: Any = distributed.LocalCluster

    scratch = node_dir / SCRATCH_DIR
    scratch.mkdir(mode=0o700, exist_ok=True)
    os.chmod(scratch, 0o700)
    # Dask's own lock files too: nothing of a build lands outside the node directory.
    stack.enter_context(dask.config.set({"temporary-directory": str(scratch)}))
    security = temporary()
    cluster = stack.enter_context(
        local_cluster(
            n_workers=os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            protocol="tls://",
            security=security,
            dashboard_address=None,
            local_directory=str(scratch),
            silence_logs=logging.WARNING,
        )
    )
    return cluster, security


@contextmanager
def dask_blinder(compute: ComputeConfig, node_dir: Path) -> Iterator[DaskBlinder]:
    """A connected `DaskBlinder` for one build; the client (and a LocalCluster) close after."""
    import dask
    import distributed

    client_type: Any = distributed.Client  # distributed ships no complete type information

    # Importing distributed sets its loggers to INFO: the node's log keeps its warnings only.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with ExitStack() as stack:
        stack.enter_context(dask.config.set(NO_SPILL))
        try:
            if compute.scheduler == LOCAL_CLUSTER:
                address, security = _local_cluster(node_dir, stack)
            else:
                address, security = compute.scheduler, cluster_security(compute)
            client = stack.enter_context(
                client_type(
                    address, security=security, timeout=CONNECT_SECONDS, set_as_default=False
                )
            )
            client.wait_for_workers(1, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise EpochBuildError(
                f"cannot build the epoch on the Dask cluster at {compute.scheduler}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        yield DaskBlinder(client)


class DaskBlinder:
    """Blinds chunks on a Dask cluster, a bounded number in flight, results in chunk order."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.build_id = secrets.token_hex(6)  # names this build's tasks; says nothing else

    def __repr__(self) -> str:
        return f"DaskBlinder({self.build_id})"

    def threads(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return sum(int(worker.get("nthreads", 1)) for worker in workers.values())

    def __call__(self, chunks: Iterable[BlindChunk]) -> Iterator[bytes]:
        in_flight = max(2, 2 * self.threads())
        window: deque[tuple[int, Any]] = deque()
        source = iter(chunks)
        try:
            while True:
                while len(window) < in_flight:
                    chunk = next(source, None)
                    if chunk is None:
                        break
                    window.append((chunk.index, self._submit(chunk)))
                if not window:
                    return
                index, future = window.popleft()
                yield self._result(index, future)
        finally:
            for _, future in window:
                future.cancel()

    def _submit(self, chunk: BlindChunk) -> Any:
        return self.client.submit(
            blind_and_hash,
            chunk,
            key=f"fedtrace-blind-{self.build_id}-{chunk.index}",
            pure=False,
            retries=TASK_RETRIES,
        )

    def _result(self, index: int, future: Any) -> bytes:
        from distributed import KilledWorker

        waited_without_workers = 0.0
        while True:
            try:
                result = future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                if self.threads():
                    waited_without_workers = 0.0
                    continue
                waited_without_workers += POLL_SECONDS
                if waited_without_workers >= NO_WORKER_SECONDS:
                    raise EpochBuildError(
                        f"no Dask worker for {NO_WORKER_SECONDS:.0f} s while chunk {index} "
                        "was pending; the epoch was not built"
                    ) from None
                continue
            except KilledWorker:
                raise EpochBuildError(
                    f"chunk {index} of the epoch build killed every Dask worker that ran it; "
                    "the epoch was not built (are the workers short of memory?)"
                ) from None
            except Exception as exc:  # a task error or a lost scheduler: say which, no args
                raise EpochBuildError(
                    f"chunk {index} of the epoch build failed on the cluster: "
                    f"{type(exc).__name__}: {str(exc)[:200]}"
                ) from None
            if not isinstance(result, bytes):
                raise EpochBuildError(f"chunk {index} came back as {type(result).__name__}")
            future.release()
            return result

    def worker_peak_rss(self) -> dict[str, int]:
        """Each worker's peak resident memory in bytes (Linux), for the scale benchmark."""
        peaks: dict[str, int] = self.client.run(_peak_rss)
        return peaks


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
