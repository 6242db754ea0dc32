"""Folding and ranking significant regions: one finding, one row, the readable one first.

Findings whose atom sets overlap strongly (Jaccard index ≥ :data:`MERGE_JACCARD`), and numeric
cuts of one feature the same way at two thresholds, are folded under their most readable member
(:func:`fold_overlapping`; the others are listed with their own statistics), as the search folds
a conjunction not worse than its parent under the parent's region (:func:`fold_into`); the
ranking prefers the readable region when severities are within their CIs (:func:`rank_regions`).
The method is described in :mod:`chemgap.agent.diagnostics.regions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.rules import as_condition, readability

MERGE_JACCARD = 0.8  # regions whose atom sets overlap at least this much are folded together


def preference(r: Region) -> tuple[Any, ...]:
    """Which of two regions represents them: the more readable, then the one scored on every
    structure (a tree rule's held-out half is the weaker evidence), then the more severe.
    """
    return (readability(r.conditions), r.held_out, -r.severity)


def fold_overlapping(regions: list[Region], masks: list[np.ndarray]) -> list[Region]:
    """Group findings whose atom sets overlap strongly under their most readable member.

    Regions are visited in the order of :func:`preference` (most readable first:
    :func:`~chemgap.agent.diagnostics.rules.readability`, a named feature before an environment
    class, fewer conditions before more; then scored on all structures before held-out, then
    the more severe); each joins the first kept region whose atoms overlap its own with a
    Jaccard index |A ∩ B| / |A ∪ B| ≥ :data:`MERGE_JACCARD`, else it is kept itself. Before
    that, regions that cut the same numeric feature the same way (:func:`_same_cut`:
    ``density ≤ 8.87`` and ``density ≤ 9`` are one finding at two thresholds, whatever their
    overlap) are folded under the threshold with the strongest evidence (smallest q). A folded
    region is recorded in its representative's ``folded`` (with its own statistics and the
    Jaccard index) and ``also`` / ``also_ids``; the representative's statistics stay its own.

    Args:
        regions: the significant regions.
        masks: (n_atoms,) bool atoms of each.

    Returns:
        The representatives, in visiting order.
    """
    regions, masks = _fold_thresholds(regions, masks)
    order = sorted(range(len(regions)), key=lambda i: preference(regions[i]))
    kept: list[tuple[Region, np.ndarray]] = []
    for i in order:
        r, m = regions[i], masks[i]
        for k, km in kept:
            union = np.logical_or(m, km).sum()
            jaccard = float(np.logical_and(m, km).sum() / union) if union else 0.0
            if jaccard >= MERGE_JACCARD:
                fold_into(k, r, jaccard)
                break
        else:
            kept.append((r, m))
    return [r for r, _ in kept]


def _fold_thresholds(
    regions: list[Region], masks: list[np.ndarray]
) -> tuple[list[Region], list[np.ndarray]]:
    """Fold each group of :func:`_same_cut` regions under its smallest-q member (then the more
    severe); the other regions pass unchanged, in order.
    """
    order = sorted(range(len(regions)), key=lambda i: (regions[i].q_value, -regions[i].severity))
    heads: list[int] = []
    folded: set[int] = set()
    for i in order:
        head = next((h for h in heads if _same_cut(regions[h], regions[i])), None)
        if head is None:
            heads.append(i)
            continue
        union = np.logical_or(masks[head], masks[i]).sum()
        both = np.logical_and(masks[head], masks[i]).sum()
        fold_into(regions[head], regions[i], float(both / union) if union else 0.0)
        folded.add(i)
    keep = [i for i in range(len(regions)) if i not in folded]
    return [regions[i] for i in keep], [masks[i] for i in keep]


def _same_cut(a: Region, b: Region) -> bool:
    """Whether two regions are one numeric condition each on the same feature, the same way
    (``x ≤ t1`` and ``x ≤ t2``, or ``x ≥``/``>`` alike): one finding at two thresholds.
    """
    if len(a.conditions) != 1 or len(b.conditions) != 1:
        return False
    ca, cb = as_condition(a.conditions[0]), as_condition(b.conditions[0])
    below, above = {"≤", "<"}, {"≥", ">"}
    same_way = {ca.op, cb.op} <= below or {ca.op, cb.op} <= above
    return ca.feature == cb.feature and same_way


def fold_into(k: Region, r: Region, jaccard: float) -> None:
    """Record region ``r`` under its representative ``k`` (``k``'s statistics unchanged).

    ``r``'s entry holds its own statistics (and, for a conjunction not worse than its parent,
    ``parent_q``); the regions folded under ``r`` before move to ``k`` with their entries.
    """
    if r.method not in k.methods:
        k.methods.append(r.method)
    k.also.extend(rule for rule in [r.rule, *r.also] if rule not in k.also and rule != k.rule)
    k.also_ids.extend(i for i in [r.id, *r.also_ids] if i not in k.also_ids and i != k.id)
    known = {d["id"] for d in k.folded} | {k.id}
    k.folded.extend(d for d in r.folded if d["id"] not in known)
    r.folded = []
    if r.id == k.id or r.id in known:  # the same rule from another finder (a tree leaf, a slice)
        return
    entry = {
        "id": r.id,
        "rule": r.rule,
        "machine_rule": r.machine_rule,
        "method": r.method,
        "n_atoms": r.n_atoms,
        "jaccard": round(jaccard, 3),
        "ratio": r.ratio,
        "ratio_ci": list(r.ratio_ci),
        "q_value": r.q_value,
        "severity": r.severity,
    }
    if np.isfinite(r.parent_q):
        entry["parent_q"] = r.parent_q
    k.folded.append(entry)
    if r.enriched and not k.enriched:
        k.enriched = r.enriched


def _indistinguishable(a: Region, b: Region) -> bool:
    """Whether the CIs of two regions' error ratios overlap (finite CIs only; the reported
    regions' intervals share one selection-aware level, :attr:`Region.ci_level`).
    """
    lo_a, hi_a = a.ratio_ci
    lo_b, hi_b = b.ratio_ci
    if not all(np.isfinite([lo_a, hi_a, lo_b, hi_b])):
        return False
    return bool(lo_a <= hi_b and lo_b <= hi_a)


def rank_regions(regions: list[Region]) -> list[Region]:
    """Most severe first, but the more readable of regions whose severities are within CIs.

    Repeatedly: the most severe region left (``severity``, set when the search judges it) and
    every region left whose ratio CI overlaps its CI (and that is silent if it is) are
    candidates for the next place, which goes to the first of them by :func:`preference` (the
    most readable). A
    readable region is thus never ranked below a cryptic one the data cannot tell apart from
    it, and a region clearly more severe than every readable one stays on top.
    """
    left = sorted(regions, key=lambda r: -r.severity)
    out: list[Region] = []
    while left:
        top = left[0]
        tied = [
            r for r in left if r is top or (r.silent >= top.silent and _indistinguishable(r, top))
        ]
        pick = min(tied, key=preference)
        out.append(pick)
        left.remove(pick)
    return out
