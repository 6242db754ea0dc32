"""The failure-region search: every finder's candidates scored, corrected, folded and ranked.

:func:`search_regions` runs the finders (:mod:`~chemgap.agent.diagnostics.finders`), scores
each candidate (:mod:`~chemgap.agent.diagnostics.scoring`), tests both sides of a cut once,
adjusts the p-values left together with Benjamini-Hochberg (:func:`_test`), keeps a
conjunction only where it is worse than its parent (:func:`_against_parents`), gives the
significant ones selection-aware intervals (:func:`_selective_intervals`), sets what follows
(silent, severity, level: :func:`_judge`), folds and ranks them
(:mod:`~chemgap.agent.diagnostics.folding`) and summarises what the search could have found
(:func:`search_summary`). The method and its references are in
:mod:`chemgap.agent.diagnostics.regions`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.finders import FINDERS, Candidate, RegionInputs, RegionMethod
from chemgap.agent.diagnostics.folding import fold_into, fold_overlapping, preference, rank_regions
from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.rules import readability, rule_text, simplify_conditions
from chemgap.agent.diagnostics.scoring import Scorer, fold_complements
from chemgap.agent.diagnostics.stats import (
    benjamini_hochberg,
    fcr_level,
    min_p_value,
    structures_needed,
)
from chemgap.agent.diagnostics.table import Features
from chemgap.campaigns.spec import DiagnosticsConfig

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RegionSearch:
    """What :func:`search_regions` found, and what it could have found.

    Attributes:
        regions: the significant regions, merged, most severe first (at most ``max_regions``).
        n_tested: hypotheses tested (the Benjamini-Hochberg family size; both sides of a cut
            count once, :func:`fold_complements`).
        summary: :func:`search_summary` of every tested rule (why a result is empty), with
            ``ci_level`` (the selection-aware level of the significant regions' intervals,
            :func:`_selective_intervals`; None when none is significant), ``n_significant``
            (R of that level: the significant rules, folded ones included, before merging)
            and ``conjunctions`` (``{"tested", "folded", "dropped"}``: significant
            conjunctions tested against their parents, those folded under their parent's
            region, those without one and so not significant; :func:`_against_parents`), and
            ``ci_includes_1`` (rules BH selected whose adjusted ratio CI still includes 1, not
            reported: :func:`_require_interval`).
    """

    regions: list[Region]
    n_tested: int
    summary: dict[str, Any]


def find_regions(
    features: Features,
    errors: np.ndarray,
    uncertainty: np.ndarray,
    cfg: DiagnosticsConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[list[Region], int]:
    """Find, test, correct, merge and rank failure regions (:func:`search_regions`).

    Returns:
        (regions, n_tested): the significant regions, most severe first, and how many
        hypotheses were tested (the BH family size; both sides of a cut count once).
    """
    found = search_regions(features, errors, uncertainty, cfg, methods=methods, rng=rng)
    return found.regions, found.n_tested


def search_regions(
    features: Features,
    errors: np.ndarray,
    uncertainty: np.ndarray,
    cfg: DiagnosticsConfig | None = None,
    *,
    methods: Sequence[str] | None = None,
    rng: np.random.Generator | None = None,
) -> RegionSearch:
    """Find, test, correct, merge and rank failure regions; summarise what could be found.

    Every finder's candidates are scored (one-sided structure-level test, cluster-bootstrap
    CIs), both sides of a cut are folded into one two-sided hypothesis
    (:func:`fold_complements`), the p-values left are Benjamini-Hochberg adjusted together
    (:func:`_test`), a significant conjunction not worse than its parent is folded under the
    parent's region (:func:`_against_parents`), the significant ones get false-coverage-rate
    adjusted intervals (:func:`_selective_intervals`), silent, severity and level follow
    (:func:`_judge`), and the significant ones are merged and ranked.

    Args:
        features: the feature table, one row per atom.
        errors: (n_atoms,) per-atom force-error norm |F_pred - F_ref|, eV/Å.
        uncertainty: (n_atoms,) per-atom calibrated force std, eV/Å (NaN where unknown).
        cfg: the thresholds (``alpha``, ``bootstrap``, ``min_region_atoms``, ``min_ratio``,
            ``tree_depth``, ``silent_factor``, ``max_regions``); None: the defaults of
            :class:`~chemgap.campaigns.spec.DiagnosticsConfig`.
        methods: the finders to run (names of :class:`RegionMethod`); None: all of them.
        rng: the generator of every random choice (bootstrap, the tree's honest split);
            None: ``default_rng(0)``.

    Returns:
        :class:`RegionSearch`.
    """
    cfg = cfg if cfg is not None else DiagnosticsConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    errors = np.asarray(errors, dtype=float)
    uncertainty = np.asarray(uncertainty, dtype=float)
    n_atoms = features.n_atoms
    if len(errors) != n_atoms or len(uncertainty) != n_atoms:
        raise ValueError(f"errors/uncertainty must have {n_atoms} entries (one per atom)")
    inp = RegionInputs(
        features=features,
        errors=errors,
        uncertainty=uncertainty,
        min_atoms=cfg.min_region_atoms,
        min_ratio=cfg.min_ratio,
        tree_depth=cfg.tree_depth,
        rng=rng,
    )
    candidates = _candidates(inp, methods)
    regions: list[Region] = []
    sizes: list[tuple[int, int]] = []
    under: dict[int, int] = {}
    level: float | None = None
    conjunctions = {"tested": 0, "folded": 0, "dropped": 0}
    if candidates:
        scorer = Scorer(inp=inp, n_boot=cfg.bootstrap, rng=rng)
        scored = [scorer.region(cand) for cand in candidates]
        tested = fold_complements([r for r, _ in scored], [scorer.sides(c) for c in candidates])
        candidates = [candidates[i] for i in tested]
        regions = [scored[i][0] for i in tested]
        sizes = [scored[i][1] for i in tested]
        under, conjunctions, level = _test(regions, candidates, scorer, cfg)
        _judge(regions, cfg)
    summary = search_summary(
        regions,
        sizes,
        n_structures=features.n_struct,
        n_atoms=n_atoms,
        cfg=cfg,
        two_sided=[r.complement is not None for r in regions],
    )
    n_significant = sum(r.significant for r in regions)
    ci_includes_1 = conjunctions.pop("ci_includes_1", 0)  # _test's count, not a conjunction's
    summary.update(
        ci_level=level,
        n_significant=n_significant,
        conjunctions=conjunctions,
        ci_includes_1=ci_includes_1,
    )
    for i, j in under.items():  # a conjunction not worse than its parent: under its region
        mi, mj = candidates[i].mask, candidates[j].mask
        fold_into(regions[j], regions[i], float((mi & mj).sum() / (mi | mj).sum()))
    keep = [i for i, r in enumerate(regions) if r.significant and i not in under]
    log.info(
        "%d hypotheses tested (%d of them two-sided, both sides of a cut), %d significant "
        "(%d conjunctions folded under their parents, %d dropped), intervals at %s",
        len(regions),
        sum(r.complement is not None for r in regions),
        n_significant,
        conjunctions["folded"],
        conjunctions["dropped"],
        "–" if level is None else f"{level:.4g}",
    )
    folded = fold_overlapping([regions[i] for i in keep], [candidates[i].mask for i in keep])
    ranked = rank_regions(folded)
    return RegionSearch(regions=ranked[: cfg.max_regions], n_tested=len(regions), summary=summary)


def search_summary(
    tested: Sequence[Region],
    sizes: Sequence[tuple[int, int]],
    *,
    n_structures: int,
    n_atoms: int,
    cfg: DiagnosticsConfig,
    two_sided: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """What a search could have found at its size, and the strongest rules it did see.

    The reasoning, so that the sentences built on it
    (:func:`chemgap.agent.diagnostics.explain.explain_empty`) are true:

    - every rule is tested with a one-sided Mann-Whitney U test of the per-structure mean error
      inside (``n_in`` structures) against outside (``n_out``); its p-value cannot fall below
      ``min_p_value(n_in, n_out)``, the p-value at complete separation (every structure's mean
      inside above every one outside; :func:`chemgap.agent.diagnostics.stats.min_p_value`);
      a rule tested two-sided because its complement was proposed too (:func:`fold_complements`)
      has p = 2 x the one-sided p of its side, so its floor is min(1, 2 ``min_p_value``) (the
      smallest one-sided p is symmetric in the two sample sizes);
    - a Benjamini-Hochberg q-value is never below its own p-value (q_(i) = min over j ≥ i of
      m p_(j) / j, and p_(j) ≥ p_(i), m / j ≥ 1), so no rule's q can fall below the smallest
      complete-separation p over the rules tried: ``min_q_achievable``. That bound is reached
      only when every rule is that extreme; a rule that is the only one with a small p-value
      gets q = m p (BH rank 1 of m), so ``min_q_lone`` = min(1, m x ``min_q_achievable``) is
      what a lone, perfectly separated finding would get;
    - when ``min_q_achievable`` > alpha no rule could have been reported whatever the errors;
      ``structures_needed`` is then the fewest structures with which any test can reach
      p ≤ alpha at all (:func:`chemgap.agent.diagnostics.stats.structures_needed`), a necessary
      (not sufficient) size: for p ≤ alpha / 2 one-sided when every rule tried was two-sided
      (more structures keep the same kinds of features, so the same cuts), for p ≤ alpha
      when any was one-sided;
    - the test ranks structures, so it has no smallest detectable ratio of its own: any rule
      whose error ratio is ≥ ``min_ratio`` could have been reported when its structures
      separate well enough; ``min_ratio`` is therefore the smallest reportable ratio whenever
      ``min_q_achievable`` ≤ alpha;
    - the bounds assume distinct per-structure mean errors (continuous force errors have no
      exact ties; with ties scipy's tie-corrected approximation can fall a little lower);
    - what was seen: the rule with the largest error ratio and its q (``max_ratio_seen``), the
      rule with the smallest q and its ratio (``min_q_seen``), and how many rules reached
      q ≤ alpha but fell short of ``min_ratio`` (``n_below_min_ratio``).

    Args:
        tested: every tested rule as a judged :class:`Region` (q-values set).
        sizes: (n_in, n_out) structures of each rule's test, in the same order.
        n_structures: structures diagnosed.
        n_atoms: atoms diagnosed.
        cfg: the thresholds (``alpha``, ``min_ratio``, ``min_region_atoms``).
        two_sided: per rule, whether its p-value is two-sided (both sides of a cut folded into
            one hypothesis); None: all one-sided.

    Returns:
        A JSON-ready dict: n_structures, n_atoms, n_rules_tested, n_two_sided (rules tested
        two-sided), alpha, min_ratio, min_region_atoms, min_q_achievable, min_q_lone,
        best_sizes ([n_in, n_out] of the rule that could reach the smallest p), best_two_sided
        (whether that rule's p is two-sided), structures_needed (None when q ≤ alpha was
        achievable), n_below_min_ratio, max_ratio_seen and min_q_seen (``{"rule", "ratio",
        "q_value", "held_out"}`` or None). With no rule tested the achievable figures are None.
    """
    m = len(tested)
    two = [bool(t) for t in two_sided] if two_sided is not None else [False] * m
    if len(two) != m:
        raise ValueError("search_summary: two_sided must have one entry per tested rule")
    out: dict[str, Any] = {
        "n_structures": int(n_structures),
        "n_atoms": int(n_atoms),
        "n_rules_tested": m,
        "n_two_sided": sum(two),
        "alpha": float(cfg.alpha),
        "min_ratio": float(cfg.min_ratio),
        "min_region_atoms": int(cfg.min_region_atoms),
        "min_q_achievable": None,
        "min_q_lone": None,
        "best_sizes": None,
        "best_two_sided": None,
        "structures_needed": None,
        "n_below_min_ratio": sum(
            bool(r.q_value <= cfg.alpha and not r.ratio >= cfg.min_ratio) for r in tested
        ),
        "max_ratio_seen": None,
        "min_q_seen": None,
    }
    if not m:
        return out
    p_min = [
        min(1.0, (2.0 if t else 1.0) * min_p_value(int(a), int(b)))
        for (a, b), t in zip(sizes, two, strict=True)
    ]
    best = int(np.argmin(p_min))
    out["min_q_achievable"] = p_min[best]
    out["min_q_lone"] = min(1.0, m * p_min[best])
    out["best_sizes"] = [int(sizes[best][0]), int(sizes[best][1])]
    out["best_two_sided"] = two[best]
    if p_min[best] > cfg.alpha:
        out["structures_needed"] = structures_needed(cfg.alpha / 2 if all(two) else cfg.alpha)
    finite = [r for r in tested if np.isfinite(r.ratio)]
    if finite:
        top = max(finite, key=lambda r: (r.ratio, -r.q_value))
        out["max_ratio_seen"] = _seen(top)
    out["min_q_seen"] = _seen(min(tested, key=lambda r: (r.q_value, -_finite_or(r.ratio))))
    return out


def _finite_or(value: float, default: float = -np.inf) -> float:
    return float(value) if np.isfinite(value) else default


def _seen(r: Region) -> dict[str, Any]:
    """The summary's view of one tested rule."""
    return {"rule": r.rule, "ratio": r.ratio, "q_value": r.q_value, "held_out": r.held_out}


def _candidates(inp: RegionInputs, methods: Sequence[str] | None) -> list[Candidate]:
    """Every finder's candidates of at least ``min_atoms`` atoms (and not all atoms), plain.

    Each rule is made plain first (:func:`~chemgap.agent.diagnostics.rules.simplify_conditions`:
    sets for negated categories, conditions that change nothing dropped; same atoms), its
    earlier machine form kept in ``earlier``. An atom set a finder proposes twice is tested
    once, under its most readable rule (:func:`~chemgap.agent.diagnostics.rules.readability`;
    the first proposed on ties); the others go to ``also``.
    """
    n_atoms = inp.features.n_atoms
    candidates: list[Candidate] = []
    seen: dict[bytes, Candidate] = {}
    for name in methods or list(FINDERS):
        for cand in FINDERS[RegionMethod(name)](inp):
            n_in = int(cand.mask.sum())
            if n_in < inp.min_atoms or n_in == n_atoms:
                continue
            _make_plain(cand, inp.features)
            key = np.packbits(cand.mask).tobytes() + cand.method.encode()
            if key not in seen:
                seen[key] = cand
                candidates.append(cand)
                continue
            kept = seen[key]
            if readability(cand.conditions) < readability(kept.conditions):
                kept.conditions, cand.conditions = cand.conditions, kept.conditions
                kept.earlier, cand.earlier = cand.earlier, kept.earlier
            kept.also.append(cand.conditions)
            kept.earlier.extend(cand.earlier)
    return candidates


def _make_plain(cand: Candidate, features: Features) -> None:
    """Replace a rule of several conditions, and its parent's, by their plainest forms (same
    atoms), in place.
    """
    if cand.parent is not None and len(cand.parent) >= 2:
        cand.parent = simplify_conditions(cand.parent, features, cand.parent_mask)
    if len(cand.conditions) < 2:
        return
    plain = simplify_conditions(cand.conditions, features, cand.mask)
    if rule_text(plain) != cand.rule:
        cand.earlier.append(cand.rule)
        cand.conditions = plain


def _test(
    regions: list[Region], candidates: list[Candidate], scorer: Scorer, cfg: DiagnosticsConfig
) -> tuple[dict[int, int], dict[str, int], float | None]:
    """The verdict on every hypothesis: BH-adjust all p-values together, set significant, test
    the significant conjunctions against their parents, give the significant ones their
    selection-aware intervals.

    ``regions`` are the hypotheses left by :func:`fold_complements`: one-sided structure-level
    Mann-Whitney p-values, and two-sided ones (p = min(1, 2 min(p_a, p_b))) where both sides of
    a cut were proposed. The Benjamini-Hochberg step-up procedure over all of them controls
    the false-discovery rate at ``alpha`` for positively dependent tests, which the nested
    rules across cut points are once the negatively dependent complementary pairs are folded.
    A hypothesis is significant when its q ≤ ``alpha`` and its ratio ≥ ``min_ratio``; a
    conjunction then also by :func:`_against_parents`; the intervals of the significant ones
    come from :func:`_selective_intervals`.

    Returns:
        (conjunctions to fold under their parents' regions, the conjunction counts, the
        intervals' level): :func:`_against_parents`, :func:`_selective_intervals`.
    """
    q = benjamini_hochberg(np.array([r.p_value for r in regions]))
    for r, qv in zip(regions, q, strict=True):
        r.q_value = float(qv)
        r.significant = bool(qv <= cfg.alpha and r.ratio >= cfg.min_ratio)
    under, counts = _against_parents(regions, candidates, scorer, cfg)
    level = _selective_intervals(regions, candidates, scorer, cfg)
    counts["ci_includes_1"] = _require_interval(regions)
    return under, counts, level


def _require_interval(regions: list[Region]) -> int:
    """One verdict from the test and the interval: a significant region whose selection-aware
    ratio CI still includes 1 (no effect) is not reported; returns how many were dropped.

    The p-value is a rank test of per-structure means and the CI a bootstrap of the mean
    ratio; with heavy-tailed errors the first can find a shift the second cannot bound away from
    1 (organics-xtb's `group = carbonyl` at q 2e-3 with a CI of 0.75–2.65). Reporting such a
    region would put "significant" beside an interval that includes no effect, so both must
    agree. The intervals' level stays the one the BH selection set (R counts the regions BH
    selected): requiring the interval to exclude 1 only reports fewer of them.
    """
    dropped = 0
    for r in regions:
        if r.significant and not r.ratio_ci[0] > 1.0:
            r.significant = False
            dropped += 1
    if dropped:
        log.info("%d significant rules not reported: their ratio CI includes 1", dropped)
    return dropped


def _judge(regions: list[Region], cfg: DiagnosticsConfig) -> None:
    """What follows from the verdicts (:func:`_test`): set silent, severity and level.

    ``regions`` are all the hypotheses tested, their significance and intervals final.
    """
    for r in regions:
        r.silent = _silent(r, cfg)
        r.severity = _severity(r)
    _levels(regions, cfg)


def _severity(r: Region) -> float:
    """The ranking key: the lower bound of the ratio's CI minus 1, doubled when silent."""
    return float((r.ratio_ci[0] - 1.0) * (2.0 if r.silent else 1.0))


def _against_parents(
    regions: list[Region], candidates: list[Candidate], scorer: Scorer, cfg: DiagnosticsConfig
) -> tuple[dict[int, int], dict[str, int]]:
    """A conjunction is a region of its own only where it is worse than its parent.

    A significant conjunction (a tree rule below the tree's first split, with its ``parent``:
    the rule one split up) that merely splits its parent shows the parent's excess at the
    parent's ratio (``coordination ≤ 11 and mean bond stretch > 0.02 Å`` and ``... ≤ 0.02 Å``
    beside ``coordination ≤ 11``). Each is tested against the parent's other atoms
    (:meth:`~chemgap.agent.diagnostics.scoring.Scorer.parent_p`: one-sided Mann-Whitney of
    per-structure means, the conjunction's atoms against the parent's other atoms, over the
    structures holding the parent's atoms, on the structures the conjunction is scored on),
    and the p-values of all conjunctions tested are Benjamini-Hochberg adjusted together
    (``parent_p``, ``parent_q``). The structure-level comparison, the test the region was
    found by restricted to the parent's atoms, answers whatever the last condition selects:
    the within-structure test has nothing to compare when it selects whole structures (a
    composition, a surface flag).

    A conjunction with ``parent_q`` > ``alpha`` is folded under the significant region whose
    atoms are the parent's (listed there with its own statistics; the most readable such
    region, a parent itself folded is followed to where it goes), or, with no such region,
    is not significant: its excess is not shown to be its own, and the parent it would
    belong to is not a finding.

    Returns:
        ({conjunction index: index of the region it is folded under}, {"tested", "folded",
        "dropped"}).
    """
    conj = [
        i for i, r in enumerate(regions) if r.significant and candidates[i].parent_mask is not None
    ]
    counts = {"tested": len(conj), "folded": 0, "dropped": 0}
    if not conj:
        return {}, counts
    p = np.array([scorer.parent_p(candidates[i]) for i in conj])
    for i, pv, qv in zip(conj, p, benjamini_hochberg(p), strict=True):
        regions[i].parent_p, regions[i].parent_q = float(pv), float(qv)
    failing = {i for i in conj if not regions[i].parent_q <= cfg.alpha}
    by_atoms: dict[bytes, list[int]] = {}
    for j, r in enumerate(regions):
        if r.significant:
            by_atoms.setdefault(np.packbits(candidates[j].mask).tobytes(), []).append(j)
    direct: dict[int, int | None] = {}
    for i in sorted(failing):
        key = np.packbits(candidates[i].parent_mask).tobytes()
        found = [j for j in by_atoms.get(key, []) if j != i]
        found.sort(key=lambda j: (j in failing, preference(regions[j])))
        direct[i] = found[0] if found else None
    under: dict[int, int] = {}
    for i in sorted(failing):
        j = direct[i]
        while j is not None and j in failing:
            j = direct[j]
        if j is None:
            regions[i].significant = False
            counts["dropped"] += 1
        else:
            under[i] = j
            counts["folded"] += 1
    return under, counts


def _selective_intervals(
    regions: list[Region], candidates: list[Candidate], scorer: Scorer, cfg: DiagnosticsConfig
) -> float | None:
    """Give every significant region false-coverage-rate adjusted intervals; their level.

    With R of the m hypotheses significant (folded conjunctions included: they are listed
    with their intervals), ``ci`` and ``ratio_ci`` are recomputed at 1 - R alpha / m
    (:func:`~chemgap.agent.diagnostics.stats.fcr_level`, Benjamini & Yekutieli 2005) by a
    cluster bootstrap with enough resamples for that level's tails
    (:meth:`~chemgap.agent.diagnostics.scoring.Scorer.intervals`) and ``ci_level`` set (the
    severity, :func:`_judge`, then comes from the new lower bound). Rules not significant keep
    their 95 % intervals.

    Returns:
        The level, None when nothing is significant.
    """
    sig = [i for i, r in enumerate(regions) if r.significant]
    if not sig:
        return None
    level = fcr_level(len(sig), len(regions), cfg.alpha)
    found = scorer.intervals([candidates[i] for i in sig], level)
    for i, (ci, ratio_ci) in zip(sig, found, strict=True):
        r = regions[i]
        r.ci, r.ratio_ci, r.ci_level = ci, ratio_ci, level
    return level


def _silent(r: Region, cfg: DiagnosticsConfig) -> bool:
    """Whether a significant region is silent: its uncertainty does not follow its error.

    Two conditions, both on the region's own atoms: its error per unit of uncertainty is
    ≥ ``silent_factor`` times that of all atoms (the uncertainty lags the error *relatively*),
    and its mean force error exceeds its mean calibrated force std (the uncertainty does not
    cover the error *absolutely*: a calibrated std is the RMS error it predicts, so a region
    whose std exceeds its error is flagged by uncertainty-driven sampling, whatever the ratio).
    """
    if not (r.significant and np.isfinite(r.error_to_uncertainty)):
        return False
    return bool(r.error_to_uncertainty >= cfg.silent_factor and r.mean_error > r.uncertainty_mean)


def _levels(regions: list[Region], cfg: DiagnosticsConfig) -> None:
    """Where each significant finding lives: the within-structure p-values of the significant
    atom rules (those with structures holding atoms on both sides) are Benjamini-Hochberg
    adjusted together; a rule is an ``atom`` finding when its within q ≤ ``alpha``, otherwise a
    ``structure`` finding (its structures are worse; its atoms are not shown to be worse than
    their neighbours), as is every rule that selects whole structures.
    """
    atom_rules = [r for r in regions if r.significant and np.isfinite(r.within_p)]
    within_q = benjamini_hochberg(np.array([r.within_p for r in atom_rules]))
    for r, qv in zip(atom_rules, within_q, strict=True):
        r.within_q = float(qv)
    for r in regions:
        atom = r.significant and np.isfinite(r.within_q) and r.within_q <= cfg.alpha
        r.level = "atom" if atom else "structure"
