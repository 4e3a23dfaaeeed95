"""``scripts/bench --psi``: fedtrace's match against SecretFlow's and OpenMined's PSI, same sets.

For each size (``--sizes 234k,1m``; 234k means 233,772 wallets) one node
set and one watchlist (10,000 items, 5,000 held) come from
``fedtrace.bench.peers.make_sets``, deterministic from a seed, and every library
runs on them in the same run:

- SecretFlow's unbalanced PSI (``spu.psi.ub_psi_execute``, spu 0.9.5): offline
  and online. spu pins numpy below 2, so it runs in a peers interpreter as
  ``python -m fedtrace.bench.peers --only secretflow`` (``FEDTRACE_PEERS_PYTHON``,
  or ``.venv-peers`` made by ``scripts/bench --peers-setup``), which builds the
  same sets from the same seed and prints JSON; skipped with the reason otherwise;
- openmined-psi, in this process: setup (offline) and request/response (online);
- fedtrace, compute only (``peers.run_fedtrace``): each online step of a warm
  match, the profile against which the real warm match is read;
- fedtrace for real (``federation.measure_psi_federation``): one `fedtrace node
  serve` process (``fedtrace.harness``), cold = its start with a new epoch + the
  first answer to a new ``fedtrace.connect`` client; warm in process = repeat
  matches of that client after ``prepare`` (channels, filters, pools reused); warm
  CLI = `fedtrace query match` processes, wall clock.

Then, for ``--federation-sizes`` (default: the sizes of 1M and more), three real
nodes of that many wallets each answer the same watchlist: warm latency in process
and through the CLI. The ratios divide figures of this run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.bench import peers
from fedtrace.bench.federation import PsiFederationFigures, measure_psi_federation
from fedtrace.bench.figures import Bench, Say

#: Sizes known by name; any other ``N``, ``Nk`` or ``Nm`` is read as a number.
NAMED_SIZES = {"234k": 233_772}
WATCHLIST_ITEMS = 10_000
HELD_ITEMS = 5_000
#: Node sets from ``peers.make_sets(size, watchlist, held, SEED)`` in both processes.
SEED = 1
PEERS_PYTHON_VARIABLE = "FEDTRACE_PEERS_PYTHON"
PEERS_VENV = ".venv-peers"
SPU_REQUIREMENT = "spu==0.9.5"
#: SecretFlow's offline phase at 1M items takes minutes on 2 cores; allow for a busy machine.
PEERS_TIMEOUT_SECONDS = 3600.0


@dataclass(frozen=True)
class PsiPlan:
    """What ``--psi`` measures."""

    sizes: tuple[int, ...]  # node wallets, one side-by-side comparison each
    federation_sizes: tuple[int, ...]  # three nodes of this many wallets: warm latency
    watchlist: int = WATCHLIST_ITEMS
    held: int = HELD_ITEMS
    warm_runs: int = 5
    cli_runs: int = 5
    profile: bool = True  # fedtrace compute-only steps (peers.run_fedtrace)


def parse_size(text: str) -> int:
    """``234k`` (233,772), ``20k``, ``1m``, ``1_000_000`` -> a count of wallets."""
    word = text.strip().lower().replace("_", "")
    if word in NAMED_SIZES:
        return NAMED_SIZES[word]
    scale = {"k": 1_000, "m": 1_000_000}.get(word[-1:], 1)
    try:
        count = int(float(word[:-1] if scale > 1 else word) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 234k, 20k, 1m)") from None
    if count < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a node needs at least 2 wallets")
    return count


def parse_sizes(text: str) -> tuple[int, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def size_label(count: int) -> str:
    return f"{count:,}"


def repo_root() -> Path:
    """The directory that holds the ``fedtrace`` package (the checkout, in development)."""
    return Path(__file__).resolve().parents[2]


# --- the peers interpreter ------------------------------------------------------------------


def peers_python(root: Path | None = None) -> tuple[str | None, str]:
    """(interpreter that can import spu, how it was found) or (None, why there is none)."""
    named = os.environ.get(PEERS_PYTHON_VARIABLE)
    if named:
        if Path(named).is_file() and os.access(named, os.X_OK):
            return named, f"${PEERS_PYTHON_VARIABLE}"
        return None, f"${PEERS_PYTHON_VARIABLE}={named} is not an executable file"
    if importlib.util.find_spec("spu") is not None:
        return sys.executable, "this interpreter imports spu"
    made = (root or repo_root()) / PEERS_VENV / "bin" / "python"
    if made.is_file():
        return str(made), PEERS_VENV
    return None, (
        f"no interpreter with {SPU_REQUIREMENT}: set {PEERS_PYTHON_VARIABLE}=/path/to/python "
        f"or run `scripts/bench --peers-setup` (makes {PEERS_VENV})"
    )


def setup_peers_venv(say: Say, root: Path | None = None) -> int:
    """Make ``.venv-peers`` with ``pip install spu==0.9.5`` (needs the package registry)."""
    target = (root or repo_root()) / PEERS_VENV
    python = target / "bin" / "python"
    if not python.is_file():
        say(f"creating {target}")
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    say(f"pip install {SPU_REQUIREMENT} into {target}")
    done = subprocess.run([str(python), "-m", "pip", "install", SPU_REQUIREMENT], check=False)
    if done.returncode != 0:
        say(f"pip failed ({done.returncode}): is the package registry reachable?")
        return int(done.returncode)
    check = subprocess.run([str(python), "-c", "import spu.psi"], check=False)
    say(f"{PEERS_VENV} ready" if check.returncode == 0 else "spu installed but does not import")
    return int(check.returncode)


def run_peers_subprocess(
    python: str, node_items: int, watchlist: int, held: int, workdir: Path
) -> dict[str, Any]:
    """SecretFlow under ``python`` on ``make_sets(..., SEED)``; its ``secretflow_ub_psi`` dict.

    Only the ``fedtrace`` package is put on the peers interpreter's path (a link in
    ``workdir``), never this interpreter's site-packages: spu needs its own numpy.
    """
    path = workdir / "peers-path"
    path.mkdir(parents=True, exist_ok=True)
    link = path / "fedtrace"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    log = workdir / f"secretflow-{node_items}.log"
    command = [python, "-m", "fedtrace.bench.peers", str(node_items), str(watchlist), str(held)]
    with log.open("w") as errors:
        try:
            done = subprocess.run(
                [*command, "--only", "secretflow", "--seed", str(SEED)],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env={**os.environ, "PYTHONPATH": str(path)},
                timeout=PEERS_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"skipped": f"the peers interpreter did not answer: {exc}"}
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        return {"skipped": f"the peers interpreter exited {done.returncode}: {tail[0]}"}
    try:
        result: dict[str, Any] = json.loads(done.stdout)["secretflow_ub_psi"]
    except (ValueError, KeyError):
        return {"skipped": f"the peers interpreter printed no result (log: {log})"}
    return result


# --- the section ----------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _peer_rows(bench: Bench, section: str, name: str, timings: dict[str, Any], how: str) -> None:
    if "skipped" in timings:
        bench.notes.append(f"{section}: {name} skipped: {timings['skipped']}")
        return
    bench.add(section, f"{name} offline", timings["offline_s"], "s", how)
    bench.add(section, f"{name} online", timings["online_s"], "s", how)
    bench.add(section, f"{name} offline + online", timings["total_s"], "s", "sum of the two")


def _fedtrace_rows(bench: Bench, section: str, figures: PsiFederationFigures) -> None:
    nodes = figures.nodes
    bench.add(
        section,
        "fedtrace node start, new epoch" + (" (slowest)" if nodes > 1 else ""),
        max(figures.node_start_s),
        "s",
        "`fedtrace node serve` process start to serving: reads the dataset, blinds it, "
        "builds and persists the filter (nodes started one at a time)",
    )
    bench.add(
        section,
        "fedtrace first answer",
        figures.first_answer_s,
        "s",
        "new fedtrace.connect client, empty cache: TLS, info, filter fetch, "
        "multiplicative blinding, evaluate, unblind, filter test",
    )
    bench.add(
        section,
        "fedtrace cold (offline + online)",
        figures.cold_total_s,
        "s",
        "slowest node start with a new epoch + first answer",
    )
    matches = max(1, len(figures.warm_api_s))
    bench.add(
        section,
        f"fedtrace pool prepare, {figures.prepared_entries // matches:,} entries/node",
        figures.prepare_s / matches,
        "s",
        "client.prepare (offline, coordinator, every core): one warm match's entries",
    )
    for name, runs, how in (
        (
            "fedtrace warm, in process",
            figures.warm_api_s,
            "repeat client.match, pools prepared, channels and filters reused",
        ),
        (
            "fedtrace warm, CLI wall",
            figures.warm_cli_s,
            "`fedtrace query match` process start to exit, filters and pools on disk",
        ),
    ):
        if runs:
            bench.add(section, f"{name} (median of {len(runs)})", _median(runs), "s", how)
            bench.add(section, f"{name} (min)", min(runs), "s", "same runs")


PROFILE_ROWS = (  # peers.run_fedtrace key -> row name
    ("online_coordinator_hash_add_s", "coordinator hash + add"),
    ("online_node_evaluate_as_served_s", "node validate + multiply, as served"),
    ("online_node_evaluate_s", "node validate + multiply, every core"),
    ("online_coordinator_sub_s", "coordinator validate + subtract"),
    ("online_filter_test_s", "filter test"),
)


def _profile_rows(bench: Bench, size: int, compute: dict[str, Any], warm_api: float) -> None:
    """The compute steps of a warm match alone, and what the real match spends besides."""
    section = f"psi {size_label(size)} warm profile"
    how = "peers.run_fedtrace: the step alone in this process, same sets, no network"
    for key, name in PROFILE_ROWS:
        bench.add(section, name, compute[key], "s", how)
    served = sum(
        compute[key]
        for key in (
            "online_coordinator_hash_add_s",
            "online_node_evaluate_as_served_s",
            "online_coordinator_sub_s",
            "online_filter_test_s",
        )
    )
    bench.add(section, "compute, as served", served, "s", "sum of the steps above (node as served)")
    bench.add(
        section,
        "rest of the warm match",
        warm_api - served,
        "s",
        "warm in process (median) - compute as served: watchlist canonicalisation, transfer, "
        "gRPC + TLS, node policy + transcript signature + audit, pool file",
    )
    bench.add(
        section,
        "node epoch, compute only",
        compute["offline_node_epoch_s"] + compute["offline_node_filter_s"],
        "s",
        "psi.build_table + gcs.build_filter on every core",
    )


def _ratio(bench: Bench, name: str, ours: float, theirs: float, how: str) -> float | None:
    if not theirs or theirs != theirs or ours != ours:
        return None
    return bench.add("psi ratios", name, ours / theirs, "x", how)


def _ratio_rows(
    bench: Bench,
    size: int,
    ours: PsiFederationFigures,
    secretflow: dict[str, Any],
    openmined: dict[str, Any],
) -> None:
    label = size_label(size)
    warm = _median(ours.warm_api_s)
    cli = _median(ours.warm_cli_s)
    for peer, timings in (("SecretFlow", secretflow), ("openmined", openmined)):
        if "skipped" in timings:
            continue
        cold = _ratio(
            bench,
            f"cold / {peer} offline+online, {label}",
            ours.cold_total_s,
            timings["total_s"],
            "below 1: fedtrace faster",
        )
        in_process = _ratio(
            bench,
            f"warm in process / {peer} online, {label}",
            warm,
            timings["online_s"],
            "below 1: fedtrace faster",
        )
        _ratio(
            bench,
            f"warm CLI wall / {peer} online, {label}",
            cli,
            timings["online_s"],
            "below 1: fedtrace faster; includes Python start-up",
        )
        if peer == "SecretFlow":
            if cold is not None:
                bench.target(f"cold faster than SecretFlow, {label}", cold, "<", 1.0, "x")
            if in_process is not None:
                bench.target(
                    f"warm faster than SecretFlow online, {label}", in_process, "<", 1.0, "x"
                )


def measure_size(bench: Bench, plan: PsiPlan, size: int, workdir: Path) -> dict[str, Any]:
    """One side-by-side comparison at ``size`` node wallets; SecretFlow's timings."""
    label = size_label(size)
    section = f"psi {label}"
    bench.say(f"psi {label}: {plan.watchlist:,}-item watchlist, {plan.held:,} held")
    node, watchlist = peers.make_sets(size, plan.watchlist, plan.held, SEED)
    python, found = peers_python()
    if python is None:
        secretflow: dict[str, Any] = {"skipped": found}
    else:
        bench.say(f"  SecretFlow ub_psi under {python} ({found})")
        secretflow = run_peers_subprocess(python, size, plan.watchlist, plan.held, workdir)
    _peer_rows(
        bench,
        section,
        "SecretFlow ub_psi",
        secretflow,
        "spu.psi.ub_psi_execute, both parties as threads, in-memory link (peers interpreter)",
    )
    bench.say("  openmined-psi")
    openmined = peers.run_openmined(node, watchlist)
    _peer_rows(
        bench,
        section,
        "openmined-psi",
        openmined,
        "CreateSetupMessage (GCS, fpr 1e-9); CreateRequest + ProcessRequest + GetIntersection",
    )
    for name, timings in (("SecretFlow", secretflow), ("openmined-psi", openmined)):
        found_items = timings.get("intersection", plan.held)
        if found_items != plan.held:
            bench.notes.append(f"{section}: {name} found {found_items}, expected {plan.held}")
    compute = None
    if plan.profile:
        bench.say("  fedtrace compute profile")
        compute = peers.run_fedtrace(node, watchlist, workers=os.cpu_count() or 1)
    _release_cores()
    bench.say("  fedtrace: one real node")
    ours = measure_psi_federation(
        workdir / f"psi-{size}",
        1,
        node,
        watchlist,
        plan.held,
        warm_runs=plan.warm_runs,
        cli_runs=plan.cli_runs,
        say=bench.say,
    )
    _fedtrace_rows(bench, section, ours)
    if compute is not None and ours.warm_api_s:
        _profile_rows(bench, size, compute, _median(ours.warm_api_s))
    _ratio_rows(bench, size, ours, secretflow, openmined)
    return secretflow


def _release_cores() -> None:
    """Stop this process's worker pool: the nodes get the cores to themselves."""
    from fedtrace import group

    group.shutdown_pool()


def measure_three_nodes(
    bench: Bench, plan: PsiPlan, size: int, workdir: Path, secretflow: dict[str, Any] | None
) -> None:
    """Three real nodes of ``size`` wallets each, one watchlist: warm in process and CLI."""
    label = size_label(size)
    section = f"psi 3 nodes x {label}"
    bench.say(f"{section}: {plan.watchlist:,}-item watchlist")
    node, watchlist = peers.make_sets(size, plan.watchlist, plan.held, SEED)
    _release_cores()
    ours = measure_psi_federation(
        workdir / f"psi-3x{size}",
        3,
        node,
        watchlist,
        plan.held,
        warm_runs=plan.warm_runs,
        cli_runs=plan.cli_runs,
        say=bench.say,
    )
    _fedtrace_rows(bench, section, ours)
    if secretflow is not None and "skipped" not in secretflow and ours.warm_api_s:
        _ratio(
            bench,
            f"3 nodes warm in process / SecretFlow online (1 server), {label}",
            _median(ours.warm_api_s),
            secretflow["online_s"],
            "SecretFlow answered one server of the same size",
        )


def measure(bench: Bench, plan: PsiPlan, workdir: Path) -> None:
    """Every size of ``plan``, then the three-node federations."""
    secretflow: dict[int, dict[str, Any]] = {}
    for size in plan.sizes:
        try:
            secretflow[size] = measure_size(bench, plan, size, workdir)
        except Exception as exc:  # noqa: BLE001 - one failed size must not sink the bench
            bench.notes.append(f"psi {size_label(size)} failed: {exc}")
    for size in plan.federation_sizes:
        try:
            measure_three_nodes(bench, plan, size, workdir, secretflow.get(size))
        except Exception as exc:  # noqa: BLE001
            bench.notes.append(f"psi 3 nodes x {size_label(size)} failed: {exc}")


# --- command line (fedtrace.bench.__main__) -------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--psi`` options of ``scripts/bench``."""
    psi = parser.add_argument_group("PSI side by side (--psi)")
    psi.add_argument(
        "--psi",
        action="store_true",
        help="only the side-by-side PSI section: fedtrace, SecretFlow ub_psi, openmined-psi",
    )
    psi.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("234k,1m"),
        help="node wallets per comparison, e.g. 234k,1m (default) or 20k",
    )
    psi.add_argument(
        "--federation-sizes",
        type=parse_sizes,
        help="three-node federations of these sizes (default: the --sizes of 1m and more)",
    )
    psi.add_argument("--cli-runs", type=int, default=5, help="warm `query match` processes")
    psi.add_argument("--no-profile", action="store_true", help="skip fedtrace's compute-only steps")
    psi.add_argument(
        "--peers-setup",
        action="store_true",
        help=f"make {PEERS_VENV} with pip install {SPU_REQUIREMENT}, then exit",
    )


def plan_from_args(args: argparse.Namespace) -> PsiPlan:
    sizes = tuple(args.sizes)
    federation_sizes = args.federation_sizes
    if federation_sizes is None:
        federation_sizes = tuple(size for size in sizes if size >= 1_000_000)
    return PsiPlan(
        sizes=sizes,
        federation_sizes=tuple(federation_sizes),
        warm_runs=args.warm_runs,
        cli_runs=args.cli_runs,
        profile=not args.no_profile,
    )
