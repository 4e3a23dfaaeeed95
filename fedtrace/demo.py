"""`fedtrace demo`: a three-jurisdiction federation on this machine, end to end, then shut down.

It uses only the public commands' building blocks: a CA, three nodes with
synthetic data and the example policies in policies/, real `fedtrace node
serve` processes on loopback, and an investigator's match query.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fedtrace.demo_data import generate_federation_data
from fedtrace.errors import ExitCode
from fedtrace.harness import LocalFederation, cli_argv

JURISDICTIONS = ("EE", "FR", "SG")
INVESTIGATOR = "FR"
POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
TRANSACTIONS = 20_000


def _say(text: str) -> None:
    print(text, flush=True)


def build_federation(federation: LocalFederation) -> Path:
    """Nodes with synthetic data and the example policies, the investigator; the watchlist."""
    root = federation.root
    data = generate_federation_data(root / "data", JURISDICTIONS, TRANSACTIONS)
    for code in JURISDICTIONS:
        federation.add_node(
            code, policy=(POLICY_DIR / f"{code}.toml").read_text(), tables=data.tables(code)
        )
        _say(
            f"  node {code}: {len(data.wallets[code]):,} wallets from {TRANSACTIONS:,} transactions"
        )
    federation.issue_investigator()
    watchlist = root / "watchlist.txt"
    watchlist.write_text("\n".join(data.watchlist(200)) + "\n")
    return watchlist


def keep_addresses(federation: LocalFederation) -> None:
    """Write each node's bound address into its node.toml, so a restart serves there again."""
    from node.setup import set_listen

    for node in federation.nodes.values():
        set_listen(node.node_dir, node.address)


def restart_commands(federation: LocalFederation, watchlist: Path) -> list[str]:
    """The commands that run the kept federation again, as a person types them."""
    q = shlex.quote
    serve = [
        f"fedtrace node serve {q(str(node.node_dir))} &   # {code} on {node.address}"
        for code, node in federation.nodes.items()
    ]
    fed = q(str(federation.federation_file))
    common = f"--federation {fed} --dataset wallets --legal-basis MLA"
    return [
        *serve,
        f"fedtrace query match {common} --watchlist {q(str(watchlist))} --case DEMO-4",
        f"fedtrace query aggregate {common} --watchlist {q(str(watchlist))} --case DEMO-5 "
        "--sum total_in_eur --sum tx_count --total-only",
        f"fedtrace query overlap {common} --case DEMO-6",
        f"fedtrace audit show {q(str(federation.nodes['EE'].node_dir))} --limit 20",
    ]


def _investigator(*args: str) -> int:
    """Run one investigator command as a user would, printing its report."""
    done = subprocess.run(cli_argv(*args), text=True, check=False)
    return done.returncode


def run_demo(keep: Path | None = None) -> int:
    started = time.monotonic()
    root = keep or Path(tempfile.mkdtemp(prefix="fedtrace-demo-"))
    try:
        _say(f"building a demo federation in {root}")
        with LocalFederation(root, investigator=INVESTIGATOR, deadline_seconds=None) as federation:
            watchlist = build_federation(federation)
            _say("starting three nodes (each blinds its wallets for a new epoch)")
            federation.start(together=True)
            if keep is not None:
                keep_addresses(federation)
            fed = str(federation.federation_file)
            common = ("--federation", fed, "--dataset", "wallets", "--legal-basis", "MLA")
            _say(f"investigator {INVESTIGATOR}: which of 200 watchlisted wallets each node holds\n")
            codes = [
                _investigator(
                    "query", "match", *common, "--watchlist", str(watchlist), "--case", "DEMO-1"
                )
            ]
            _say(
                f"\ninvestigator {INVESTIGATOR}: how much moved through the matched wallets, "
                "as one noisy federation-wide total\n"
            )
            codes.append(
                _investigator(
                    "query",
                    "aggregate",
                    *common,
                    "--watchlist",
                    str(watchlist),
                    "--case",
                    "DEMO-2",
                    "--sum",
                    "total_in_eur",
                    "--sum",
                    "tx_count",
                    "--total-only",
                )
            )
            _say(
                f"\ninvestigator {INVESTIGATOR}: which jurisdictions share wallets, "
                "with no watchlist\n"
            )
            codes.append(_investigator("query", "overlap", *common, "--case", "DEMO-3"))
            _say("\nEE's operator: EE's own wallets the overlap found shared\n")
            codes.append(
                _investigator(
                    "node", "shared", str(federation.nodes["EE"].node_dir), "--case", "DEMO-3"
                )
            )
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s; nodes stopped")
        if keep is not None:
            _say(f"\nthe federation is kept in {root}; to run it again (each node in its own")
            _say("terminal, or in the background as below), then query it:\n")
            for command in restart_commands(federation, watchlist):
                _say(f"  {command}")
        failed = [code for code in codes if code not in (0, 3)]
        return failed[0] if failed else ExitCode.OK
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
