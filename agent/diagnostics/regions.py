"""Failure regions: where in chemical space the errors are high, as rules a chemist can read.

Candidates come from three finders (registry :data:`FINDERS`, names :class:`RegionMethod`),
over every feature column but the sampling provenance (walker, iteration, seed index,
temperature; :data:`~chemgap.agent.diagnostics.features.PROVENANCE_FEATURES`, checked apart by
:mod:`chemgap.agent.diagnostics.provenance`). Every rule is made plain before it is scored
(:mod:`chemgap.agent.diagnostics.rules`: sets for negated categories, conditions that select
no fewer atoms dropped, round thresholds; the atoms never change) and reported in two forms: the
readable ``rule`` (names, units, environment classes by their chemistry) and the
``machine_rule`` that selects atoms and that the region's id hashes.

- ``slice``: one condition per categorical value, flag and threshold of a numeric feature
  (``element = Cu``, ``group = nitrile``, ``coordination ≤ 9``); cut points come from the feature
  values alone (midpoints between distinct values, or deciles), never from the errors.
- ``tree``: a shallow regression tree (depth ``tree_depth``) on the features predicting the
  per-atom force error; each leaf whose mean error is ``min_ratio`` x the baseline becomes a
  conjunction rule (``element = Cu and coordination ≤ 9``): decision-tree slice discovery after
  SliceFinder (Chung et al., ICDE 2019). The tree is grown on a random half of the structures
  (:func:`honest_split`) and its rules are scored on the other half only (honest estimation,
  Athey & Imbens, PNAS 113, 7353, 2016): the p-value, the mean error and its CI, the baseline,
  the ratio and its CI, the uncertainty figures and the severity all come from the held-out
  structures, so choosing a leaf by its error makes none of them optimistic.
- ``cluster``: local-environment classes (KMeans on SOAP, see
  :mod:`chemgap.agent.diagnostics.features`), described by the slice conditions most enriched
  in them.

Statistics (per candidate, then across candidates):

- the error of an atom is the norm of its force error |F_pred - F_ref| (eV/Å;
  :func:`chemgap.common.metrics.force_error_norms`); the baseline is its mean over all atoms
  (``force_error_norm_mean`` of :class:`chemgap.common.metrics.ErrorReport`);
- **atoms of one structure are not independent** (one bad structure makes all its atoms bad),
  so the unit of every test and resampling is the structure: the p-value is a one-sided
  Mann-Whitney U test of the per-structure mean error of the region's atoms against the
  per-structure mean error of the other atoms; confidence intervals are cluster-bootstrap
  percentile intervals (structures resampled with replacement, ``bootstrap`` resamples, seeded;
  Field & Welsh, J. R. Stat. Soc. B 69, 369, 2007). A structure that has atoms on both sides
  contributes to both samples; that positive pairing makes the unpaired test conservative;
- **both sides of one cut are one hypothesis**: ``x ≤ c`` and ``x > c``, ``element = Cu`` and
  ``element = Au`` of a two-valued column, the two classes of a two-class clustering select
  complementary atom sets, and their one-sided tests are mirror images (U of one side is
  n_in n_out minus U of the other), so their p-values are negatively dependent, which the
  Benjamini-Hochberg guarantee does not cover. Among the candidates scored on the same
  structures, every pair whose atom sets (in that scope) are exact complements is therefore
  tested once, two-sided: the side with the smaller one-sided p is kept with
  p = min(1, 2 min(p_a, p_b)) (the two-sided Mann-Whitney p-value) and the other side is dropped
  (it is not a failure region: its errors are the lower ones). Complements are found from the
  atom masks alone (:func:`fold_complements`), so numeric cuts, two-valued categoricals and
  two-class clusterings are all covered, and a cut of a column with NaN (NaN satisfies neither
  side) is not folded;
- p-values of all remaining candidates are adjusted together for the number tried with the
  Benjamini-Hochberg step-up procedure (Benjamini & Hochberg, J. R. Stat. Soc. B 57, 289, 1995)
  at false-discovery rate ``alpha``. What remains are, per feature, nested or overlapping atom
  sets (``x ≤ 3`` inside ``x ≤ 5``) whose statistics move together: positive dependence, under
  which the procedure keeps its guarantee (Benjamini & Yekutieli, Ann. Stat. 29, 1165, 2001;
  for the two-sided p-values and the rank tests here that is the working assumption, not a
  theorem). That the whole finder, tree and clusters included, reports a region of pure noise
  no more often than ``alpha`` is checked by simulation (``tests/test_region_statistics.py``);
- **each finding at its level**: the structure-level test asks whether the structures holding
  a rule's atoms are worse, and whenever one kind of cell is worse as a whole (every atom of
  the vacancy cells) any atom rule only those cells satisfy passes it. Each significant rule
  that leaves some structures with atoms on both sides is therefore also tested *within*
  structures (:func:`~chemgap.agent.diagnostics.stats.within_structure_p`: a one-sided Wilcoxon
  signed-rank test of the per-structure differences, mean error inside minus outside, over the
  structures holding both), those p-values Benjamini-Hochberg adjusted together. A rule passing
  both is an ``atom``-level region (these atoms are worse than their neighbours); one passing
  only the first is a ``structure``-level region, shown as ``structures with: <rule>`` (the
  structures holding its atoms are worse; the atoms are not shown to be worse than their
  neighbours: a whole-cell effect, or too few structures holding both for the within test, whose
  exact p cannot go below 2^-n over n structures), like every rule over whole structures
  (composition, cell kind). ``chemgap inspect RUN --region ID`` says which tests a region
  passed. A planted whole-cell effect gives no atom-level region and a planted effect on some
  atoms of a cell gives it (``tests/test_region_levels.py``);
- a region is reported when its q-value is ≤ alpha, its error ratio to the baseline is
  ≥ ``min_ratio`` and it holds ≥ ``min_region_atoms`` atoms. Findings whose atom sets overlap
  strongly (Jaccard index ≥ :data:`MERGE_JACCARD`) are folded under the most readable one
  (:func:`fold_overlapping`; its statistics stay its own, the others are listed with theirs),
  and the ranking prefers the readable region when severities are within their CIs
  (:func:`rank_regions`);
- what the search could have found is summarised with the result (:class:`RegionSearch`
  ``summary``, see :func:`search_summary`), so an empty result can say why it is empty.

A region is **silent** when the ensemble's calibrated uncertainty does not follow the error into
it: (mean error / mean calibrated force std) inside is ≥ ``silent_factor`` x the same ratio over
all atoms, *and* its mean force error exceeds its own mean calibrated force std (a calibrated
std is the RMS error it predicts, :mod:`chemgap.models.calibration`; a region whose uncertainty
exceeds its error is never silent). Uncertainty-driven active learning will not sample a silent
region by itself.

The code lives in modules of its own, and this module gathers their public names: the
:class:`Region` type and its ``regions.json`` form (:mod:`~chemgap.agent.diagnostics.region`),
the finders (:mod:`~chemgap.agent.diagnostics.finders`), scoring and the two-sided folding of
complements (:mod:`~chemgap.agent.diagnostics.scoring`), folding and ranking of findings
(:mod:`~chemgap.agent.diagnostics.folding`) and the search that runs them all
(:mod:`~chemgap.agent.diagnostics.search`). Which atoms a stored region selects on other
structures: :class:`~chemgap.agent.diagnostics.selector.RegionSelector`.
"""

from __future__ import annotations

from chemgap.agent.diagnostics.finders import (
    FINDERS,
    Candidate,
    Finder,
    RegionInputs,
    RegionMethod,
    find_clusters,
    find_slices,
    find_tree_rules,
    honest_split,
    numeric_cuts,
    slice_conditions,
)
from chemgap.agent.diagnostics.folding import MERGE_JACCARD, fold_overlapping, rank_regions
from chemgap.agent.diagnostics.region import Region, as_region, region_masks
from chemgap.agent.diagnostics.rules import (
    Condition,
    UnknownFeature,
    region_id,
    rule_mask,
    rule_text,
)
from chemgap.agent.diagnostics.scoring import Scope, Scorer, fold_complements
from chemgap.agent.diagnostics.search import (
    RegionSearch,
    find_regions,
    search_regions,
    search_summary,
)

__all__ = [
    "FINDERS",
    "MERGE_JACCARD",
    "Candidate",
    "Condition",
    "Finder",
    "Region",
    "RegionInputs",
    "RegionMethod",
    "RegionSearch",
    "Scope",
    "Scorer",
    "UnknownFeature",
    "as_region",
    "find_clusters",
    "find_regions",
    "find_slices",
    "find_tree_rules",
    "fold_complements",
    "fold_overlapping",
    "honest_split",
    "numeric_cuts",
    "rank_regions",
    "region_id",
    "region_masks",
    "rule_mask",
    "rule_text",
    "search_regions",
    "search_summary",
    "slice_conditions",
]
