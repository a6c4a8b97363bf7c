"""How decided a derived architecture is: margins of its choices, stability over epochs, and the note that
names what a search did not settle.

A margin is the winner's activated weight minus the runner-up's (DARTS edge selection: the last kept edge's
strength minus the first dropped one's). Under sigmoid ``none`` stays at exactly 1/n for the whole search
(zero output, zero gradient, no weight decay), so an edge whose other ops drift just below 1/n derives
``none`` on differences of a few thousandths: the margin says so.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sldarts.spaces.base import Decision

LAST_SHARE = 0.2  # "the last 20% of epochs"


def margins(decisions: list[Decision]) -> dict[str, Any]:
    """The metrics/result fields: ``margins`` (name -> margin) and ``min_margin``."""
    m = {d.name: round(d.margin, 6) for d in decisions if math.isfinite(d.margin)}
    return {"margins": m, "min_margin": min(m.values()) if m else None}


def stability(rows: list[dict[str, Any]], key: str, epochs: int) -> dict[str, Any]:
    """``stable_since_epoch``: the first epoch from which the derived architecture never changed again
    (0: the initial one was kept); ``distinct_cells_last_20pct``: how many different architectures were
    derived over the last 20% of the epochs (at least the last one)."""
    seq = [(r["epoch"], json.dumps(r[key], sort_keys=True)) for r in rows if key in r]
    if not seq:
        return {"stable_since_epoch": None, "distinct_cells_last_20pct": None}
    final = seq[-1][1]
    since = seq[-1][0]
    for epoch, arch in reversed(seq):
        if arch != final:
            break
        since = epoch
    first_late = epochs - max(math.ceil(LAST_SHARE * epochs), 1) + 1
    late = {arch for epoch, arch in seq if epoch >= first_late}
    return {"stable_since_epoch": since, "distinct_cells_last_20pct": len(late)}


def note(decisions: list[Decision], threshold: float, stab: dict[str, Any]) -> str:
    """One line naming the undecided choices (margin below ``threshold``) with their runner-ups, and a
    cell that changed late; empty when the search settled everything."""
    parts = []
    weak = sorted((d for d in decisions if d.margin < threshold), key=lambda d: d.margin)
    if weak:
        parts.append(f"undecided (margin < {threshold:g}): " + ", ".join(
            f"{d.name} {d.winner} over {d.runner_up} by {d.margin:.2g}" for d in weak))
    changes = stab.get("distinct_cells_last_20pct") or 0
    if changes > 1:
        parts.append(f"the derived cell changed in the last {LAST_SHARE:.0%} of epochs ({changes} distinct cells; "
                     f"stable since epoch {stab['stable_since_epoch']})")
    return "; ".join(parts)
