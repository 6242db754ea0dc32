"""Why a diagnosis found no failure region, in sentences (``chemgap diagnose`` and ``inspect``).

The sentences are built on the search's summary
(:func:`chemgap.agent.diagnostics.search.search_summary`), whose docstring has the reasoning.
"""

from __future__ import annotations

from typing import Any


def explain_empty(diagnosed: dict[str, Any] | None) -> list[str]:
    """Why a diagnosis found no failure region, as sentences (from ``diagnosed``).

    Built on :func:`~chemgap.agent.diagnostics.search.search_summary`, whose docstring has the
    reasoning: what was tested, whether any rule could have reached q ≤ alpha at this size (and
    otherwise how many structures that takes at least), the smallest reportable ratio, and the
    strongest rules actually seen.
    """
    d = diagnosed or {}
    if "n_rules_tested" not in d:
        return ["No failure region (this diagnosis predates the explanation; diagnose again)."]
    m, alpha = d["n_rules_tested"], d["alpha"]
    two = d.get("n_two_sided") or 0
    sides = f"; {two} two-sided, both sides of a cut as one" if two else ""
    tested = (
        f"{d['n_structures']} structures ({d['n_atoms']} atoms) tested, {m} rules tried "
        f"(each of ≥ {d['min_region_atoms']} atoms{sides}), Benjamini-Hochberg FDR {alpha:g}."
    )
    if not m:
        return [
            f"No failure region: {tested}",
            f"No rule was tried: every candidate held fewer than {d['min_region_atoms']} atoms "
            "or all of them.",
        ]
    return [f"No failure region: {tested}", *_reachability(d), *_strongest(d)]


def _reachability(d: dict[str, Any]) -> list[str]:
    """Whether any rule could have reached q ≤ alpha here, and the smallest reportable ratio.

    Three cases, from ``min_q_achievable`` (p at complete separation of the best-placed rule,
    doubled when that rule was tested two-sided; q ≥ p) and ``min_q_lone`` (m p; BH gives
    q ≤ m p whatever the other rules do): reachable by that rule on its own, reachable only
    together with other strong rules, or not at all.
    """
    alpha, p_min, lone, m = d["alpha"], d["min_q_achievable"], d["min_q_lone"], d["n_rules_tested"]
    n_in, n_out = d["best_sizes"]
    sided = ", two-sided: both sides of its cut were tried" if d.get("best_two_sided") else ""
    best = f"the best-placed rule ({n_in} structures against {n_out}{sided})"
    ratio = (
        "The test ranks structures rather than measuring ratios, so the smallest reportable "
        f"error ratio is the threshold itself: {d['min_ratio']:g} (diagnostics.min_ratio)."
    )
    if lone <= alpha:
        return [
            f"Significance was within reach: {best} gets q ≤ {lone:.2g} if its structures all "
            f"rank above the rest, whatever the other {m - 1} rules do. " + ratio
        ]
    if p_min <= alpha:
        return [
            f"Significance was barely within reach: with its structures all ranking above the "
            f"rest, {best} gets p = {p_min:.2g}, which Benjamini-Hochberg over {m} rules keeps "
            f"at q ≤ {alpha:g} only if other rules are about as strong (alone: q = {lone:.2g}). "
            + ratio
        ]
    need = d.get("structures_needed")
    more = (
        f" It takes at least {need} structures for any rule to get there."
        if need is not None and need > d["n_structures"]
        else " Only rules that split the structures more evenly could get there."
    )
    return [
        f"No rule could have reached q ≤ {alpha:g} at this size: even with its structures all "
        f"ranking above the rest, {best} gets p = {p_min:.2g}, and q is never below p." + more
    ]


def _strongest(d: dict[str, Any]) -> list[str]:
    """The largest ratio and the smallest q actually seen."""
    out = []
    top, best = d.get("max_ratio_seen"), d.get("min_q_seen")
    if top and top.get("ratio") is not None:
        out.append(
            f"Largest ratio seen: {top['ratio']:.2f}× for '{top['rule']}' "
            f"(q = {top['q_value']:.2g})."
        )
    if best and best.get("ratio") is not None and best["rule"] != (top or {}).get("rule"):
        out.append(
            f"Smallest q seen: {best['q_value']:.2g} for '{best['rule']}' "
            f"(ratio {best['ratio']:.2f}×)."
        )
    k = d.get("n_below_min_ratio", 0)
    if k:
        out.append(f"{k} rule(s) reached q ≤ {d['alpha']:g} with ratios below {d['min_ratio']:g}.")
    return out
