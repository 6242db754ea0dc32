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
all atoms. Uncertainty-driven active learning will not sample a silent region by itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.features import FeatureKind, Features
from chemgap.agent.diagnostics.rules import Condition as Condition
from chemgap.agent.diagnostics.rules import UnknownFeature as UnknownFeature
from chemgap.agent.diagnostics.rules import (
    as_condition,
    cut_between,
    feature_resolution,
    readability,
    readable_rule,
    region_id,
    rule_mask,
    rule_text,
    simplify_conditions,
)
from chemgap.agent.diagnostics.stats import (
    ClusterBootstrap,
    benjamini_hochberg,
    min_p_value,
    slice_p_value,
    structures_needed,
)
from chemgap.campaigns.spec import DiagnosticsConfig

log = logging.getLogger(__name__)

MERGE_JACCARD = 0.8  # regions whose atom sets overlap at least this much are folded together
_NUMERIC_MAX_DISTINCT = 12


class RegionMethod(StrEnum):
    """The finders that propose candidate rules (keys of :data:`FINDERS`)."""

    SLICE = "slice"
    TREE = "tree"
    CLUSTER = "cluster"


# --------------------------------------------------------------------------- regions
@dataclass(kw_only=True)
class Region:
    """A failure region: a rule over the features, and how the model does inside it.

    Errors are per-atom force-error norms, eV/Å; uncertainties per-atom calibrated force std
    magnitudes, eV/Å.

    Attributes:
        id: ``R`` + hash of ``machine_rule`` (stable across iterations and runs, and across
            changes of the readable form).
        rule: the rule as a chemist reads it, with names and units
            (:func:`~chemgap.agent.diagnostics.rules.readable_rule`): ``element = Au and
            first-shell Au fraction > 50 %``; environment classes by their chemistry.
        machine_rule: the rule's machine form, the one that selects atoms and that ``id``
            hashes (:func:`~chemgap.agent.diagnostics.rules.rule_text`): ``element = Au and
            shell_frac:Au > 0.5`` (files written before it existed: ``rule``).
        conditions: the machine rule as ``{"feature", "op", "value"}`` dicts.
        method: the finder of the kept rule; ``methods``: every finder that found it;
        also: readable rules of the other findings under this one: rules selecting exactly the
            same atoms, and the folded regions (``folded``); shown as "same atoms as".
        also_ids: the ids of those rules, and of earlier machine forms of this rule (before it
            was made plain); a region continues an earlier one with any of them.
        folded: the regions folded under this one (atom sets overlapping with a Jaccard index
            ≥ :data:`MERGE_JACCARD`): per region ``{"id", "rule", "machine_rule", "method",
            "n_atoms", "jaccard", "ratio", "ratio_ci", "q_value", "severity"}``, their own
            statistics; this region's statistics are its own, unchanged by folding.
        n_atoms / n_structures: atoms and structures covered; coverage: n_atoms / all atoms.
        mean_error, ci: mean error inside and its 95% cluster-bootstrap CI, eV/Å.
        baseline: mean error over all atoms, eV/Å; ratio, ratio_ci: mean_error / baseline.
        held_out: the statistics (mean error, CIs, baseline, ratio, p, uncertainty, severity)
            come from the structures the rule was not found on (tree rules); n_atoms,
            n_structures, coverage and elements always describe the whole set.
        scored_structures: structures the statistics come from.
        p_value / q_value: structure-level test, and BH-adjusted; significant: q ≤ alpha.
        complement: the rule of the other side of the same cut (the candidate whose atoms, on
            the structures scored, were exactly the others), when one was proposed; p_value is
            then the two-sided p = min(1, 2 min(p_this, p_other)) and the other side was not
            tested on its own (:func:`fold_complements`). None: p_value is one-sided.
        uncertainty_mean: mean calibrated force std inside, eV/Å; uncertainty_ratio: / overall.
        error_to_uncertainty: (mean error / mean uncertainty) inside over the same outside-agnostic
            ratio for all atoms; silent: error_to_uncertainty ≥ silent_factor.
        severity: (lower CI of ratio - 1), doubled when silent; the ranking key.
        elements: symbol -> atoms of that element inside.
        enriched: for cluster regions, the slice rules most over-represented inside.
        exemplars: the structures with the highest error inside (index, db_id, formula, n_atoms,
            atoms_in_region, mean_error, file).
        first_seen / last_seen: iterations in which the region was found (None outside a run).
        history: one ``{"iteration", "ratio", "ratio_ci", "q_value"}`` per diagnosis that found
            it, oldest first (carried over from the previous diagnosis; empty outside a run).
    """

    id: str
    rule: str
    conditions: list[dict[str, Any]]
    method: str
    machine_rule: str = ""
    methods: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)
    also_ids: list[str] = field(default_factory=list)
    folded: list[dict[str, Any]] = field(default_factory=list)
    n_atoms: int
    n_structures: int
    coverage: float
    mean_error: float
    ci: tuple[float, float]
    baseline: float
    ratio: float
    ratio_ci: tuple[float, float]
    p_value: float
    complement: str | None = None
    held_out: bool = False
    scored_structures: int = 0
    q_value: float = 1.0
    significant: bool = False
    uncertainty_mean: float = float("nan")
    uncertainty_ratio: float = float("nan")
    error_to_uncertainty: float = float("nan")
    silent: bool = False
    severity: float = 0.0
    elements: dict[str, int] = field(default_factory=dict)
    enriched: list[str] = field(default_factory=list)
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    first_seen: int | None = None
    last_seen: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.machine_rule:
            self.machine_rule = self.rule

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the CIs as lists)."""
        d = asdict(self)
        d["ci"], d["ratio_ci"] = list(self.ci), list(self.ratio_ci)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        """The region :meth:`to_dict` wrote; unknown keys are ignored.

        Files written before the readable form existed hold the machine form in ``rule`` and
        machine rules in ``also``: ``machine_rule`` is then ``rule``, ``also_ids`` the ids of
        ``also``, and ``folded`` empty.
        """
        d = dict(d)
        d["ci"], d["ratio_ci"] = tuple(d["ci"]), tuple(d["ratio_ci"])
        if "also_ids" not in d:
            d["also_ids"] = [region_id(rule) for rule in d.get("also") or []]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(kw_only=True)
class Candidate:
    """A rule proposed by a finder, before statistics: its atoms and where to test it.

    Attributes:
        conditions: the rule.
        method: the finder.
        mask: (n_atoms,) bool, its atoms.
        test_structures: (n_struct,) bool, the structures it is scored on; None: all.
        enriched: cluster candidates: readable rules over-represented in the class.
        also: other rules selecting exactly the same atoms (not tested apart).
        earlier: machine forms this rule had before :func:`simplify_conditions` made it plain.
    """

    conditions: list[Condition]
    method: str
    mask: np.ndarray
    test_structures: np.ndarray | None = None
    enriched: list[str] = field(default_factory=list)
    also: list[list[Condition]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        """The candidate's machine rule (:func:`~chemgap.agent.diagnostics.rules.rule_text`)."""
        return rule_text(self.conditions)


@dataclass(kw_only=True)
class RegionInputs:
    """Everything a finder needs.

    Attributes:
        features: the feature table (n_atoms rows).
        errors: (n_atoms,) force-error norm per atom, eV/Å.
        uncertainty: (n_atoms,) calibrated force std per atom, eV/Å (NaN if unknown).
        min_atoms / min_ratio / tree_depth: the thresholds of :class:`DiagnosticsConfig`.
        rng: the seeded generator (tree's honest split).
    """

    features: Features
    errors: np.ndarray
    uncertainty: np.ndarray
    min_atoms: int
    min_ratio: float
    tree_depth: int
    rng: np.random.Generator


# ---- finder (a): slices
def slice_conditions(features: Features, min_atoms: int) -> list[list[Condition]]:
    """One-condition rules for every categorical value, flag and numeric threshold.

    Over :meth:`~chemgap.agent.diagnostics.features.Features.region_columns`: the sampling
    provenance is never a rule; the environment classes belong to the cluster finder.
    """
    out: list[list[Condition]] = []
    for name, col, kind in features.region_columns():
        if name == "environment":
            continue  # the cluster finder owns it
        if kind == FeatureKind.CATEGORICAL:
            values, counts = np.unique(col.astype(str), return_counts=True)
            for v, c in zip(values, counts, strict=True):
                if v and c >= min_atoms:
                    out.append([Condition(feature=name, op="=", value=str(v))])
        elif kind == FeatureKind.FLAG:
            if col.astype(bool).sum() >= min_atoms:
                out.append([Condition(feature=name, op="=", value=True)])
        else:
            out.extend([c] for c in numeric_cuts(name, col.astype(float)))
    return out


def numeric_cuts(name: str, x: np.ndarray) -> list[Condition]:
    """Threshold conditions of a numeric column: both sides of every cut point.

    Cut points lie between distinct values when there are at most 12, else at the deciles;
    each is the roundest number between the two data values it separates, so ``≤ 1.4`` rather
    than ``≤ 1.3917`` (same atoms), written no finer than the feature's resolution (0.01 Å,
    one percentage point; :func:`~chemgap.agent.diagnostics.rules.cut_between`). Integer
    columns read ``x ≤ 9`` / ``x ≥ 10``.
    """
    x = x[~np.isnan(x)]
    u = np.unique(x)
    if len(u) < 2:
        return []
    integer = bool(np.all(np.equal(np.mod(u, 1), 0)))
    if len(u) <= _NUMERIC_MAX_DISTINCT:
        pairs = list(itertools.pairwise(u))
    else:
        pairs = _decile_pairs(u, np.quantile(x, np.linspace(0.1, 0.9, 9)))
    if integer:
        return [
            c
            for lo, hi in pairs
            for c in (
                Condition(feature=name, op="≤", value=float(lo)),
                Condition(feature=name, op="≥", value=float(hi)),
            )
        ]
    cuts = []
    for lo, hi in pairs:
        cut = cut_between(u, (lo + hi) / 2, feature_resolution(name))
        if cut is not None and u[0] <= cut < u[-1] and cut not in cuts:
            cuts.append(cut)
    return [
        c
        for cut in cuts
        for c in (
            Condition(feature=name, op="≤", value=cut),
            Condition(feature=name, op=">", value=cut),
        )
    ]


def _decile_pairs(u: np.ndarray, qs: np.ndarray) -> list[tuple[float, float]]:
    """The adjacent distinct values (lo, hi) around each quantile in ``qs``, once each."""
    pairs = []
    for k in np.searchsorted(u, qs, side="right") - 1:
        if 0 <= k < len(u) - 1 and (u[k], u[k + 1]) not in pairs:
            pairs.append((float(u[k]), float(u[k + 1])))
    return pairs


def find_slices(inp: RegionInputs) -> list[Candidate]:
    """Every one-condition rule of :func:`slice_conditions` as a candidate."""
    out = []
    for conds in slice_conditions(inp.features, inp.min_atoms):
        mask = rule_mask(conds, inp.features)
        out.append(Candidate(conditions=conds, method=RegionMethod.SLICE, mask=mask))
    return out


# ---- finder (b): decision tree
def _design_matrix(features: Features, min_atoms: int) -> tuple[np.ndarray, list[Condition]]:
    """Tree inputs: numeric columns without NaN as they are, flags 0/1, categorical one-hot.

    Over :meth:`~chemgap.agent.diagnostics.features.Features.region_columns` (no provenance).

    Returns X (n_atoms, p) and, per column, the condition its "> threshold" side means (for
    one-hot and flags ``feature = value``; for numeric a template with the feature name).
    """
    cols, meaning = [], []
    for name, col, kind in features.region_columns():
        if kind == FeatureKind.CATEGORICAL:
            values, counts = np.unique(col.astype(str), return_counts=True)
            for v in values[np.argsort(-counts)][:30]:
                if v and (col == v).sum() >= min_atoms:
                    cols.append((col == v).astype(float))
                    meaning.append(Condition(feature=name, op="=", value=str(v)))
        elif kind == FeatureKind.FLAG:
            cols.append(col.astype(float))
            meaning.append(Condition(feature=name, op="=", value=True))
        else:
            x = col.astype(float)
            if not np.isnan(x).any() and len(np.unique(x)) > 1:
                cols.append(x)
                meaning.append(Condition(feature=name, op=">", value=np.nan))
    if not cols:
        return np.zeros((features.n_atoms, 0)), []
    return np.stack(cols, axis=1), meaning


def _leaf_rules(tree, meaning: list[Condition], features: Features) -> dict[int, list[Condition]]:
    """Conditions on the path to every leaf of a fitted sklearn tree, simplified per feature."""
    t = tree.tree_
    rules: dict[int, list[Condition]] = {}

    def walk(node: int, path: list[tuple[int, bool, float]]) -> None:
        if t.children_left[node] == -1:
            rules[node] = _simplify(path, meaning, features)
            return
        f, thr = int(t.feature[node]), float(t.threshold[node])
        walk(int(t.children_left[node]), [*path, (f, False, thr)])
        walk(int(t.children_right[node]), [*path, (f, True, thr)])

    walk(0, [])
    return rules


@dataclass
class _PathBounds:
    """What the splits on one root-to-leaf path say, per feature, in the order first met.

    ``eq``: the one-hot/flag value the path requires; ``neq``: values it excludes; ``lower`` /
    ``upper``: the tightest numeric thresholds (``x > lower``, ``x ≤ upper``).
    """

    order: list[str] = field(default_factory=list)
    eq: dict[str, Condition] = field(default_factory=dict)
    neq: dict[tuple[str, Any], Condition] = field(default_factory=dict)
    lower: dict[str, float] = field(default_factory=dict)
    upper: dict[str, float] = field(default_factory=dict)

    def add(self, meaning: Condition, right: bool, threshold: float) -> None:
        """Record one split: ``right`` is the "> threshold" branch (``= value`` for one-hot)."""
        name = meaning.feature
        if name not in self.order:
            self.order.append(name)
        if meaning.op == "=":
            if right:
                self.eq[name] = meaning
            else:
                self.neq[(name, meaning.value)] = Condition(
                    feature=name, op="≠", value=meaning.value
                )
        elif right:
            self.lower[name] = max(self.lower.get(name, -np.inf), threshold)
        else:
            self.upper[name] = min(self.upper.get(name, np.inf), threshold)


def _integer_column(features: Features, name: str) -> bool:
    """True for a numeric column whose values are all whole numbers."""
    col = features.atom.get(name)
    if col is None or features.kinds.get(name) != FeatureKind.NUMERIC:
        return False
    return bool(np.all(np.mod(col.astype(float), 1) == 0))


def _threshold(features: Features, name: str, t: float) -> float:
    """The roundest cut splitting column ``name``'s values as ``t`` does, at the feature's
    resolution (:func:`~chemgap.agent.diagnostics.rules.cut_between`; 3 digits if none).
    """
    col = features.atom[name].astype(float)
    cut = cut_between(np.unique(col[~np.isnan(col)]), t, feature_resolution(name))
    return float(f"{t:.3g}") if cut is None else cut


def _threshold_conditions(
    name: str, lower: float | None, upper: float | None, features: Features
) -> list[Condition]:
    """``name > lower`` / ``name ≤ upper`` as text reads them (``≥ 10`` / ``≤ 9`` for integers).

    Non-integer thresholds are the roundest numbers that select the same atoms
    (:func:`~chemgap.agent.diagnostics.rules.cut_between`).
    """
    integer = _integer_column(features, name)
    out: list[Condition] = []
    if lower is not None:
        out.append(
            Condition(feature=name, op="≥", value=float(np.floor(lower) + 1))
            if integer
            else Condition(feature=name, op=">", value=_threshold(features, name, lower))
        )
    if upper is not None:
        out.append(
            Condition(feature=name, op="≤", value=float(np.floor(upper)))
            if integer
            else Condition(feature=name, op="≤", value=_threshold(features, name, upper))
        )
    return out


def _simplify(
    path: list[tuple[int, bool, float]], meaning: list[Condition], features: Features
) -> list[Condition]:
    """The conditions of one tree path, one or two per feature (the tightest bounds)."""
    bounds = _PathBounds()
    for f, right, thr in path:
        bounds.add(meaning[f], right, thr)
    out: list[Condition] = []
    for name in bounds.order:
        if name in bounds.eq:
            out.append(bounds.eq[name])
            continue
        out += [c for (n, _), c in bounds.neq.items() if n == name]
        out += _threshold_conditions(name, bounds.lower.get(name), bounds.upper.get(name), features)
    return out


def honest_split(n_struct: int, rng: np.random.Generator) -> np.ndarray:
    """(n_struct,) bool: a random half of the structures to grow a tree on (the rest score it)."""
    grow = np.zeros(n_struct, dtype=bool)
    grow[rng.permutation(n_struct)[: n_struct // 2]] = True
    return grow


def find_tree_rules(inp: RegionInputs) -> list[Candidate]:
    """High-error leaves of a regression tree grown on half the structures (see module doc)."""
    from sklearn.tree import DecisionTreeRegressor

    f = inp.features
    x, meaning = _design_matrix(f, inp.min_atoms)
    n_struct = f.n_struct
    if x.shape[1] == 0 or n_struct < 4:
        return []
    grow = honest_split(n_struct, inp.rng)
    rows = grow[f.system_idx]
    tree = DecisionTreeRegressor(
        max_depth=inp.tree_depth,
        min_samples_leaf=max(inp.min_atoms, int(0.01 * rows.sum())),
        random_state=int(inp.rng.integers(2**31 - 1)),
    ).fit(x[rows], inp.errors[rows])
    base = float(inp.errors[rows].mean())
    leaves = tree.apply(x[rows])
    out = []
    for leaf, conds in _leaf_rules(tree, meaning, f).items():
        in_leaf = leaves == leaf
        if not conds or not in_leaf.any():
            continue
        if inp.errors[rows][in_leaf].mean() < inp.min_ratio * base:
            continue
        mask = rule_mask(conds, f)
        out.append(
            Candidate(conditions=conds, method=RegionMethod.TREE, mask=mask, test_structures=~grow)
        )
    return out


# ---- finder (c): high-error environment clusters
def find_clusters(inp: RegionInputs) -> list[Candidate]:
    """Every environment class as a candidate, with the slices most enriched in it (readable).

    The class itself reads as its chemistry (``environment = Cu, 12-fold, ... (env4)``).
    """
    f = inp.features
    if "environment" not in f.atom:
        return []
    env = f.atom["environment"].astype(str)
    slices = [(c, rule_mask(c, f)) for c in slice_conditions(f, inp.min_atoms)]
    out = []
    for value in np.unique(env):
        mask = env == value
        if mask.sum() < inp.min_atoms:
            continue
        enriched = []
        for conds, smask in slices:
            inside, overall = smask[mask].mean(), smask.mean()
            if inside >= 0.5 and overall < 0.999:
                ratio = inside / max(overall, 1e-12)
                enriched.append((ratio, inside, overall, readable_rule(conds, f)))
        enriched.sort(key=lambda t: -t[0])
        text = [f"{r} ({100 * i:.0f}% vs {100 * o:.0f}%)" for _, i, o, r in enriched[:3]]
        out.append(
            Candidate(
                conditions=[Condition(feature="environment", op="=", value=str(value))],
                method=RegionMethod.CLUSTER,
                mask=mask,
                enriched=text,
            )
        )
    return out


Finder = Callable[[RegionInputs], list[Candidate]]

FINDERS: dict[RegionMethod, Finder] = {
    RegionMethod.SLICE: find_slices,
    RegionMethod.TREE: find_tree_rules,
    RegionMethod.CLUSTER: find_clusters,
}


# --------------------------------------------------------------------------- the whole search
@dataclass(kw_only=True)
class RegionSearch:
    """What :func:`search_regions` found, and what it could have found.

    Attributes:
        regions: the significant regions, merged, most severe first (at most ``max_regions``).
        n_tested: hypotheses tested (the Benjamini-Hochberg family size; both sides of a cut
            count once, :func:`fold_complements`).
        summary: :func:`search_summary` of every tested rule (why a result is empty).
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
    if candidates:
        scorer = _Scorer(inp=inp, n_boot=cfg.bootstrap, rng=rng)
        scored = [scorer.region(cand) for cand in candidates]
        tested = fold_complements([r for r, _ in scored], [scorer.sides(c) for c in candidates])
        candidates = [candidates[i] for i in tested]
        regions = [scored[i][0] for i in tested]
        sizes = [scored[i][1] for i in tested]
        _judge(regions, cfg)
    summary = search_summary(
        regions,
        sizes,
        n_structures=features.n_struct,
        n_atoms=n_atoms,
        cfg=cfg,
        two_sided=[r.complement is not None for r in regions],
    )
    keep = [i for i, r in enumerate(regions) if r.significant]
    log.info(
        "%d hypotheses tested (%d of them two-sided, both sides of a cut), %d significant "
        "before merging",
        len(regions),
        sum(r.complement is not None for r in regions),
        len(keep),
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

    The reasoning, so that the sentence built on it (``explain_empty`` in
    :mod:`chemgap.agent.diagnostics.diagnose`) is true:

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
    """Replace a rule of several conditions by its plainest form (same atoms), in place."""
    if len(cand.conditions) < 2:
        return
    plain = simplify_conditions(cand.conditions, features, cand.mask)
    if rule_text(plain) != cand.rule:
        cand.earlier.append(cand.rule)
        cand.conditions = plain


def _nanmean_or_nan(values: np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN when none is finite."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclass(kw_only=True)
class _Scope:
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
    ) -> _Scope:
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
        return {
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


@dataclass(kw_only=True)
class _Scorer:
    """Scores candidates: on all structures, or a tree rule on the half it was not grown on.

    The whole-set scope (and its bootstrap) is drawn first; a held-out scope is drawn when a
    candidate first asks for it, and shared by every candidate with the same held-out half.
    """

    inp: RegionInputs
    n_boot: int
    rng: np.random.Generator
    scopes: dict[bytes, _Scope] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scopes[b""] = _Scope.of(self.inp, None, self.n_boot, self.rng)

    @staticmethod
    def scope_key(cand: Candidate) -> bytes:
        """The key of the scope a candidate is scored on (``b""``: all structures)."""
        if cand.test_structures is None:
            return b""
        return np.packbits(cand.test_structures).tobytes() + b"held-out"

    def scope(self, cand: Candidate) -> _Scope:
        """The scope a candidate is scored on."""
        key = self.scope_key(cand)
        if key not in self.scopes:
            rows = cand.test_structures[self.inp.features.system_idx]
            self.scopes[key] = _Scope.of(self.inp, rows, self.n_boot, self.rng)
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
    across cuts of one feature) are positively dependent, so BH then applies (:func:`_judge`).

    Args:
        regions: the scored candidates (one-sided ``p_value``); changed in place.
        sides: per candidate, :meth:`_Scorer.sides` (its key, its complement's key).

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


def _judge(regions: list[Region], cfg: DiagnosticsConfig) -> None:
    """BH-adjust the p-values of all hypotheses together; set significant, silent, severity.

    ``regions`` are the hypotheses left by :func:`fold_complements`: one-sided structure-level
    Mann-Whitney p-values, and two-sided ones (p = min(1, 2 min(p_a, p_b))) where both sides of
    a cut were proposed. The Benjamini-Hochberg step-up procedure over all of them controls
    the false-discovery rate at ``alpha`` for positively dependent tests, which the nested
    rules across cut points are once the negatively dependent complementary pairs are folded.
    """
    q = benjamini_hochberg(np.array([r.p_value for r in regions]))
    for r, qv in zip(regions, q, strict=True):
        r.q_value = float(qv)
        r.significant = bool(qv <= cfg.alpha and r.ratio >= cfg.min_ratio)
        r.silent = bool(r.significant and np.isfinite(r.error_to_uncertainty))
        r.silent = r.silent and r.error_to_uncertainty >= cfg.silent_factor
        r.severity = float((r.ratio_ci[0] - 1.0) * (2.0 if r.silent else 1.0))


def _preference(r: Region) -> tuple[Any, ...]:
    """Which of two regions represents them: the more readable, then the one scored on every
    structure (a tree rule's held-out half is the weaker evidence), then the more severe.
    """
    return (readability(r.conditions), r.held_out, -r.severity)


def fold_overlapping(regions: list[Region], masks: list[np.ndarray]) -> list[Region]:
    """Group findings whose atom sets overlap strongly under their most readable member.

    Regions are visited in the order of :func:`_preference` (most readable first:
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
    order = sorted(range(len(regions)), key=lambda i: _preference(regions[i]))
    kept: list[tuple[Region, np.ndarray]] = []
    for i in order:
        r, m = regions[i], masks[i]
        for k, km in kept:
            union = np.logical_or(m, km).sum()
            jaccard = float(np.logical_and(m, km).sum() / union) if union else 0.0
            if jaccard >= MERGE_JACCARD:
                _fold_into(k, r, jaccard)
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
        _fold_into(regions[head], regions[i], float(both / union) if union else 0.0)
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


def _fold_into(k: Region, r: Region, jaccard: float) -> None:
    """Record region ``r`` under its representative ``k`` (``k``'s statistics unchanged)."""
    if r.method not in k.methods:
        k.methods.append(r.method)
    k.also.extend(rule for rule in [r.rule, *r.also] if rule not in k.also and rule != k.rule)
    k.also_ids.extend(i for i in [r.id, *r.also_ids] if i not in k.also_ids and i != k.id)
    if r.id == k.id:  # the same rule from another finder (a tree leaf that is a slice)
        return
    k.folded.append(
        {
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
    )
    if r.enriched and not k.enriched:
        k.enriched = r.enriched


def _indistinguishable(a: Region, b: Region) -> bool:
    """Whether the 95% CIs of two regions' error ratios overlap (finite CIs only)."""
    lo_a, hi_a = a.ratio_ci
    lo_b, hi_b = b.ratio_ci
    if not all(np.isfinite([lo_a, hi_a, lo_b, hi_b])):
        return False
    return bool(lo_a <= hi_b and lo_b <= hi_a)


def rank_regions(regions: list[Region]) -> list[Region]:
    """Most severe first, but the more readable of regions whose severities are within CIs.

    Repeatedly: the most severe region left (severity, :func:`_judge`) and every region left
    whose ratio CI overlaps its CI (and that is silent if it is) are candidates for the next
    place, which goes to the first of them by :func:`_preference` (the most readable). A
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
        pick = min(tied, key=_preference)
        out.append(pick)
        left.remove(pick)
    return out


def region_masks(regions: list[Region], features: Features) -> dict[str, np.ndarray]:
    """(n_atoms,) bool mask of every region's rule on ``features``.

    Raises:
        UnknownFeature: a rule names a column ``features`` lacks (a rule is never silently an
            empty region; :func:`chemgap.agent.diagnostics.diagnose.diagnose` handles the one
            legitimate case, a resolved region of an earlier table, itself).
    """
    return {r.id: rule_mask([Condition(**c) for c in r.conditions], features) for r in regions}
