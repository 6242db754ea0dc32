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
  per-atom force error; each node (leaf, or a node above the leaves) whose mean error is
  ``min_ratio`` x the baseline becomes a rule, a conjunction below the first split
  (``element = Cu and coordination ≤ 9``): decision-tree slice discovery after SliceFinder
  (Chung et al., ICDE 2019). The tree is grown on a random half of the structures
  (:func:`honest_split`) and its rules are scored on the other half only (honest estimation,
  Athey & Imbens, PNAS 113, 7353, 2016): the p-value, the mean error and its CI, the baseline,
  the ratio and its CI, the uncertainty figures and the severity all come from the held-out
  structures, so choosing a node by its error makes none of them optimistic. A conjunction's
  **parent** is the rule of the node one split up: the conjunction before its last split (its
  last condition dropped, or that condition's feature bounded as before the split).
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
  theorem). The q-values are valid only if every candidate generated enters the family, not a
  subset chosen by its own errors, and so it is: slice cuts and environment classes come from
  the features alone and all enter (left out are only rules of fewer than
  ``min_region_atoms`` atoms or of all atoms, and an atom set proposed twice is one
  hypothesis: choices made on the features alone). The one choice by error, the tree's (a
  node's mean error ≥ ``min_ratio`` x the baseline), is made on the growing half, independent
  of the held-out half its p-value comes from. ``min_ratio`` filters the BH rejections after
  the test and does not choose what is tested: under the complete null every rejection is
  false and the filter can only lower the false-discovery rate (in general, a filter of the
  rejections is not covered by the theorem). That the whole finder, tree, clusters and the
  steps below included, reports a region of pure noise no more often than ``alpha`` is checked
  by simulation (``tests/test_region_statistics.py``);
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
- **a conjunction only where it is worse than its parent**: a conjunction that merely splits its
  parent (``coordination ≤ 11 and mean bond stretch > 0.02 Å`` and ``... ≤ 0.02 Å`` beside
  ``coordination ≤ 11``, at its ratio) adds nothing. Each significant conjunction is tested
  against its parent's other atoms: a one-sided Mann-Whitney U test of the per-structure mean
  error of its atoms against the per-structure mean error of the parent's atoms outside it,
  over the structures holding the parent's atoms, on the structures the conjunction is scored
  on (the test the region was found by, with the parent's other atoms in place of all other
  atoms; unlike the within-structure test it has an answer when the last condition selects
  whole structures); those p-values are Benjamini-Hochberg adjusted over the conjunctions
  tested. One with q > ``alpha`` is folded under the significant region whose atoms are its
  parent's (listed there with its own statistics) or, with none, not reported. Its parent
  must be among the hypotheses for the finding to survive, so the tree proposes its inner
  nodes as well as its leaves. A planted effect on the parent gives no conjunction region; an
  effect confined to the conjunction's atoms gives it (``tests/test_region_selection.py``);
- **selection-aware intervals**: the regions reported are those whose errors came out high,
  so their usual 95 % intervals are optimistic (winner's curse). With R of the m hypotheses
  significant (conjunctions folded under their parents counted: they are listed with their
  intervals), every significant region's intervals (``ci``, ``ratio_ci``) are cluster-bootstrap
  percentile intervals at level 1 - R alpha / m (false-coverage-rate adjusted intervals,
  Benjamini & Yekutieli, J. Am. Stat. Assoc. 100, 71, 2005), with enough resamples for that
  level's tails (:func:`~chemgap.agent.diagnostics.stats.cluster_intervals`); ``ci_level``
  records the level. The expected share of reported intervals missing their true ratio is then
  ≤ alpha (a theorem for independent estimates and BH selection, where R is also the number a
  selected region would see selected however its own estimate moved; for the dependent
  statistics, the ratio filter and the conjunction step here a working assumption). The
  severity and the ranking use these intervals. A tree rule is scored honestly on the held-out
  half, but BH chooses it among all m by that half's p-value, so it is adjusted alike. That
  the adjusted interval of a planted region covers its true ratio, conditional on being
  reported, at least 95 % of the time while the unadjusted one does not is checked by
  simulation (``tests/test_region_selection.py``);
- a region is reported when its q-value is ≤ alpha, its error ratio to the baseline is
  ≥ ``min_ratio``, its selection-aware ratio CI excludes 1 (the rank test and the interval give
  one verdict: ``search._require_interval``) and it holds ≥ ``min_region_atoms`` atoms (a
  conjunction: and it is worse than its parent). Findings whose atom sets overlap
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
the finders (:mod:`~chemgap.agent.diagnostics.finders`), scoring, the two-sided folding of
complements, the conjunction test and the intervals (:mod:`~chemgap.agent.diagnostics.scoring`),
folding and ranking of findings (:mod:`~chemgap.agent.diagnostics.folding`) and the search
that runs them all (:mod:`~chemgap.agent.diagnostics.search`). Which atoms a stored region
selects on other structures: :class:`~chemgap.agent.diagnostics.selector.RegionSelector`.
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
