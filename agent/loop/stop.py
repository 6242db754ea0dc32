"""The stop rule: after each iteration, whether the campaign stops, and why.

Stop reasons, in the order checked: convergence (accurate fraction at or above its level and the
holdout force MAE changing less than its tolerance for ``patience`` iterations, and, when the
spec asks, the last probe run passed), the iteration cap, the oracle-call budget, and the
wall-time budget (summed over resumes; another iteration is started only if one more like the
last fits in it).
"""

from __future__ import annotations

import itertools
from typing import Any


def stop_reason(
    history: list[dict[str, Any]], budget: Any, *, oracle_calls: int, elapsed_s: float
) -> str | None:
    """Why the campaign stops after ``history``'s last iteration, or None to go on.

    Args:
        history: ``state.json``'s rows (:class:`chemgap.agent.store.HistoryRow`), in order.
        budget: the spec's ``budget`` section (:class:`chemgap.campaigns.spec.BudgetConfig`).
        oracle_calls: oracle calls made so far (data.db's labels and failures, all splits).
        elapsed_s: the campaign's wall time so far, s.
    """
    b = budget
    it = history[-1]["iteration"] if history else 0
    conv = b.convergence
    recent = history[-(conv.patience + 1) :]
    if (
        len(recent) == conv.patience + 1
        and all(h["accurate"] >= conv.accurate_fraction for h in recent[1:])
        and all(
            abs(b2["force_mae"] - b1["force_mae"]) < conv.force_mae_tol
            for b1, b2 in itertools.pairwise(recent)
        )
        and (not conv.probes or last_probes_passed(history))
    ):
        return (
            f"converged: accurate fraction ≥ {conv.accurate_fraction:g} and force MAE "
            f"change < {conv.force_mae_tol:g} eV/Å for {conv.patience} iterations"
            + (" and the last probes passed" if conv.probes else "")
        )
    if it >= b.max_iterations:
        return f"iteration cap ({b.max_iterations})"
    if oracle_calls >= b.max_oracle_calls:
        return f"oracle-call budget ({b.max_oracle_calls})"
    last = (
        history[-1]["elapsed_s"] - (history[-2]["elapsed_s"] if len(history) > 1 else 0)
        if history
        else 0.0
    )
    if elapsed_s + last > b.wall_time_s:
        return (
            f"wall-time budget ({b.wall_time_s:g} s; another iteration of ~{last:.0f} s "
            "would exceed it)"
        )
    return None


def last_probes_passed(history: list[dict[str, Any]]) -> bool:
    """Whether the most recent probe run in ``history`` passed (False before any ran)."""
    runs = [h for h in history if h.get("probes_run")]
    return bool(runs) and bool(runs[-1].get("probes_passed"))
