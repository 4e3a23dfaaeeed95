"""Freeze (restraint) orders at the node: releasing one, and what a freeze's state means.

A freeze is a follow-up of kind `freeze` (`node.followup` records it): pending →
frozen (the officer's approval, or the policy's when `freeze_approval =
"automatic"`; it holds until approval + the days asked) → released (the officer
lifts it, with a reason) or expired (read past `frozen_until`, marked by
`node.followup.expire_overdue` whenever anyone looks). A pending freeze may also be
refused or expire unanswered. Plain functions over the node database; the
officer's commands and the console call them and write the audit entries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from fedtrace.followup import EXPIRED, FROZEN, KIND_FREEZE, RELEASED
from node.followup import WRITES, FollowUpError, FollowUpRow, find, iso, update_row
from node.store import NodeDatabase


def release(
    database: NodeDatabase, request_id: str, reason: str, officer: str, now: dt.datetime
) -> FollowUpRow:
    """Lift a freeze in force before its end; FollowUpError when it is not frozen."""
    if not reason.strip():
        raise FollowUpError("a release needs its reason: pass --reason TEXT")
    row = find(database, request_id)
    if row.kind != KIND_FREEZE:
        raise FollowUpError(
            f"request {request_id} is a {row.kind} request; only a freeze can be released"
        )
    if row.state == FROZEN and row.overdue(now):
        raise FollowUpError(
            f"the freeze {request_id} expired on {row.frozen_until}; there is nothing to release"
        )
    if row.state == EXPIRED and row.frozen_until:
        raise FollowUpError(
            f"the freeze {request_id} expired on {row.frozen_until}; there is nothing to release"
        )
    if row.state != FROZEN:
        raise FollowUpError(
            f"request {request_id} is {row.state.replace('-', ' ')}, not frozen; "
            + ("approve or refuse it" if row.state == "pending" else "a decision is final")
        )
    released = replace(
        row,
        state=RELEASED,
        released_at=iso(now),
        released_by=officer,
        release_reason=reason.strip(),
    )
    with WRITES, database.session() as con:
        if not update_row(con, released, FROZEN):
            raise FollowUpError(f"request {request_id} changed meanwhile; list it again")
    return released


def freeze_line(row: FollowUpRow) -> str:
    """One line on a freeze's state, for the officer's and the investigator's tables."""
    if row.state == FROZEN:
        return f"{row.request_id}: frozen until {row.frozen_until} (EUR {row.amount_eur:,})"
    if row.state == RELEASED:
        return f"{row.request_id}: released {row.released_at} ({row.release_reason})"
    if row.state == EXPIRED and row.frozen_until:
        return f"{row.request_id}: expired (the freeze ended {row.frozen_until})"
    return f"{row.request_id}: {row.state.replace('-', ' ')} ({row.decision_reason})"
