"""`fedtrace report verify` for aggregate and overlap reports (docs/audit.md).

Each answering node of an aggregate query signs an `AggregateTranscript`
(fedtrace/aggregate_transcript.py); each participant of an overlap query signs a
`OverlapTranscript` at close (fedtrace/overlap_transcript.py). The coordinator keeps
transcript, digest, signature and the node's certificate in every result. Here,
for every ``ok`` result: the transcript has exactly its fields and types, its
digest matches, the certificate chains to the federation CA at the time the
query was sent and names that node with role node, the signature is the node's,
and every visible field the node signed (node, disclosure, policy version and
policy file SHA-256, epoch or overlap id, case, dataset, legal basis, min cohort,
noise scales and intervals, roster, set size…) agrees with the transcript; a
version-2 aggregate transcript also binds each figure's clip bounds. Then the report-level
figures are checked against what the nodes signed, as far as signed terms bound
them (suppression below ``min_cohort``, the total-only answering set, a count
never above a signed set size). The figures themselves (decrypted sums, overlap
counts) are computed by the coordinator, so only the investigator's signature
covers their values; coordinator.certificates.check_investigator checks that one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from coordinator.figures import Figure, sum_figures
from coordinator.signatures import (
    ReportVerification,
    check_audit_head,
    check_node_signature,
    policy_mismatches,
)
from fedtrace.aggregate import COUNT_COLUMN
from fedtrace.aggregate_transcript import AggregateTranscript, FigureTerms
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.transcript import LEGACY_VERSION, SINCE_V2, check_since_v2, check_version
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import NodeStatus

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
}
_NESTED: dict[str, type] = {"figures": FigureTerms, "hops": OverlapHop}
_FIGURE_KEYS = ("match_count", "aggregates", "noise_scale", "interval_95")
# A transcript signed before its serialisation version was recorded omits it (version 1).
_OPTIONAL = frozenset({"v"})


def _check_fields(document: object, cls: type, where: str, version: int = LEGACY_VERSION) -> None:
    """Exactly the dataclass's fields, each of its JSON type (ValueError naming the first).

    ``version`` is the enclosing transcript's, for a nested document (a figure's terms):
    the fields version 2 added are required from it, and absent or unset before it."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(document, dict):
        raise ValueError(f"{where} does not have exactly the {cls.__name__} fields")
    if "v" in names:
        version = check_version(document)
    check_since_v2(document, names, version, where)
    optional = _OPTIONAL | (SINCE_V2 if version == LEGACY_VERSION else frozenset())
    if not names - optional <= set(document) <= names:
        raise ValueError(f"{where} does not have exactly the {cls.__name__} fields")
    for f in dataclasses.fields(cls):
        if f.name not in document:
            continue  # an optional field, absent from a transcript signed before it existed
        value, kind = document[f.name], str(f.type)
        if kind in _SCALARS:
            ok = isinstance(value, _SCALARS[kind]) and (
                kind == "bool" or not isinstance(value, bool)
            )
        elif kind == "tuple[str, ...]":
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        elif kind == "tuple[int, int] | None":  # a figure's clip bounds: [lo, hi] or null
            ok = value is None or _is_bounds(value)
        elif f.name in _NESTED:
            ok = isinstance(value, list | tuple)  # lists in JSON, tuples from asdict()
            for index, item in enumerate(value if ok else []):
                _check_fields(item, _NESTED[f.name], f"{where} {f.name}[{index}]", version)
        else:  # pragma: no cover - a transcript field type this module does not know
            raise AssertionError(f"{cls.__name__}.{f.name}: {kind}")
        if not ok:
            raise ValueError(f"{where} field {f.name!r} is not a {kind}")


def _is_bounds(value: object) -> bool:
    """``[lo, hi]``: two integers, lo <= hi."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    lo, hi = value
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
    return integers and lo <= hi


def load_aggregate_transcript(document: object) -> AggregateTranscript:
    _check_fields(document, AggregateTranscript, "its aggregate transcript")
    assert isinstance(document, dict)
    return AggregateTranscript.from_json(document)


def load_overlap_transcript(document: object) -> OverlapTranscript:
    _check_fields(document, OverlapTranscript, "its overlap transcript")
    assert isinstance(document, dict)
    return OverlapTranscript.from_json(document)


def _differences(pairs: Mapping[str, tuple[object, object]]) -> list[str]:
    return [
        f"{name} shows {shown!r} but the node signed {signed!r}"
        for name, (shown, signed) in pairs.items()
        if shown != signed
    ]


def _context(
    result: Mapping[str, Any],
    report: Mapping[str, Any],
    node: str,
    transcript: AggregateTranscript | OverlapTranscript,
) -> dict[str, tuple[object, object]]:
    return {
        "node": (node, transcript.jurisdiction),
        "disclosure": (result.get("disclosure"), transcript.disclosure),
        "policy_version": (result.get("policy_version"), transcript.policy_version),
        "case": (report.get("case"), transcript.case_ref),
        "dataset": (report.get("dataset"), transcript.dataset),
        "legal_basis": (report.get("legal_basis", ""), transcript.legal_basis),
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _units(value: int | float, decimals: int) -> int | None:
    """A shown figure in its smallest unit (cents for money), or None if it is not whole."""
    try:
        scaled = Decimal(str(value)).scaleb(decimals)
    except InvalidOperation:
        return None
    return int(scaled) if scaled == scaled.to_integral_value() else None


def figure_mismatches(
    entry: Mapping[str, Any], terms: Sequence[FigureTerms], min_cohort: int
) -> list[str]:
    """Do the figures shown agree with the signed terms: suppression, noise scale, intervals?

    ``terms`` lists ``match_count`` first, then the summed columns, as the node signed
    them. The values themselves are the coordinator's decryption: not checked here. A
    figure listed in ``clamped`` is non-negative and its interval is cut at 0
    (coordinator.figures).
    """
    columns = [t.figure for t in terms if t.figure != COUNT_COLUMN]
    count, aggregates = entry.get("match_count"), entry.get("aggregates")
    if not isinstance(aggregates, dict) or sorted(aggregates) != sorted(columns):
        return [
            f"its aggregates do not list exactly the figures the node answered "
            f"({', '.join(columns) or 'none'})"
        ]
    withheld = f"< {min_cohort}"
    if isinstance(count, str):
        problems = []
        if count != withheld or any(v != withheld for v in aggregates.values()):
            problems.append(
                f"its figures are withheld as {count!r} but the node signed min_cohort {min_cohort}"
            )
        if "noise_scale" in entry or "interval_95" in entry or "clamped" in entry:
            problems.append("its withheld figures carry noise scales or intervals")
        return problems
    values = {COUNT_COLUMN: count, **aggregates}
    bad = [name for name, value in values.items() if not _is_number(value)]
    if bad:
        return [f"{', '.join(bad)} shows no number and no {withheld!r}"]
    if not isinstance(count, int | float) or count < min_cohort:
        return [
            f"match_count {count} is below the min_cohort {min_cohort} the node signed, "
            "so its figures must be withheld"
        ]
    noisy = [t for t in terms if t.scale > 0]
    expected_scale = {t.figure: t.scale / 10**t.decimals if t.decimals else t.scale for t in noisy}
    shown_scale = entry.get("noise_scale", {})
    if shown_scale != expected_scale:
        return [f"noise_scale shows {shown_scale!r} but the node signed {expected_scale!r}"]
    shown_intervals = entry.get("interval_95", {})
    if not isinstance(shown_intervals, dict) or sorted(shown_intervals) != sorted(expected_scale):
        return ["interval_95 does not list exactly the noisy figures"]
    floored = entry.get("clamped", {})
    if not isinstance(floored, dict) or not set(floored) <= set(expected_scale):
        return ["clamped does not list noisy figures only"]
    problems = []
    for term in noisy:
        if term.figure in floored and values[term.figure] < 0:
            problems.append(f"{term.figure} is clamped at 0 but shows {values[term.figure]!r}")
        units = _units(values[term.figure], term.decimals)
        if units is None:
            problems.append(
                f"{term.figure} {values[term.figure]!r} is not a whole number of "
                f"its unit (10^-{term.decimals})"
            )
            continue
        expected = Figure(
            units, term.decimals, term.scale, term.half_width_95, term.figure in floored
        ).interval_95()
        if shown_intervals[term.figure] != expected:
            problems.append(
                f"interval_95 of {term.figure} shows {shown_intervals[term.figure]!r}"
                f" but the signed half-width {term.half_width_95} around "
                f"{values[term.figure]!r} gives {expected!r}"
            )
    return problems


def total_terms(signed: Sequence[AggregateTranscript]) -> list[FigureTerms]:
    """The noise terms of the federation total, from the nodes' signed terms (as the coordinator
    derives them: coordinator.figures.sum_figures)."""
    per_node = []
    for transcript in signed:
        noise = [
            aggregate_pb2.FigureNoise(
                figure=t.figure, decimals=t.decimals, scale=t.scale, half_width_95=t.half_width_95
            )
            for t in transcript.figures
        ]
        per_node.append(
            (aggregate_pb2.AggregateSummary(noise=noise), {t.figure: 0 for t in transcript.figures})
        )
    return [
        FigureTerms(name, f.decimals, f.scale, f.half_width_95)
        for name, f in sum_figures(per_node).items()
    ]


def _check_aggregate_result(
    result: Mapping[str, Any], report: Mapping[str, Any], ca_pem: bytes, outcome: ReportVerification
) -> AggregateTranscript | None:
    node = str(result.get("node", "?"))
    checked = check_node_signature(
        node, result.get("signature"), load_aggregate_transcript, ca_pem, outcome
    )
    if checked is None:
        return None
    transcript, identity = checked
    if not check_audit_head(node, result, outcome):
        return None
    pairs = _context(result, report, node, transcript)
    pairs["epoch_id"] = (result.get("epoch_id"), transcript.epoch_id)
    pairs["min_cohort"] = (result.get("min_cohort"), transcript.min_cohort)
    pairs["columns"] = (
        report.get("columns"),
        [t.figure for t in transcript.figures if t.figure != COUNT_COLUMN],
    )
    watchlist = report.get("watchlist")
    if isinstance(watchlist, dict):
        pairs["watchlist items"] = (watchlist.get("items"), transcript.item_count)
    pairs["total_only"] = ("total" in report, transcript.total_only)
    problems = _differences(pairs) + policy_mismatches(result, transcript)
    if [t.figure for t in transcript.figures[:1]] != [COUNT_COLUMN]:
        problems.append(f"the node's first signed figure is not {COUNT_COLUMN}")
    elif transcript.total_only:
        shown = [key for key in _FIGURE_KEYS if key in result]
        if shown:
            problems.append(
                f"it shows {', '.join(shown)}, but the node answered total-only "
                "(its own figures are masked)"
            )
    elif not problems:
        problems += figure_mismatches(result, transcript.figures, transcript.min_cohort)
    if problems:
        outcome.fail(f"{node}: " + "; ".join(problems))
        return None
    outcome.note(
        f"{node}: signature valid ({identity.describe()}), aggregate, policy "
        f"{transcript.policy_version}, case {transcript.case_ref}, min_cohort "
        f"{transcript.min_cohort}, epsilon {transcript.epsilon:g}"
    )
    return transcript


def _check_total(
    report: Mapping[str, Any], signed: Sequence[AggregateTranscript], outcome: ReportVerification
) -> None:
    total = report.get("total")
    if not isinstance(total, dict) or total.get("status") != NodeStatus.OK:
        if isinstance(total, dict) and total.get("status") == NodeStatus.ERROR:
            outcome.note(f"total: not computed ({total.get('reason', '')})")
        elif total is not None:
            outcome.fail("total: not a federation total with a status")
        return
    answering = sorted({peer for t in signed for peer in t.peers})
    problems = []
    if any(list(t.peers) != answering for t in signed):
        problems.append("the nodes signed different answering sets")
    names = sorted(t.jurisdiction for t in signed)
    if total.get("nodes") != answering or names != answering:
        problems.append(
            f"nodes shows {total.get('nodes')!r}, the signed answering set is "
            f"{answering!r} and the verified answers are from {names!r}"
        )
    if not problems and signed:
        min_cohort = max(t.min_cohort for t in signed)
        if total.get("min_cohort") != min_cohort:
            problems.append(
                f"min_cohort shows {total.get('min_cohort')!r} but the nodes "
                f"signed at most {min_cohort}"
            )
        elif len({tuple((f.figure, f.decimals) for f in t.figures) for t in signed}) != 1:
            problems.append("the nodes signed different figures")
        else:
            problems += figure_mismatches(total, total_terms(signed), min_cohort)
    if problems:
        outcome.fail("total: " + "; ".join(problems))
        return
    outcome.note(f"total: over {', '.join(answering)}, agrees with the signed terms")


def verify_aggregate_results(
    report: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    ca_pem: bytes,
    outcome: ReportVerification,
) -> set[str]:
    """Check each aggregate result and the total; the investigators the transcripts name."""
    signed: list[AggregateTranscript] = []
    for result in results:
        if result.get("status") != NodeStatus.OK:
            _unsigned(result, outcome)
            continue
        transcript = _check_aggregate_result(result, report, ca_pem, outcome)
        if transcript is not None:
            signed.append(transcript)
    if outcome.ok and any(t.total_only for t in signed):
        _check_total(report, signed, outcome)
    return {t.investigator for t in signed}


def _unsigned(result: Mapping[str, Any], outcome: ReportVerification) -> None:
    node, status = str(result.get("node", "?")), result.get("status")
    if result.get("signature"):
        outcome.fail(f"{node}: status {status!r} but the result carries a signature")
    else:
        outcome.note(f"{node}: {status} — not signed (only answers are signed)")


def _check_overlap_result(
    result: Mapping[str, Any], report: Mapping[str, Any], ca_pem: bytes, outcome: ReportVerification
) -> OverlapTranscript | None:
    node = str(result.get("node", "?"))
    checked = check_node_signature(
        node, result.get("signature"), load_overlap_transcript, ca_pem, outcome
    )
    if checked is None:
        return None
    transcript, identity = checked
    if not check_audit_head(node, result, outcome):
        return None
    overlap = _overlap_section(report)
    pairs = _context(result, report, node, transcript)
    pairs.update(
        {
            "overlap_id": (overlap.get("overlap_id"), transcript.overlap_id),
            "participants": (overlap.get("participants"), list(transcript.roster)),
            "reveal_to_owners": (overlap.get("reveal_to_owners"), transcript.reveal),
            "set_size": (result.get("set_size"), transcript.set_size),
            "min_cohort": (result.get("min_cohort"), transcript.min_cohort),
            "reveal_to_owner": (result.get("reveal_to_owner"), transcript.reveal_to_owner),
        }
    )
    problems = _differences(pairs) + policy_mismatches(result, transcript)
    if node not in transcript.roster:
        problems.append(f"the node signed a roster without itself ({list(transcript.roster)!r})")
    if transcript.reveal and not transcript.reveal_to_owner:
        problems.append("the node signed a revealing overlap its grant does not reveal to it")
    if "shared_records" in result and not transcript.reveal:
        problems.append("it lists shared records, but the overlap the node signed revealed none")
    if problems:
        outcome.fail(f"{node}: " + "; ".join(problems))
        return None
    outcome.note(
        f"{node}: signature valid ({identity.describe()}), overlap, policy "
        f"{transcript.policy_version}, case {transcript.case_ref}, overlap "
        f"{transcript.overlap_id}, {transcript.set_size} items"
    )
    return transcript


def _overlap_section(report: Mapping[str, Any]) -> dict[str, Any]:
    overlap = report.get("overlap")
    return overlap if isinstance(overlap, dict) else {}


def overlap_mismatches(
    report: Mapping[str, Any], signed: Mapping[str, OverlapTranscript]
) -> list[str]:
    """Overlap-level figures against what every participant signed (all must have verified).

    Counts are the coordinator's; the signed terms bound them: each count is a whole
    number not in 1..k-1 (else it shows ``"< k"`` with the overlap's k = the largest
    signed min_cohort), the items a node shares never exceed its signed set size, and
    each relay hop carried exactly the origin's signed number of items.
    """
    overlap = _overlap_section(report)
    roster = list(overlap.get("participants") or [])
    problems = []
    for code, transcript in signed.items():
        for hop in transcript.hops:
            origin = signed.get(hop.origin)
            if origin is None or hop.points != origin.set_size:
                problems.append(
                    f"{code} signed a relay of {hop.points} items from "
                    f"{hop.origin}, which signed "
                    f"{'no set' if origin is None else origin.set_size}"
                )
        if sorted(h.origin for h in transcript.hops) != sorted(c for c in roster if c != code):
            problems.append(f"{code} signed relay hops that do not cover the other participants")
    k = max(t.min_cohort for t in signed.values())
    if overlap.get("min_cohort") != k:
        problems.append(
            f"overlap min_cohort shows {overlap.get('min_cohort')!r} but the "
            f"participants signed at most {k}"
        )
    shares = dict.fromkeys(signed, 0)
    for section in ("groups", "pairwise"):
        entries = report.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"{section} is not a list")
            continue
        for entry in entries:
            members = entry.get("jurisdictions") if isinstance(entry, dict) else None
            count = entry.get("count") if isinstance(entry, dict) else None
            if (
                not isinstance(members, list)
                or not members
                or any(m not in signed for m in members)
            ):
                problems.append(f"{section}: {members!r} is not a group of participants")
                continue
            label = f"{section} {'+'.join(members)}"
            if isinstance(count, str):
                if count not in (f"< {k}", "suppressed"):
                    problems.append(
                        f"{label} shows {count!r} but the participants signed min_cohort {k}"
                    )
                continue
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                problems.append(f"{label} shows {count!r}, not a count")
            elif 0 < count < k:
                problems.append(f"{label} shows {count}, below the signed min_cohort {k}")
            elif count > min(signed[m].set_size for m in members):
                problems.append(f"{label} shows {count}, more than a member's signed set size")
            elif section == "groups":
                for member in members:
                    shares[member] += count
    for code, shared in shares.items():
        if shared > signed[code].set_size:
            problems.append(
                f"the groups give {code} {shared} shared items, more than the "
                f"{signed[code].set_size} it signed"
            )
    return problems


def verify_overlap_results(
    report: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    ca_pem: bytes,
    outcome: ReportVerification,
) -> set[str]:
    """Check each overlap participant and the overlap figures; the investigators named."""
    signed: dict[str, OverlapTranscript] = {}
    for result in results:
        node, status = str(result.get("node", "?")), result.get("status")
        if status == NodeStatus.OK:
            transcript = _check_overlap_result(result, report, ca_pem, outcome)
            if transcript is not None:
                signed[node] = transcript
        elif result.get("signature"):  # the coordinator rejected this transcript at query time
            outcome.note(
                f"{node}: {status} — its transcript did not verify when the overlap ran "
                f"({result.get('reason', '')}); not counted"
            )
        else:
            outcome.note(f"{node}: {status} — not signed (only answers are signed)")
    overlap = report.get("overlap")
    roster = overlap.get("participants") if isinstance(overlap, dict) else None
    if outcome.ok and signed and isinstance(roster, list) and sorted(roster) == sorted(signed):
        problems = overlap_mismatches(report, signed)
        if problems:
            outcome.fail("overlap: " + "; ".join(problems))
        else:
            outcome.note(
                f"overlap: {len(signed)} participants; counts within what they signed "
                f"(min_cohort {max(t.min_cohort for t in signed.values())})"
            )
    elif outcome.ok and report.get("groups") is not None:
        outcome.fail("overlap: it shows counts, but not every participant's transcript verifies")
    return {t.investigator for t in signed.values()}
