"""Scoring candidate rules: the statistics of a region, and both sides of a cut as one test.

The error of an atom is its force-error norm (eV/Å), the unit of every test and resampling is the
structure (a one-sided Mann-Whitney U test of per-structure mean errors, cluster-bootstrap CIs);
the reasoning and references are in :mod:`chemgap.agent.diagnostics.regions`. :class:`Scorer`
turns a :class:`~chemgap.agent.diagnostics.finders.Candidate` into a
:class:`~chemgap.agent.diagnostics.region.Region` (before the Benjamini-Hochberg correction),
scored on all structures or, for a tree rule, on the half it was not grown on (a
:class:`Scope`); :func:`fold_complements` tests complementary rules once, two-sided. The
conjunction-against-parent test (:meth:`Scorer.parent_p`) and the selection-aware intervals of
the significant regions (:meth:`Scorer.intervals`) are scored here too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.finders import Candidate, RegionInputs
from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.rules import readable_rule, region_id, rule_text
from chemgap.agent.diagnostics.stats import (
    ClusterBootstrap,
    cluster_intervals,
    slice_p_value,
    within_structure_p,
)

log = logging.getLogger(__name__)


def _nanmean_or_nan(values: np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN when none is finite."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclass(kw_only=True)
class Scope:
    """The structures a candidate is scored on (all, or a tree's held-out half) and their figures.

    Attributes:
        rows: (n_atoms,) bool, the atoms in scope; None: all atoms.
        errors / uncertainty: the in-scope atoms' values, eV/Å.
        system_idx: the in-scope atoms' structures, renumbered 0..n_struct-1.
        boot: the cluster bootstrap of the in-scope structures.
        baseline: mean error over the in-scope atoms, eV/Å.
        unc_all: mean calibrated uncertainty over them, eV/Å (NaN if unknown).
        e2u_all: baseline / unc_all (NaN if unknown).
    """

    rows: np.ndarray | None
    errors: np.ndarray
    uncertainty: np.ndarray
    system_idx: np.ndarray
    n_struct: int
    boot: ClusterBootstrap
    baseline: float
    unc_all: float
    e2u_all: float

    @classmethod
    def of(
        cls, inp: RegionInputs, rows: np.ndarray | None, n_boot: int, rng: np.random.Generator
    ) -> Scope:
        """The scope of the atoms ``rows`` (None: all), with its bootstrap drawn from ``rng``."""
        errors, unc, sidx = inp.errors, inp.uncertainty, inp.features.system_idx
        if rows is not None:
            errors, unc = errors[rows], unc[rows]
            sidx = np.unique(sidx[rows], return_inverse=True)[1]
        baseline = float(errors.mean())
        unc_all = _nanmean_or_nan(unc)
        e2u_all = baseline / unc_all if unc_all and np.isfinite(unc_all) else float("nan")
        return cls(
            rows=rows,
            errors=errors,
            uncertainty=unc,
            system_idx=sidx,
            n_struct=int(sidx.max()) + 1,
            boot=ClusterBootstrap.draw(errors, sidx, n_boot, rng),
            baseline=baseline,
            unc_all=unc_all,
            e2u_all=e2u_all,
        )

    def stats(self, mask: np.ndarray) -> dict[str, Any]:
        """The statistics of the (whole-set) ``mask`` on this scope's atoms, as Region fields."""
        m = mask if self.rows is None else mask[self.rows]
        sidx = self.system_idx
        n_in = len(np.unique(sidx[m]))
        sizes = (n_in, len(np.unique(sidx[~m])))
        nan2 = (float("nan"), float("nan"))
        if not m.any():
            mean, ci, ratio_ci, unc = float("nan"), nan2, nan2, float("nan")
        else:
            mean = float(self.errors[m].mean())
            ci, ratio_ci = self.boot.interval(m)
            unc = _nanmean_or_nan(self.uncertainty[m])
        finite = bool(unc) and np.isfinite(unc) and np.isfinite(self.e2u_all)
        within_p, mixed = within_structure_p(self.errors, sidx, m, self.n_struct)
        return {
            "within_p": within_p,
            "mixed_structures": mixed,
            "mean_error": mean,
            "ci": ci,
            "baseline": self.baseline,
            "ratio": mean / self.baseline if self.baseline > 0 else float("nan"),
            "ratio_ci": ratio_ci,
            "p_value": slice_p_value(self.errors, sidx, m, self.n_struct),
            "held_out": self.rows is not None,
            "scored_structures": self.n_struct,
            "uncertainty_mean": unc,
            "uncertainty_ratio": unc / self.unc_all if self.unc_all else float("nan"),
            "error_to_uncertainty": float((mean / unc) / self.e2u_all) if finite else float("nan"),
            "_sizes": sizes,
        }

    def in_scope(self, mask: np.ndarray) -> np.ndarray:
        """The (whole-set) ``mask`` restricted to this scope's atoms."""
        return mask if self.rows is None else mask[self.rows]

    def parent_p(self, mask: np.ndarray, parent_mask: np.ndarray) -> float:
        """One-sided test that the atoms of ``mask`` err more than the parent's other atoms.

        Mann-Whitney U of the per-structure mean error of the atoms in ``mask`` against the
        per-structure mean error of the atoms in ``parent_mask`` but not in ``mask``, over the
        structures of this scope holding the parent's atoms (:func:`slice_p_value` on the
        parent's atoms). 1.0 when either side is empty.
        """
        parent = self.in_scope(parent_mask)
        inside = self.in_scope(mask) & parent
        return slice_p_value(
            self.errors[parent], self.system_idx[parent], inside[parent], self.n_struct
        )


@dataclass(kw_only=True)
class Scorer:
    """Scores candidates: on all structures, or a tree rule on the half it was not grown on.

    The whole-set scope (and its bootstrap) is drawn first; a held-out scope is drawn when a
    candidate first asks for it, and shared by every candidate with the same held-out half.
    """

    inp: RegionInputs
    n_boot: int
    rng: np.random.Generator
    scopes: dict[bytes, Scope] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scopes[b""] = Scope.of(self.inp, None, self.n_boot, self.rng)

    @staticmethod
    def scope_key(cand: Candidate) -> bytes:
        """The key of the scope a candidate is scored on (``b""``: all structures)."""
        if cand.test_structures is None:
            return b""
        return np.packbits(cand.test_structures).tobytes() + b"held-out"

    def scope(self, cand: Candidate) -> Scope:
        """The scope a candidate is scored on."""
        key = self.scope_key(cand)
        if key not in self.scopes:
            rows = cand.test_structures[self.inp.features.system_idx]
            self.scopes[key] = Scope.of(self.inp, rows, self.n_boot, self.rng)
        return self.scopes[key]

    def sides(self, cand: Candidate) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        """Keys of the candidate's atoms on the structures it is scored on, and of the others.

        Each key is (scope key, packed in-scope mask); two candidates of one scope are exact
        complements when the first key of one is the second key of the other.
        """
        key = self.scope_key(cand)
        rows = self.scope(cand).rows
        m = cand.mask if rows is None else cand.mask[rows]
        return (key, np.packbits(m).tobytes()), (key, np.packbits(~m).tobytes())

    def parent_p(self, cand: Candidate) -> float:
        """A conjunction's test against its parent's other atoms, on the structures it is
        scored on (:meth:`Scope.parent_p`); NaN for a candidate without a parent.
        """
        if cand.parent_mask is None:
            return float("nan")
        return self.scope(cand).parent_p(cand.mask, cand.parent_mask)

    def intervals(
        self, cands: Sequence[Candidate], level: float
    ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """Cluster-bootstrap intervals of the candidates' mean error and ratio at ``level``.

        Each on the structures it is scored on, with a fresh bootstrap of at least ``n_boot``
        resamples per scope, more where the level's tails need them
        (:func:`~chemgap.agent.diagnostics.stats.cluster_intervals`).

        Returns:
            Per candidate ((mean lo, mean hi) eV/Å, (ratio lo, ratio hi)).
        """
        out: list[tuple[tuple[float, float], tuple[float, float]]] = [
            ((np.nan, np.nan), (np.nan, np.nan))
        ] * len(cands)
        groups: dict[bytes, list[int]] = {}
        for i, cand in enumerate(cands):
            groups.setdefault(self.scope_key(cand), []).append(i)
        for idx in groups.values():
            scope = self.scope(cands[idx[0]])
            masks = [scope.in_scope(cands[i].mask) for i in idx]
            found = cluster_intervals(
                scope.errors,
                scope.system_idx,
                masks,
                level,
                self.n_boot,
                self.rng,
                n_struct=scope.n_struct,
            )
            for i, ci in zip(idx, found, strict=True):
                out[i] = ci
        return out

    def region(self, cand: Candidate) -> tuple[Region, tuple[int, int]]:
        """The candidate as a :class:`Region` (before BH correction) and its test's sizes.

        Sizes: (structures with atoms inside, structures with atoms outside) in its scope.
        """
        f, m = self.inp.features, cand.mask
        stats = self.scope(cand).stats(m)
        sizes = stats.pop("_sizes")
        symbols, counts = (
            np.unique(f.atom["element"][m].astype(str), return_counts=True)
            if "element" in f.atom
            else ([], [])
        )
        machine = cand.rule
        region = Region(
            id=region_id(machine),
            rule=readable_rule(cand.conditions, f),
            machine_rule=machine,
            conditions=[c.to_dict() for c in cand.conditions],
            method=str(cand.method),
            methods=[str(cand.method)],
            also=[readable_rule(conds, f) for conds in cand.also],
            also_ids=list(
                dict.fromkeys(
                    region_id(text)
                    for text in [*map(rule_text, cand.also), *cand.earlier]
                    if text != machine
                )
            ),
            n_atoms=int(m.sum()),
            n_structures=len(np.unique(f.system_idx[m])),
            coverage=float(m.mean()),
            elements={str(s): int(c) for s, c in zip(symbols, counts, strict=True)},
            enriched=cand.enriched,
            parent=readable_rule(cand.parent, f) if cand.parent else None,
            parent_id=region_id(rule_text(cand.parent)) if cand.parent else None,
            **stats,
        )
        return region, sizes


def fold_complements(
    regions: list[Region], sides: Sequence[tuple[tuple[bytes, bytes], tuple[bytes, bytes]]]
) -> list[int]:
    """Test both sides of a cut as one two-sided hypothesis; the indices of the rules kept.

    ``x ≤ c`` / ``x > c``, ``element = Cu`` / ``element = Au`` (a two-valued column) and the two
    classes of a two-class clustering select complementary atom sets. Their one-sided
    structure-level Mann-Whitney tests are mirror images (U of one side = n_in n_out - U of
    the other), so the two p-values are negatively dependent: Benjamini-Hochberg's guarantee
    (independent or positively dependent p-values) does not cover the pair. For every pair of
    candidate groups whose in-scope atom sets are exact complements (same scope; detected from
    the packed masks, whatever finder proposed them), the side with the smaller one-sided p is
    kept with the two-sided p = min(1, 2 min(p_a, p_b)) and ``complement`` set to the other
    side's rule; the other side is dropped (its errors are the lower ones: not a failure
    region). Ties keep the side proposed first. The hypotheses left (one per cut, nested
    across cuts of one feature) are positively dependent, so BH then applies
    (:func:`~chemgap.agent.diagnostics.search.search_regions`).

    Args:
        regions: the scored candidates (one-sided ``p_value``); changed in place.
        sides: per candidate, :meth:`Scorer.sides` (its key, its complement's key).

    Returns:
        Indices into ``regions`` of the hypotheses to test, in their original order.
    """
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    for i, (key, _) in enumerate(sides):
        groups.setdefault(key, []).append(i)
    done: set[tuple[bytes, bytes]] = set()
    dropped: set[int] = set()
    for key, other in sides:
        if key in done or other not in groups:
            continue
        done.update((key, other))
        a, b = groups[key], groups[other]
        p_a = min(regions[i].p_value for i in a)
        p_b = min(regions[i].p_value for i in b)
        keep, drop = (a, b) if p_a <= p_b else (b, a)
        for i in keep:
            regions[i].p_value = min(1.0, 2.0 * min(p_a, p_b))
            regions[i].complement = regions[drop[0]].rule
        dropped.update(drop)
    if dropped:
        log.info("%d rules were the other side of a tested cut (tested two-sided)", len(dropped))
    return [i for i in range(len(regions)) if i not in dropped]
