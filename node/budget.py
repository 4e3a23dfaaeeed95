"""Rate limits and budgets: a usage ledger in the node database, counted over sliding windows.

Every admitted request leaves one row (partner, dataset, kind, time, items,
epsilon) in `policy_usage`, written in the same DuckDB transaction that checked
the limits, so a restart does not reset them and two concurrent requests cannot
both take the last unit. A request that is refused, or fails before anything was
disclosed, has its row removed again (`refund`): a refused query charges nothing.

Usage is counted per partner and dataset, whatever grant or query kind it came
through. Every grant in force that could admit the request contributes its limits
and each one is checked, so the strictest apply: a permissive grant (say an
aggregate grant, which also admits matches) never lifts a stricter grant's rate
limit or budget for the queries both could admit. Windows
slide: "50 a day" means at most 50 in any 24 hours, and a refusal names the
moment enough earlier usage leaves the window for the request to fit.

A grant's ``epsilon_lifetime`` (aggregates with noise) is checked in the same
transaction: the epsilon charged to the partner on the dataset since the grant
became valid, plus this request's, must fit; it never renews. A later step of an
admitted request that tests more items (`recharge`) replaces its row in one
transaction too, so a failed recharge leaves the ledger exactly as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from node.policy import Grant

_DDL = """
CREATE TABLE IF NOT EXISTS policy_usage (
    request_id VARCHAR PRIMARY KEY, partner VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
    kind VARCHAR NOT NULL, charged_at_ms BIGINT NOT NULL, items BIGINT NOT NULL,
    epsilon DOUBLE NOT NULL);
"""


@dataclass(frozen=True)
class Charge:
    """What one request costs against its partner's and dataset's limits."""

    queries: int
    items: int
    epsilon: float


@dataclass(frozen=True)
class LimitUse:
    """One limit after a request: how much is used in the window, of how much."""

    name: str  # "queries" | "items" | "epsilon"
    used: float
    limit: float
    per: str

    def as_json(self) -> dict[str, object]:
        used: object = int(self.used) if self.name != "epsilon" else round(self.used, 6)
        limit: object = int(self.limit) if self.name != "epsilon" else self.limit
        return {"used": used, "limit": limit, "per": self.per}


LIFETIME = "lifetime"  # the name of an exhausted lifetime epsilon cap


@dataclass(frozen=True)
class Exhausted:
    """A limit the request does not fit in; `renews_at` is None when it never could."""

    name: str
    used: float
    limit: float
    need: float
    per: str
    renews_at: dt.datetime | None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)


def renewal_ms(
    charges: Sequence[tuple[int, float]], window_ms: int, limit: float, need: float, now_ms: int
) -> int | None:
    """When a request of `need` fits under `limit`, given the charges in the window.

    `charges` are (time, amount) inside the window (newer than now − window). Returns
    None when it fits now, else the first moment at which enough of them have aged out.
    """
    used = sum(amount for _, amount in charges)
    if used + need <= limit + 1e-9:
        return None
    for moment, amount in sorted(charges):
        used -= amount
        if used + need <= limit + 1e-9:
            return max(now_ms, moment + window_ms)
    return now_ms  # need <= limit is checked by the caller; kept total for safety


def _limits(grants: Sequence[Grant]) -> list[tuple[str, float, int, str]]:
    limits: list[tuple[str, float, int, str]] = []
    for grant in grants:
        for limit in _grant_limits(grant):
            if limit not in limits:
                limits.append(limit)
    return limits


def _grant_limits(grant: Grant) -> list[tuple[str, float, int, str]]:
    limits: list[tuple[str, float, int, str]] = []
    if grant.rate_limit is not None:
        limits.append(
            (
                "queries",
                grant.rate_limit.queries,
                grant.rate_limit.per.seconds,
                grant.rate_limit.per.label,
            )
        )
    if grant.item_budget is not None:
        limits.append(
            (
                "items",
                grant.item_budget.items,
                grant.item_budget.per.seconds,
                grant.item_budget.per.label,
            )
        )
    if grant.epsilon_budget is not None:
        limits.append(
            (
                "epsilon",
                grant.epsilon_budget.epsilon,
                grant.epsilon_budget.per.seconds,
                grant.epsilon_budget.per.label,
            )
        )
    return limits


def charge(
    con: duckdb.DuckDBPyConnection,
    *,
    request_id: str,
    partner: str,
    dataset: str,
    kind: str,
    grants: Sequence[Grant],
    cost: Charge,
    now: dt.datetime,
) -> tuple[list[LimitUse], Exhausted | None]:
    """Check the limits of every grant in `grants` and record the charge in one transaction.

    Returns the use of each kind of limit after the charge (the most used one when
    several grants set it), or (use before, the limit that does not fit) without
    recording anything.
    """
    return _in_transaction(
        con, request_id, partner, dataset, kind, grants, cost, now, replace=False
    )


def recharge(
    con: duckdb.DuckDBPyConnection,
    *,
    request_id: str,
    partner: str,
    dataset: str,
    kind: str,
    grants: Sequence[Grant],
    cost: Charge,
    now: dt.datetime,
) -> tuple[list[LimitUse], Exhausted | None]:
    """Replace an admitted request's charge by `cost` (its whole cost now), as `charge` checks.

    One transaction: the old row is removed, the limits checked without it and the new
    row written; when a limit does not fit everything is rolled back, old row included.
    """
    return _in_transaction(con, request_id, partner, dataset, kind, grants, cost, now, replace=True)


def _in_transaction(
    con: duckdb.DuckDBPyConnection,
    request_id: str,
    partner: str,
    dataset: str,
    kind: str,
    grants: Sequence[Grant],
    cost: Charge,
    now: dt.datetime,
    *,
    replace: bool,
) -> tuple[list[LimitUse], Exhausted | None]:
    ensure_schema(con)
    now_ms = int(now.timestamp() * 1000)
    con.execute("BEGIN TRANSACTION")
    try:
        if replace:
            con.execute("DELETE FROM policy_usage WHERE request_id = ?", [request_id])
        uses, exhausted = _check(con, partner, dataset, kind, grants, cost, now_ms)
        if exhausted is not None:
            con.execute("ROLLBACK")
            return uses, exhausted
        con.execute(
            "INSERT INTO policy_usage VALUES (?, ?, ?, ?, ?, ?, ?)",
            [request_id, partner, dataset, kind, now_ms, cost.items, cost.epsilon],
        )
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    return uses, None


def _check(
    con: duckdb.DuckDBPyConnection,
    partner: str,
    dataset: str,
    kind: str,
    grants: Sequence[Grant],
    cost: Charge,
    now_ms: int,
) -> tuple[list[LimitUse], Exhausted | None]:
    """The limits' use after `cost`, or the first limit it does not fit (inside a transaction)."""
    limits = _limits(grants)
    uses: list[LimitUse] = []
    longest = max((window for _, _, window, _ in limits), default=0)
    rows = (
        con.execute(
            "SELECT charged_at_ms, items, epsilon FROM policy_usage WHERE partner = ? AND "
            "dataset = ? AND charged_at_ms > ? ORDER BY charged_at_ms",
            [partner, dataset, now_ms - longest * 1000],
        ).fetchall()
        if limits
        else []
    )
    for name, limit, window, per in limits:
        start = now_ms - window * 1000
        column = {"queries": None, "items": 1, "epsilon": 2}[name]
        charges = [
            (int(r[0]), 1.0 if column is None else float(r[column]))
            for r in rows
            if int(r[0]) > start
        ]
        need = {"queries": cost.queries, "items": cost.items, "epsilon": cost.epsilon}[name]
        used = sum(amount for _, amount in charges)
        if need > limit + 1e-9:
            return uses, Exhausted(name, used, limit, need, per, None)
        moment = renewal_ms(charges, window * 1000, limit, need, now_ms)
        if moment is not None:
            renews = dt.datetime.fromtimestamp(moment / 1000, dt.UTC)
            return uses, Exhausted(name, used, limit, need, per, renews)
        use = LimitUse(name, used + need, limit, per)
        same = next((i for i, u in enumerate(uses) if u.name == name), None)
        if same is None:
            uses.append(use)
        elif use.used / use.limit > uses[same].used / uses[same].limit:
            uses[same] = use
    if cost.epsilon > 0:
        for grant in grants:
            exhausted = _lifetime(con, partner, dataset, kind, grant, cost.epsilon)
            if exhausted is not None:
                return uses, exhausted
    return uses, None


def _lifetime(
    con: duckdb.DuckDBPyConnection,
    partner: str,
    dataset: str,
    kind: str,
    grant: Grant,
    need: float,
) -> Exhausted | None:
    """The grant's lifetime epsilon cap, if this request's `need` does not fit under it."""
    if grant.epsilon_lifetime is None:
        return None
    since_ms = int(grant.valid_from.timestamp() * 1000) if grant.valid_from is not None else 0
    row = con.execute(
        "SELECT COALESCE(SUM(epsilon), 0) FROM policy_usage WHERE partner = ? AND "
        "dataset = ? AND kind = ? AND charged_at_ms >= ?",
        [partner, dataset, kind, since_ms],
    ).fetchone()
    spent = float(row[0]) if row is not None else 0.0
    if spent + need <= grant.epsilon_lifetime + 1e-9:
        return None
    return Exhausted(LIFETIME, spent, grant.epsilon_lifetime, need, "lifetime", None)


def refund(con: duckdb.DuckDBPyConnection, request_id: str) -> None:
    """Remove a request's charge: it was refused or failed before disclosing anything."""
    ensure_schema(con)
    con.execute("DELETE FROM policy_usage WHERE request_id = ?", [request_id])
