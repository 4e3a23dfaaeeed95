"""Peer PSI libraries against the additive-blinding prototype, same sets, one process.

python -m fedtrace.bench.peers [NODE_ITEMS] [WATCHLIST] [HELD] [--only LIB] [--seed N]

Runs, on one synthetic node set and one watchlist (``HELD`` of whose items the
node holds):

- SecretFlow's unbalanced ECDH-OPRF PSI (``spu.psi.ub_psi_execute``, the
  ``spu`` 0.9.5 wheel): offline (server cache built and transferred) and online
  (client query), both parties as threads over an in-memory link;
- OpenMined PSI (``private_set_intersection``): server setup message (offline)
  and the request/response/intersection round (online);
- fedtrace's membership exchange with multiplicative blinding (today) and with
  additive blinding (``fedtrace.blinding``): node epoch build and coordinator
  pool preparation offline; coordinator hash + add, node validate + multiply on
  every core, coordinator validate + subtract and the filter test online.

A library that is not importable is reported as skipped with the reason. No
network and no node processes: these are compute figures, to be compared as
ratios within one run (the machine may be shared).

The module's top level needs only the standard library: ``scripts/bench --psi``
(``fedtrace.bench.psi``) runs ``--only secretflow`` under a separate peers
interpreter, because spu 0.9.5 pins numpy below 2, and merges the JSON it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

Timings = dict[str, Any]

#: The libraries ``--only`` can name, in the order ``run_all`` runs them.
LIBRARIES = ("secretflow", "openmined", "fedtrace")


def make_sets(
    node_items: int, watchlist: int, held: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A node's wallets and a watchlist of which exactly ``held`` are among them.

    Deterministic for (sizes, ``seed``), so two processes build the same sets; the
    addresses are canonical lower-case Ethereum addresses. Seed 0 keeps the sets of
    earlier runs.
    """
    if held > min(node_items, watchlist):
        raise ValueError("cannot hold more watchlist items than either set has")
    prefix = f"{seed}:" if seed else ""

    def address(label: str, index: int) -> str:
        return "0x" + hashlib.sha256(f"{prefix}{label}-{index}".encode()).hexdigest()[:40]

    node = [address("node", index) for index in range(node_items)]
    step = max(1, node_items // max(held, 1))
    wanted = [node[index * step] for index in range(held)]
    wanted += [address("absent", index) for index in range(watchlist - held)]
    return node, wanted


def _skipped(reason: str) -> Timings:
    print(f"skipped: {reason}", file=sys.stderr)
    return {"skipped": reason}


def _write_csv(path: Path, items: Sequence[str]) -> None:
    path.write_text("id\n" + "\n".join(items) + "\n")


def run_secretflow(node: Sequence[str], watchlist: Sequence[str]) -> Timings:
    """SecretFlow unbalanced PSI: server = the node, client = the coordinator."""
    try:
        spu_psi: Any = importlib.import_module("spu.psi")
        link: Any = importlib.import_module("spu.libspu.link")
    except ImportError as exc:
        return _skipped(f"spu is not importable ({exc}); pip install spu==0.9.5")
    with tempfile.TemporaryDirectory(prefix="fedtrace-peers-") as tmp:
        work = Path(tmp)
        _write_csv(work / "server.csv", node)
        _write_csv(work / "client.csv", watchlist)
        key = work / "server.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        csv = spu_psi.SourceType.SOURCE_TYPE_FILE_CSV
        server_params = spu_psi.UbPsiServerParams(secret_key_path=str(key))

        def config(mode: str, role: str, **extra: Any) -> Any:
            return spu_psi.UbPsiExecuteConfig(
                mode=spu_psi.parse_ub_psi_mode(mode),
                role=spu_psi.parse_ub_psi_role(role),
                cache_path=str(
                    work / ("server.cache" if role == "ROLE_SERVER" else "client.cache")
                ),
                **extra,
            )

        offline = [
            config(
                "MODE_OFFLINE",
                "ROLE_SERVER",
                input_params=spu_psi.InputParams(
                    type=csv, path=str(work / "server.csv"), selected_keys=["id"]
                ),
                server_params=server_params,
            ),
            config("MODE_OFFLINE", "ROLE_CLIENT"),
        ]
        online = [
            config(
                "MODE_ONLINE",
                "ROLE_SERVER",
                server_params=server_params,
                output_params=spu_psi.OutputParams(type=csv),
            ),
            config(
                "MODE_ONLINE",
                "ROLE_CLIENT",
                client_receive_result=True,
                input_params=spu_psi.InputParams(
                    type=csv, path=str(work / "client.csv"), selected_keys=["id"]
                ),
                output_params=spu_psi.OutputParams(type=csv, path=str(work / "out.csv")),
            ),
        ]
        with _stdout_to_stderr():  # libpsi logs to file descriptor 1
            offline_seconds = _two_parties(link, spu_psi, offline)
            online_seconds = _two_parties(link, spu_psi, online)
        found = len((work / "out.csv").read_text().splitlines()) - 1
    return {
        "offline_s": offline_seconds,
        "online_s": online_seconds,
        "total_s": offline_seconds + online_seconds,
        "intersection": found,
        "curve": "FourQ (ub_psi default)",
    }


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _two_parties(link: Any, spu_psi: Any, configs: Sequence[Any]) -> float:
    """Both ranks as threads over an in-memory link; wall-clock seconds for the pair."""
    desc = link.Desc()
    desc.add_party("server", "127.0.0.1:0")
    desc.add_party("client", "127.0.0.1:0")
    errors: list[BaseException] = []

    def party(rank: int) -> None:
        try:
            spu_psi.ub_psi_execute(configs[rank], link.create_mem(desc, rank))
        except BaseException as exc:  # reported below, the other party may hang otherwise
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"SecretFlow ub_psi failed: {errors[0]}")
    return time.perf_counter() - started


def run_openmined(node: Sequence[str], watchlist: Sequence[str]) -> Timings:
    """OpenMined PSI (ECDH over P-256, GCS setup), intersection revealed to the client."""
    try:
        om: Any = importlib.import_module("private_set_intersection.python")
    except ImportError as exc:
        return _skipped(f"openmined_psi is not importable ({exc})")
    started = time.perf_counter()
    server = om.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(watchlist), list(node), om.DataStructure.GCS)
    offline = time.perf_counter() - started
    started = time.perf_counter()
    client = om.client.CreateWithNewKey(True)
    request = client.CreateRequest(list(watchlist))
    response = server.ProcessRequest(request)
    found = len(client.GetIntersection(setup, response))
    online = time.perf_counter() - started
    return {
        "offline_s": offline,
        "online_s": online,
        "total_s": offline + online,
        "intersection": found,
    }


# Pool task: the node's evaluate step on one chunk (module-level: sent to workers by name).
# fedtrace's modules are imported inside the functions: the SecretFlow part of this module
# runs under a peers interpreter (``python -m fedtrace.bench.peers --only secretflow``)
# that has spu and the standard library, and perhaps nothing else.


def _evaluate_chunk(points_blob: bytes, key: bytes) -> bytes:
    import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

    from fedtrace import group

    multiply: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255
    out = []
    for index, point in enumerate(group.split_points(points_blob)):
        group.validate_point(point, index)
        out.append(multiply(key, point))
    return b"".join(out)


def _evaluate_on_cores(points: Sequence[bytes], key: bytes, workers: int) -> list[bytes]:
    """The node's validate + multiply split over ``workers`` processes, whatever the size."""
    from fedtrace import group, parallel, psi

    if workers == 1:
        return psi.evaluate(points, key, workers=1)
    bounds = parallel.chunk_bounds(len(points), workers)
    args: list[tuple[object, ...]] = [(b"".join(points[a:b]), key) for a, b in bounds]
    return group.split_points(b"".join(parallel.run_chunks(_evaluate_chunk, args, workers)))


def _timed(timings: Timings, name: str, step: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = step()
    timings[name] = time.perf_counter() - started
    return value


#: The additive exchange's online steps, in order: their sum is ``additive_online_s``.
ADDITIVE_STEPS = (
    "online_coordinator_hash_add_s",
    "online_node_evaluate_s",
    "online_coordinator_sub_s",
    "online_filter_test_s",
)


def run_fedtrace(node: Sequence[str], watchlist: Sequence[str], workers: int) -> Timings:
    """fedtrace's exchange, multiplicative and additive, compute only.

    ``online_node_evaluate_s`` splits the node's validate + multiply over every core;
    ``online_node_evaluate_as_served_s`` is the same step as a serving node runs it
    (``psi.evaluate`` with its defaults: every core above ``group.WARM_PARALLEL_THRESHOLD``
    once the pool runs, one core below it).
    """
    from fedtrace import blinding, gcs, group, parallel, psi
    from fedtrace.items import item_bytes

    parallel.run_chunks(_evaluate_chunk, [(b"", b"")] * workers, workers)  # start the workers
    node_items = [item_bytes("wallet", item) for item in node]
    watch_items = [item_bytes("wallet", item) for item in watchlist]
    timings: Timings = {"workers": workers}
    key = group.random_scalar()
    table = _timed(
        timings, "offline_node_epoch_s", lambda: psi.build_table(node_items, key, workers=workers)
    )
    filter_ = _timed(timings, "offline_node_filter_s", lambda: gcs.build_filter(table))
    binding = blinding.PoolBinding("node", "wallets", "epoch", blinding.blinding_point(key))
    pool = _timed(
        timings,
        "offline_coordinator_pool_s",
        lambda: blinding.prepare_pool(binding, len(watch_items), workers=workers),
    )

    sent, entries = _timed(
        timings,
        "online_coordinator_hash_add_s",
        lambda: blinding.hash_and_blind(watch_items, pool, binding),
    )
    answers = _timed(
        timings, "online_node_evaluate_s", lambda: _evaluate_on_cores(sent, key, workers)
    )
    _timed(timings, "online_node_evaluate_as_served_s", lambda: psi.evaluate(sent, key))
    unblinded = _timed(
        timings, "online_coordinator_sub_s", lambda: blinding.unblind(answers, entries)
    )
    hits = _timed(timings, "online_filter_test_s", lambda: psi.membership(unblinded, filter_))
    timings["additive_online_s"] = sum(timings[name] for name in ADDITIVE_STEPS)
    timings["additive_intersection"] = sum(hits)

    query = _timed(
        timings, "mult_coordinator_blind_s", lambda: psi.BlindedQuery(watch_items, workers=1)
    )
    evaluated = _timed(
        timings, "mult_node_evaluate_s", lambda: _evaluate_on_cores(query.blinded, key, workers)
    )
    mult_unblinded = _timed(timings, "mult_coordinator_unblind_s", lambda: query.unblind(evaluated))
    mult_hits = _timed(
        timings, "mult_filter_test_s", lambda: psi.membership(mult_unblinded, filter_)
    )
    timings["multiplicative_online_s"] = sum(
        timings[name]
        for name in (
            "mult_coordinator_blind_s",
            "mult_node_evaluate_s",
            "mult_coordinator_unblind_s",
            "mult_filter_test_s",
        )
    )
    timings["multiplicative_intersection"] = sum(mult_hits)
    return timings


def run_all(
    node_items: int,
    watchlist: int,
    held: int,
    workers: int | None = None,
    *,
    only: Sequence[str] = LIBRARIES,
    seed: int = 0,
) -> Timings:
    """The libraries named in ``only`` on the same sets; one dict, timings in seconds."""
    node, wanted = make_sets(node_items, watchlist, held, seed)
    result: Timings = {
        "sizes": {"node_items": node_items, "watchlist": watchlist, "held": held, "seed": seed},
        "load_average_1m": os.getloadavg()[0],
    }
    if "secretflow" in only:
        result["secretflow_ub_psi"] = run_secretflow(node, wanted)
    if "openmined" in only:
        result["openmined_psi"] = run_openmined(node, wanted)
    if "fedtrace" in only:
        from fedtrace import parallel

        result["fedtrace"] = run_fedtrace(node, wanted, parallel.default_workers(workers))
    return result


def _count(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def main(argv: Sequence[str]) -> None:
    """``[NODE_ITEMS [WATCHLIST [HELD]]] [--only LIB ...] [--seed N]``: one JSON object on
    standard output; everything the libraries log goes to standard error."""
    parser = argparse.ArgumentParser(prog="python -m fedtrace.bench.peers")
    parser.add_argument("sizes", nargs="*", type=_count, metavar="N")
    parser.add_argument("--only", action="append", choices=LIBRARIES, help="repeatable")
    parser.add_argument("--seed", type=int, default=0, help="make_sets seed (both processes)")
    args = parser.parse_args(argv)
    if len(args.sizes) > 3:
        parser.error("at most three sizes: NODE_ITEMS WATCHLIST HELD")
    node_items, watchlist, held = args.sizes + [233_772, 10_000, 5_000][len(args.sizes) :]
    result_fd = os.dup(1)
    os.dup2(2, 1)  # libpsi logs to file descriptor 1, even while it shuts down
    result = run_all(
        node_items, watchlist, held, only=tuple(args.only or LIBRARIES), seed=args.seed
    )
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover - manual benchmark entry point
    main(sys.argv[1:])
