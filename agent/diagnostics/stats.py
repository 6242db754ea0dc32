"""Structure-level statistics for failure regions: tests, multiple-testing control, bootstrap.

Two tests per atom rule: between structures (:func:`slice_p_value`: are the structures holding
the rule's atoms worse?) and within them (:func:`within_structure_p`: are the rule's atoms worse
than the other atoms of the same structures?); a region is an atom-level finding only when both
hold, a whole-structure one when only the first does.

Atoms of one structure are not independent, so every test and resampling here treats the
structure as the unit (Field & Welsh, J. R. Stat. Soc. B 69, 369, 2007). The reported regions'
intervals are false-coverage-rate adjusted (:func:`fcr_level`, :func:`cluster_intervals`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as ``p_values``.

    q_(i) = min_{j ≥ i} (m / j) p_(j), capped at 1 (Benjamini & Hochberg 1995); rejecting every
    q ≤ alpha controls the false-discovery rate at alpha for independent or positively
    dependent tests (Benjamini & Yekutieli, Ann. Stat. 29, 1165, 2001). Negatively dependent
    p-values are not covered: the one-sided tests of the two sides of one cut are such a pair,
    so the region finder folds them into one two-sided test first
    (:func:`chemgap.agent.diagnostics.scoring.fold_complements`).
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def structure_means(
    errors: np.ndarray, system_idx: np.ndarray, mask: np.ndarray, n_struct: int
) -> np.ndarray:
    """Per-structure mean of ``errors`` over the atoms in ``mask``, for structures having any."""
    sums = np.bincount(system_idx[mask], weights=errors[mask], minlength=n_struct)
    counts = np.bincount(system_idx[mask], minlength=n_struct)
    has = counts > 0
    return sums[has] / counts[has]


def slice_p_value(
    errors: np.ndarray, system_idx: np.ndarray, mask: np.ndarray, n_struct: int | None = None
) -> float:
    """One-sided structure-level test that errors inside ``mask`` exceed those outside.

    Mann-Whitney U (alternative 'greater') of the per-structure mean error of the atoms in the
    mask against the per-structure mean error of the atoms outside it. 1.0 when a side is empty.
    The test of ``~mask`` swaps the two samples, so min(1, 2 min(p(mask), p(~mask))) is the
    two-sided p-value of the same comparison.
    """
    from scipy.stats import mannwhitneyu

    n = int(system_idx.max()) + 1 if n_struct is None else n_struct
    inside = structure_means(errors, system_idx, mask, n)
    outside = structure_means(errors, system_idx, ~mask, n)
    if len(inside) == 0 or len(outside) == 0:
        return 1.0
    return float(mannwhitneyu(inside, outside, alternative="greater").pvalue)


def within_structure_p(
    errors: np.ndarray, system_idx: np.ndarray, mask: np.ndarray, n_struct: int | None = None
) -> tuple[float, int]:
    """One-sided test, *within* structures, that the atoms in ``mask`` err more than the other
    atoms of the same structures.

    The structure-level test (:func:`slice_p_value`) compares structures: when one kind of
    cell is worse as a whole (every atom of the vacancy cells), any atom rule only those cells
    satisfy (``coordination ≤ 11``) passes it, though its atoms are no worse than their
    neighbours. Here each structure holding atoms on both sides gives one difference, the mean
    error inside minus the mean error outside, and a Wilcoxon signed-rank test (alternative
    'greater'; exact below 50 structures without ties) asks whether those differences sit
    above zero. A whole-cell effect shifts both sides of a structure alike and cancels; an
    effect on some atoms of a cell does not. Structures stay the unit (Field & Welsh 2007).

    Returns:
        (p, n_mixed): the p-value (NaN when no structure holds atoms on both sides: the rule
        selects whole structures, and only the structure-level test applies) and the number
        of structures compared.
    """
    from scipy.stats import wilcoxon

    n = int(system_idx.max()) + 1 if n_struct is None else n_struct
    m = np.asarray(mask, dtype=bool)
    n_in = np.bincount(system_idx[m], minlength=n)
    n_out = np.bincount(system_idx[~m], minlength=n)
    mixed = (n_in > 0) & (n_out > 0)
    n_mixed = int(mixed.sum())
    if n_mixed == 0:
        return float("nan"), 0
    sum_in = np.bincount(system_idx[m], weights=errors[m], minlength=n)
    sum_out = np.bincount(system_idx[~m], weights=errors[~m], minlength=n)
    diff = sum_in[mixed] / n_in[mixed] - sum_out[mixed] / n_out[mixed]
    if not np.any(diff != 0):
        return 1.0, n_mixed
    return float(wilcoxon(diff, alternative="greater").pvalue), n_mixed


@functools.lru_cache(maxsize=4096)
def min_p_value(n_in: int, n_out: int) -> float:
    """The smallest p-value :func:`slice_p_value` can return for ``n_in`` against ``n_out``.

    The one-sided Mann-Whitney p-value falls as U grows, and U is largest (``n_in * n_out``)
    when every per-structure mean inside ranks above every one outside (complete separation).
    The value is computed by the same scipy call on such a sample, so it follows scipy's choice
    of the exact distribution (either sample of at most 8, no ties) or the normal approximation
    with continuity correction. It holds for distinct per-structure means: exact ties, which
    continuous force errors do not produce, can make the tie-corrected approximation smaller.

    Args:
        n_in: structures with atoms inside the region (the first sample).
        n_out: structures with atoms outside it (the second sample).

    Returns:
        The p-value at complete separation; 1.0 when a sample is empty.
    """
    from scipy.stats import mannwhitneyu

    if n_in <= 0 or n_out <= 0:
        return 1.0
    inside = np.arange(n_out, n_out + n_in, dtype=float)
    outside = np.arange(n_out, dtype=float)
    return float(mannwhitneyu(inside, outside, alternative="greater").pvalue)


def structures_needed(alpha: float, limit: int = 100_000) -> int | None:
    """Fewest structures with which any region test can reach p ≤ ``alpha``.

    With n structures both samples of :func:`slice_p_value` hold at most n per-structure means
    (a structure with atoms on both sides is in both), so no p-value can fall below the
    smallest :func:`min_p_value` over sample sizes up to n. That minimum is taken at (n, n) or,
    where scipy uses the exact distribution for a sample of at most 8 against a larger one, at
    (8, n): the exact p-value 1 / C(a + n, a) falls as a grows, the approximate one falls as
    either size grows; the exact (8, 8) is smaller than the approximate (9, 9), so the minimum
    over sizes is not monotone and both candidates are checked for every n.

    Returns:
        The smallest n (≥ 2) for which a test over at most n structures per sample can reach
        p ≤ alpha; None when even ``limit`` structures do not suffice.
    """
    best = 1.0
    for n in range(1, limit + 1):
        best = min(best, min_p_value(n, n), min_p_value(min(n, 8), n))
        if best <= alpha and n >= 2:
            return n
    return None


@dataclass(kw_only=True)
class ClusterBootstrap:
    """Structure-level (cluster) bootstrap shared by all candidates of one diagnosis.

    Attributes:
        weights: (B, n_struct) how often each structure is drawn in each resample.
        baseline: (B,) mean atom error of each resample, eV/Å.
    """

    weights: np.ndarray
    errors: np.ndarray
    system_idx: np.ndarray
    baseline: np.ndarray

    @classmethod
    def draw(
        cls, errors: np.ndarray, system_idx: np.ndarray, n_boot: int, rng: np.random.Generator
    ) -> ClusterBootstrap:
        """Draw ``n_boot`` resamples of the structures (with replacement) from ``rng``.

        Args:
            errors: (n_atoms,) per-atom error, eV/Å.
            system_idx: (n_atoms,) the structure of each atom.
            n_boot: number of resamples.
            rng: the seeded generator.
        """
        n = int(system_idx.max()) + 1
        draws = rng.integers(0, n, size=(n_boot, n))
        weights = np.zeros((n_boot, n))
        np.add.at(weights, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
        total = np.bincount(system_idx, weights=errors, minlength=n)
        count = np.bincount(system_idx, minlength=n)
        baseline = (weights @ total) / (weights @ count)
        return cls(weights=weights, errors=errors, system_idx=system_idx, baseline=baseline)

    def interval(
        self, mask: np.ndarray, level: float = 0.95
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """Percentile CIs of (mean error in mask, eV/Å) and (its ratio to the baseline)."""
        n = self.weights.shape[1]
        s = np.bincount(self.system_idx[mask], weights=self.errors[mask], minlength=n)
        c = np.bincount(self.system_idx[mask], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (self.weights @ s) / (self.weights @ c)
            ratios = means / self.baseline
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        m = np.nanpercentile(means, [lo, hi])
        r = np.nanpercentile(ratios, [lo, hi])
        return (float(m[0]), float(m[1])), (float(r[0]), float(r[1]))


TAIL_RESAMPLES = 20
"""Resamples wanted beyond each bound of a percentile interval (:func:`resamples_for`)."""

MAX_RESAMPLES = 200_000
"""The most resamples :func:`cluster_intervals` draws (its tails rest on fewer than
:data:`TAIL_RESAMPLES` resamples beyond a level of 1 - 2 x 20 / 200 000 = 0.9998)."""


def fcr_level(n_selected: int, n_tested: int, alpha: float) -> float:
    """The confidence level of each of ``n_selected`` intervals chosen among ``n_tested``.

    Benjamini & Yekutieli (J. Am. Stat. Assoc. 100, 71, 2005): when R of m parameters are
    selected (by Benjamini-Hochberg at ``alpha``, or by any rule whose selection of one
    parameter leaves the number selected unchanged while it stays selected), marginal intervals
    at level 1 - R alpha / m keep the false-coverage-statement rate, the expected share of the
    selected intervals that miss their parameter, at most ``alpha`` (a theorem for independent
    estimates); the usual 1 - alpha intervals of the selected do not (winner's curse).

    Args:
        n_selected: R, the parameters selected (≥ 1).
        n_tested: m, the parameters (hypotheses) they were selected from (≥ R).
        alpha: the false-coverage-statement rate (and the selection's false-discovery rate).

    Returns:
        1 - R alpha / m (1 - alpha when everything is selected).
    """
    if not 1 <= n_selected <= n_tested:
        raise ValueError(f"fcr_level: need 1 ≤ selected ≤ tested, got {n_selected}, {n_tested}")
    return 1.0 - n_selected * alpha / n_tested


def resamples_for(level: float, n_boot: int) -> int:
    """How many bootstrap resamples a percentile interval at ``level`` needs.

    At least ``n_boot``; enough that :data:`TAIL_RESAMPLES` resamples lie beyond each bound
    (a tail of (1 - level) / 2 estimated from a handful of resamples is the sample's extreme,
    too narrow); at most :data:`MAX_RESAMPLES`.
    """
    tail = (1.0 - level) / 2.0
    wanted = math.ceil(TAIL_RESAMPLES / tail - 1e-6) if tail > 0 else MAX_RESAMPLES
    return int(min(MAX_RESAMPLES, max(n_boot, wanted)))


def cluster_intervals(
    errors: np.ndarray,
    system_idx: np.ndarray,
    masks: Sequence[np.ndarray],
    level: float,
    n_boot: int,
    rng: np.random.Generator,
    *,
    n_struct: int | None = None,
    chunk_cells: int = 2_000_000,
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Cluster-bootstrap percentile intervals of several masks at any level, in chunks.

    The resampling of :class:`ClusterBootstrap` (structures drawn with replacement; the mean
    error of a mask's atoms and its ratio to the resample's mean over all atoms), with
    :func:`resamples_for` ``(level, n_boot)`` resamples drawn ``chunk_cells / n_struct`` at a
    time, so that the extreme levels of :func:`fcr_level` get tails of their own without a
    (resamples, structures) matrix in memory. Every mask is resampled with the same draws.

    Args:
        errors: (n_atoms,) per-atom error, eV/Å.
        system_idx: (n_atoms,) the structure of each atom (0..n_struct-1).
        masks: (n_atoms,) bool, the atoms of each interval.
        level: the confidence level of every interval.
        n_boot: the fewest resamples (:func:`resamples_for`).
        rng: the seeded generator.
        n_struct: structures (None: ``system_idx.max() + 1``).
        chunk_cells: resamples x structures drawn at a time.

    Returns:
        Per mask ((mean lo, mean hi) eV/Å, (ratio lo, ratio hi)).
    """
    if not masks:
        return []
    n = int(system_idx.max()) + 1 if n_struct is None else n_struct
    total = np.bincount(system_idx, weights=errors, minlength=n)
    count = np.bincount(system_idx, minlength=n).astype(float)
    sums = np.stack([np.bincount(system_idx[m], weights=errors[m], minlength=n) for m in masks], 1)
    counts = np.stack([np.bincount(system_idx[m], minlength=n) for m in masks], 1).astype(float)
    n_res = resamples_for(level, n_boot)
    per_chunk = max(1, chunk_cells // n)
    means, ratios = [], []
    for start in range(0, n_res, per_chunk):
        b = min(per_chunk, n_res - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (weights @ sums) / (weights @ counts)
            means.append(mean)
            ratios.append(mean / ((weights @ total) / (weights @ count))[:, None])
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    m = np.nanpercentile(np.concatenate(means), [lo, hi], axis=0)
    r = np.nanpercentile(np.concatenate(ratios), [lo, hi], axis=0)
    return [
        ((float(m[0, k]), float(m[1, k])), (float(r[0, k]), float(r[1, k])))
        for k in range(len(masks))
    ]
