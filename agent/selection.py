"""Choosing what the oracle labels next: a budgeted, diverse, de-duplicated batch of candidates.

Strategies are a ``StrEnum`` (:class:`chemgap.campaigns.spec.SelectionStrategy`) plus the registry
:data:`STRATEGIES` (docs/architecture.md):

- ``uncertainty``: highest calibrated uncertainty first (query by committee; Seung et al. 1992).
- ``diverse``: farthest-point sampling (Gonzalez 1985) in descriptor space, seeded with the most
  uncertain candidate and weighted by uncertainty, so the batch covers distinct failure modes
  instead of many copies of one (cf. batch active learning, Zaverkin et al. 2022).
- ``random``: the control every claim about the other two is measured against.

All strategies share the same constraints, applied in this order: candidates that duplicate an
already-labelled structure (or each other) are dropped; ``priority`` candidates (a campaign's
probe-sourced structures: physics the model got wrong, whatever its uncertainty says) are taken
next, in their order, within their own share of the budget; per-element quotas are filled;
then the strategy fills the rest of the budget, where the budget is counted in oracle cost
(seconds from the oracle's cost model, or one unit per structure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from chemgap.campaigns.spec import SelectionStrategy

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Candidates:
    """Frames the explorer flagged, as arrays over ``n`` candidates.

    Attributes:
        uncertainty: (n,) calibrated uncertainty, e.g. max per-atom force std, eV/Å.
        descriptors: (n, d) structure descriptors (members' invariant node features averaged
            per structure); distances in this space measure similarity.
        elements: n sets of element symbols each candidate contains.
        cost: (n,) oracle cost of labelling each, in the oracle's units (s); ones if unknown.
    """

    uncertainty: np.ndarray
    descriptors: np.ndarray
    elements: list[frozenset[str]]
    cost: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.uncertainty = np.asarray(self.uncertainty, dtype=float)
        self.descriptors = np.asarray(self.descriptors, dtype=float)
        n = len(self.uncertainty)
        if self.descriptors.ndim != 2 or len(self.descriptors) != n:
            raise ValueError(f"descriptors must be (n={n}, d), got {self.descriptors.shape}")
        if len(self.elements) != n:
            raise ValueError(f"elements must have {n} entries, got {len(self.elements)}")
        self.cost = np.ones(n) if self.cost is None else np.asarray(self.cost, dtype=float)
        if self.cost.shape != (n,) or (self.cost <= 0).any():
            raise ValueError("cost must be (n,) and positive")

    def __len__(self) -> int:
        return len(self.uncertainty)


@dataclass(kw_only=True)
class Selection:
    """The chosen batch and why each candidate was or was not taken.

    Attributes:
        indices: chosen candidate indices, in the order they were picked.
        duplicates: candidates dropped as duplicates of labelled data or of each other.
        reason: per chosen index, ``'quota:<El>'`` or the strategy's name.
        spent: total oracle cost of the batch.
    """

    indices: list[int]
    duplicates: list[int] = field(default_factory=list)
    reason: dict[int, str] = field(default_factory=dict)
    spent: float = 0.0


Strategy = Callable[[Candidates, np.ndarray, list[int], np.random.Generator], int | None]


def _pick_uncertainty(c: Candidates, pool: np.ndarray, chosen: list[int], rng) -> int | None:
    return int(pool[np.argmax(c.uncertainty[pool])]) if len(pool) else None


def _pick_random(c: Candidates, pool: np.ndarray, chosen: list[int], rng) -> int | None:
    return int(rng.choice(pool)) if len(pool) else None


def _pick_diverse(c: Candidates, pool: np.ndarray, chosen: list[int], rng) -> int | None:
    """Farthest-point step: the pool member maximising uncertainty x distance to the batch."""
    if not len(pool):
        return None
    if not chosen:
        return _pick_uncertainty(c, pool, chosen, rng)
    d = _min_distance(c.descriptors[pool], c.descriptors[chosen])
    scale = c.uncertainty[pool] / max(c.uncertainty[pool].max(), 1e-12)
    return int(pool[np.argmax(d * (0.5 + 0.5 * scale))])


STRATEGIES: dict[SelectionStrategy, Strategy] = {
    SelectionStrategy.UNCERTAINTY: _pick_uncertainty,
    SelectionStrategy.DIVERSE: _pick_diverse,
    SelectionStrategy.RANDOM: _pick_random,
}


def _min_distance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(len(points),) Euclidean distance of each point to its nearest in ``others``."""
    if not len(others):
        return np.full(len(points), np.inf)
    diff = points[:, None, :] - others[None, :, :]
    return np.sqrt((diff**2).sum(-1)).min(axis=1)


def find_duplicates(
    descriptors: np.ndarray, uncertainty: np.ndarray, labelled: np.ndarray | None, tol: float
) -> list[int]:
    """Candidates within ``tol`` (descriptor distance) of a labelled structure, or of a more
    uncertain candidate (the most uncertain of a group of near-copies is kept).
    """
    dup: set[int] = set()
    if labelled is not None and len(labelled):
        dup |= set(np.flatnonzero(_min_distance(descriptors, labelled) <= tol).tolist())
    kept: list[int] = []
    for i in np.argsort(-uncertainty, kind="stable"):
        if i in dup:
            continue
        if kept and _min_distance(descriptors[[i]], descriptors[kept])[0] <= tol:
            dup.add(int(i))
        else:
            kept.append(int(i))
    return sorted(dup)


def select(
    candidates: Candidates,
    budget: float,
    *,
    strategy: SelectionStrategy | str = SelectionStrategy.DIVERSE,
    quotas: dict[str, int] | None = None,
    labelled_descriptors: np.ndarray | None = None,
    dedup_distance: float = 1e-3,
    rng: np.random.Generator | None = None,
    priority: Sequence[int] = (),
    priority_budget: float | None = None,
    priority_reason: str = "priority",
) -> Selection:
    """Choose a labelling batch whose total cost stays within ``budget``.

    Args:
        candidates: the flagged frames.
        budget: oracle cost available (structures when every cost is 1).
        strategy: ``uncertainty``, ``diverse`` or ``random``.
        quotas: ``{element: k}``: at least ``k`` chosen structures containing the element
            (as far as candidates and budget allow), picked by the same strategy.
        labelled_descriptors: (m, d) descriptors of structures already labelled.
        dedup_distance: descriptor distance at or below which two structures are the same.
        rng: for ``random`` (seeded by the caller).
        priority: candidate indices taken before everything else, in this order (duplicates
            and unaffordable ones skipped), with reason ``priority_reason``.
        priority_budget: the most of ``budget`` the priority candidates may spend (default:
            all of it).
        priority_reason: the reason recorded for a priority candidate taken.
    """
    strategy = SelectionStrategy(strategy)
    if budget <= 0:
        raise ValueError(f"budget must be > 0 (got {budget})")
    rng = rng or np.random.default_rng(0)
    pick = STRATEGIES[strategy]
    duplicates = find_duplicates(
        candidates.descriptors, candidates.uncertainty, labelled_descriptors, dedup_distance
    )
    available = np.ones(len(candidates), dtype=bool)
    available[duplicates] = False
    out = Selection(indices=[], duplicates=duplicates)

    def affordable(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask & available & (candidates.cost <= budget - out.spent + 1e-12))

    def take(i: int, why: str) -> None:
        out.indices.append(i)
        out.reason[i] = why
        out.spent += float(candidates.cost[i])
        available[i] = False

    cap = budget if priority_budget is None else min(priority_budget, budget)
    for i in priority:
        if available[i] and out.spent + candidates.cost[i] <= cap + 1e-12:
            take(int(i), priority_reason)
    for element, k in sorted((quotas or {}).items()):
        has = np.array([element in e for e in candidates.elements], dtype=bool)
        have = sum(element in candidates.elements[i] for i in out.indices)
        while have < k and (i := pick(candidates, affordable(has), out.indices, rng)) is not None:
            take(i, f"quota:{element}")
            have += 1
        if have < k:
            log.info("quota %s: %d of %d (candidates or budget ran out)", element, have, k)
    everything = np.ones(len(candidates), dtype=bool)
    while (i := pick(candidates, affordable(everything), out.indices, rng)) is not None:
        take(i, str(strategy))
    log.info(
        "selected %d of %d candidates (%s; %d duplicates; cost %.3g of %.3g)",
        len(out.indices),
        len(candidates),
        strategy,
        len(duplicates),
        out.spent,
        budget,
    )
    return out
