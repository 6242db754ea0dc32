"""Failure regions: where in chemical space the errors are high, as rules a chemist can read.

Candidates come from three finders (registry :data:`FINDERS`, names :class:`RegionMethod`):

- ``slice``: one condition per categorical value, flag and threshold of a numeric feature
  (``element = Cu``, ``group = nitrile``, ``coordination ≤ 9``); cut points come from the feature
  values alone (midpoints between distinct values, or deciles), never from the errors.
- ``tree``: a shallow regression tree (depth ``tree_depth``) on the features predicting the
  per-atom force error; each leaf whose mean error is ``min_ratio`` x the baseline becomes a
  conjunction rule (``element = Cu and coordination ≤ 9``): decision-tree slice discovery after
  SliceFinder (Chung et al., ICDE 2019). The tree is grown on a random half of the structures and
  its rules are tested on the other half (honest splitting), so choosing a leaf by its error does
  not make its p-value optimistic.
- ``cluster``: local-environment classes (KMeans on SOAP, see
  :mod:`chemgap.agent.diagnostics.features`), described by the slice conditions most enriched
  in them.

Statistics (per candidate, then across candidates):

- the error of an atom is the norm of its force error |F_pred - F_ref| (eV/Å); the baseline is
  the mean over all atoms;
- **atoms of one structure are not independent** (one bad structure makes all its atoms bad),
  so the unit of every test and resampling is the structure: the p-value is a one-sided
  Mann-Whitney U test of the per-structure mean error of the region's atoms against the
  per-structure mean error of the other atoms; confidence intervals are cluster-bootstrap
  percentile intervals (structures resampled with replacement, ``bootstrap`` resamples, seeded;
  Field & Welsh, J. R. Stat. Soc. B 69, 369, 2007). A structure that has atoms on both sides
  contributes to both samples; that positive pairing makes the unpaired test conservative;
- p-values of all candidates are adjusted together for the number tried with the
  Benjamini-Hochberg step-up procedure (Benjamini & Hochberg, J. R. Stat. Soc. B 57, 289, 1995)
  at false-discovery rate ``alpha``;
- a region is reported when its q-value is ≤ alpha, its error ratio to the baseline is
  ≥ ``min_ratio`` and it holds ≥ ``min_region_atoms`` atoms. Overlapping findings (Jaccard index of
  their atom sets ≥ 0.8) are merged into one region, keeping the simplest rule.

A region is **silent** when the ensemble's calibrated uncertainty does not follow the error into
it: (mean error / mean calibrated force std) inside is ≥ ``silent_factor`` x the same ratio over
all atoms. Uncertainty-driven active learning will not sample a silent region by itself.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.features import FeatureKind, Features
from chemgap.agent.diagnostics.stats import (
    ClusterBootstrap,
    benjamini_hochberg,
    slice_p_value,
)

log = logging.getLogger(__name__)

MERGE_JACCARD = 0.8
_NUMERIC_MAX_DISTINCT = 12


class RegionMethod(StrEnum):
    SLICE = "slice"
    TREE = "tree"
    CLUSTER = "cluster"


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True, kw_only=True)
class Condition:
    """One test on one feature column: ``feature op value``.

    ``op`` is ``=`` / ``≠`` (categorical value or flag True/False), ``≤`` / ``≥`` / ``<`` / ``>``
    (numeric; NaN never satisfies a numeric condition).
    """

    feature: str
    op: str
    value: Any

    def mask(self, features: Features) -> np.ndarray:
        col = features.atom[self.feature]
        kind = features.kinds.get(self.feature, FeatureKind.NUMERIC)
        if kind == FeatureKind.FLAG:
            flag = col.astype(bool)
            return flag == bool(self.value) if self.op == "=" else flag != bool(self.value)
        if kind == FeatureKind.CATEGORICAL:
            return col == self.value if self.op == "=" else col != self.value
        x = col.astype(float)
        with np.errstate(invalid="ignore"):
            match self.op:
                case "≤":
                    return x <= self.value
                case "≥":
                    return x >= self.value
                case "<":
                    return x < self.value
                case ">":
                    return x > self.value
        raise ValueError(f"condition: unknown operator {self.op!r}")

    @property
    def text(self) -> str:
        if self.feature.startswith("group:"):
            group = self.feature.removeprefix("group:")
            positive = (self.op == "=") == bool(self.value)
            return f"group {'=' if positive else '≠'} {group}"
        if isinstance(self.value, bool):
            positive = (self.op == "=") == self.value
            return f"{self.feature} = {'yes' if positive else 'no'}"
        return f"{self.feature} {self.op} {_fmt(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        return {
            "feature": self.feature,
            "op": self.op,
            "value": v.item() if hasattr(v, "item") else v,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        return str(int(v)) if v.is_integer() else f"{v:.3g}"
    return str(value)


def rule_text(conditions: list[Condition]) -> str:
    return " and ".join(c.text for c in conditions)


def rule_mask(conditions: list[Condition], features: Features) -> np.ndarray:
    mask = np.ones(features.n_atoms, dtype=bool)
    for c in conditions:
        mask &= c.mask(features)
    return mask


def region_id(rule: str) -> str:
    """Stable id of a rule: ``R`` + 8 hex digits of its SHA-1 (same rule, same id, any run)."""
    return "R" + hashlib.sha1(rule.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- regions
@dataclass(kw_only=True)
class Region:
    """A failure region: a rule over the features, and how the model does inside it.

    Errors are per-atom force-error norms, eV/Å; uncertainties per-atom calibrated force std
    magnitudes, eV/Å.

    Attributes:
        id: ``R`` + hash of ``rule`` (stable across iterations and runs).
        rule: the conditions as text, ``element = Cu and coordination ≤ 9``.
        conditions: the rule as ``{"feature", "op", "value"}`` dicts.
        method: the finder of the kept rule; ``methods``: every finder that found it;
        also: rules of merged findings covering (nearly) the same atoms.
        n_atoms / n_structures: atoms and structures covered; coverage: n_atoms / all atoms.
        mean_error, ci: mean error inside and its 95% cluster-bootstrap CI, eV/Å.
        baseline: mean error over all atoms, eV/Å; ratio, ratio_ci: mean_error / baseline.
        p_value / q_value: structure-level test, and BH-adjusted; significant: q ≤ alpha.
        uncertainty_mean: mean calibrated force std inside, eV/Å; uncertainty_ratio: / overall.
        error_to_uncertainty: (mean error / mean uncertainty) inside over the same outside-agnostic
            ratio for all atoms; silent: error_to_uncertainty ≥ silent_factor.
        severity: (lower CI of ratio - 1), doubled when silent; the ranking key.
        elements: symbol -> atoms of that element inside.
        enriched: for cluster regions, the slice rules most over-represented inside.
        exemplars: the structures with the highest error inside (index, db_id, formula, n_atoms,
            atoms_in_region, mean_error, file).
        first_seen / last_seen: iterations in which the region was found (None outside a run).
    """

    id: str
    rule: str
    conditions: list[dict[str, Any]]
    method: str
    methods: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)
    n_atoms: int
    n_structures: int
    coverage: float
    mean_error: float
    ci: tuple[float, float]
    baseline: float
    ratio: float
    ratio_ci: tuple[float, float]
    p_value: float
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"], d["ratio_ci"] = list(self.ci), list(self.ratio_ci)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        d = dict(d)
        d["ci"], d["ratio_ci"] = tuple(d["ci"]), tuple(d["ratio_ci"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(kw_only=True)
class Candidate:
    """A rule proposed by a finder, before statistics: its atoms and where to test it."""

    conditions: list[Condition]
    method: str
    mask: np.ndarray
    test_structures: np.ndarray | None = None  # (n_struct,) bool; None: test on all
    enriched: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)  # rules selecting exactly the same atoms

    @property
    def rule(self) -> str:
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
    """One-condition rules for every categorical value, flag and numeric threshold."""
    out: list[list[Condition]] = []
    for name, col in features.atom.items():
        kind = features.kinds.get(name, FeatureKind.NUMERIC)
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

    Cut points are midpoints between distinct values when there are at most 12, else the deciles
    rounded to 2 significant digits. Integer columns read ``x ≤ 9`` / ``x ≥ 10``.
    """
    x = x[~np.isnan(x)]
    u = np.unique(x)
    if len(u) < 2:
        return []
    out = []
    integer = bool(np.all(np.equal(np.mod(u, 1), 0)))
    if len(u) <= _NUMERIC_MAX_DISTINCT:
        for lo, hi in itertools.pairwise(u):
            if integer:
                out += [Condition(feature=name, op="≤", value=float(lo))]
                out += [Condition(feature=name, op="≥", value=float(hi))]
            else:
                cut = float(f"{(lo + hi) / 2:.3g}")
                out += [Condition(feature=name, op="≤", value=cut)]
                out += [Condition(feature=name, op=">", value=cut)]
    else:
        cuts = sorted({float(f"{q:.2g}") for q in np.quantile(x, np.linspace(0.1, 0.9, 9))})
        for cut in cuts:
            if u[0] <= cut < u[-1]:
                out += [Condition(feature=name, op="≤", value=cut)]
                out += [Condition(feature=name, op=">", value=cut)]
    return out


def find_slices(inp: RegionInputs) -> list[Candidate]:
    out = []
    for conds in slice_conditions(inp.features, inp.min_atoms):
        mask = rule_mask(conds, inp.features)
        out.append(Candidate(conditions=conds, method=RegionMethod.SLICE, mask=mask))
    return out


# ---- finder (b): decision tree
def _design_matrix(features: Features, min_atoms: int) -> tuple[np.ndarray, list[Condition]]:
    """Tree inputs: numeric columns without NaN as they are, flags 0/1, categorical one-hot.

    Returns X (n_atoms, p) and, per column, the condition its "> threshold" side means (for
    one-hot and flags ``feature = value``; for numeric a template with the feature name).
    """
    cols, meaning = [], []
    for name, col in features.atom.items():
        kind = features.kinds.get(name, FeatureKind.NUMERIC)
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


def _simplify(
    path: list[tuple[int, bool, float]], meaning: list[Condition], features: Features
) -> list[Condition]:
    lower: dict[str, float] = {}
    upper: dict[str, float] = {}
    eq: dict[str, Condition] = {}
    neq: dict[tuple[str, Any], Condition] = {}
    order: list[str] = []
    for f, right, thr in path:
        m = meaning[f]
        if m.op == "=":  # one-hot or flag column: right branch means "= value"
            if m.feature not in order:
                order.append(m.feature)
            if right:
                eq[m.feature] = m
            else:
                neq[(m.feature, m.value)] = Condition(feature=m.feature, op="≠", value=m.value)
            continue
        name = m.feature
        if name not in order:
            order.append(name)
        if right:
            lower[name] = max(lower.get(name, -np.inf), thr)
        else:
            upper[name] = min(upper.get(name, np.inf), thr)
    out: list[Condition] = []
    for name in order:
        if name in eq:
            out.append(eq[name])
            continue
        out += [c for (n, _), c in neq.items() if n == name]
        col = features.atom.get(name)
        integer = col is not None and features.kinds.get(name) == FeatureKind.NUMERIC
        integer = integer and bool(np.all(np.mod(col.astype(float), 1) == 0))
        if name in lower:
            v = lower[name]
            out.append(
                Condition(feature=name, op="≥", value=float(np.floor(v) + 1))
                if integer
                else Condition(feature=name, op=">", value=float(f"{v:.3g}"))
            )
        if name in upper:
            v = upper[name]
            out.append(
                Condition(feature=name, op="≤", value=float(np.floor(v)))
                if integer
                else Condition(feature=name, op="≤", value=float(f"{v:.3g}"))
            )
    return out


def find_tree_rules(inp: RegionInputs) -> list[Candidate]:
    """High-error leaves of a regression tree grown on half the structures (see module doc)."""
    from sklearn.tree import DecisionTreeRegressor

    f = inp.features
    x, meaning = _design_matrix(f, inp.min_atoms)
    n_struct = f.n_struct
    if x.shape[1] == 0 or n_struct < 4:
        return []
    grow = np.zeros(n_struct, dtype=bool)
    grow[inp.rng.permutation(n_struct)[: n_struct // 2]] = True
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
    """Every environment class as a candidate, described by its most enriched slices."""
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
                enriched.append((inside / max(overall, 1e-12), inside, overall, rule_text(conds)))
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
def find_regions(
    features: Features,
    errors: np.ndarray,
    uncertainty: np.ndarray,
    *,
    alpha: float = 0.05,
    min_atoms: int = 10,
    min_ratio: float = 1.2,
    tree_depth: int = 3,
    n_boot: int = 1000,
    silent_factor: float = 2.0,
    max_regions: int = 20,
    methods: list[str] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[list[Region], int]:
    """Find, test, correct, merge and rank failure regions.

    Args:
        features: the feature table, one row per atom.
        errors: (n_atoms,) per-atom force-error norm, eV/Å.
        uncertainty: (n_atoms,) per-atom calibrated force std, eV/Å.
    Returns:
        (regions, n_tested): the significant regions, most severe first, and how many candidate
        rules were tested (the BH family size).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    errors = np.asarray(errors, dtype=float)
    uncertainty = np.asarray(uncertainty, dtype=float)
    sidx = features.system_idx
    n_struct, n_atoms = features.n_struct, features.n_atoms
    if len(errors) != n_atoms or len(uncertainty) != n_atoms:
        raise ValueError(f"errors/uncertainty must have {n_atoms} entries (one per atom)")
    inp = RegionInputs(
        features=features,
        errors=errors,
        uncertainty=uncertainty,
        min_atoms=min_atoms,
        min_ratio=min_ratio,
        tree_depth=tree_depth,
        rng=rng,
    )
    candidates: list[Candidate] = []
    seen: dict[bytes, Candidate] = {}
    for name in methods or list(FINDERS):
        for cand in FINDERS[RegionMethod(name)](inp):
            n_in = int(cand.mask.sum())
            if n_in < min_atoms or n_in == n_atoms:
                continue
            key = np.packbits(cand.mask).tobytes() + cand.method.encode()
            if key in seen:  # identical atom set from the same finder: one test, first rule
                seen[key].also.append(cand.rule)
                continue
            seen[key] = cand
            candidates.append(cand)
    if not candidates:
        return [], 0

    boot = ClusterBootstrap.draw(errors, sidx, n_boot, rng)
    baseline = float(errors.mean())
    unc_all = float(np.nanmean(uncertainty)) if np.isfinite(uncertainty).any() else float("nan")
    e2u_all = baseline / unc_all if unc_all and np.isfinite(unc_all) else float("nan")
    regions: list[Region] = []
    masks: list[np.ndarray] = []
    p_values = []
    for cand in candidates:
        if cand.test_structures is not None:
            rows = cand.test_structures[sidx]
            sub_idx = np.unique(sidx[rows], return_inverse=True)[1]
            p = slice_p_value(errors[rows], sub_idx, cand.mask[rows])
        else:
            p = slice_p_value(errors, sidx, cand.mask, n_struct)
        p_values.append(p)
        m = cand.mask
        mean = float(errors[m].mean())
        ci, ratio_ci = boot.interval(m)
        unc = float(np.nanmean(uncertainty[m])) if np.isfinite(uncertainty[m]).any() else np.nan
        e2u = (
            (mean / unc) / e2u_all if unc and np.isfinite(unc) and np.isfinite(e2u_all) else np.nan
        )
        symbols, counts = (
            np.unique(features.atom["element"][m].astype(str), return_counts=True)
            if "element" in features.atom
            else ([], [])
        )
        rule = cand.rule
        regions.append(
            Region(
                id=region_id(rule),
                rule=rule,
                conditions=[c.to_dict() for c in cand.conditions],
                method=str(cand.method),
                methods=[str(cand.method)],
                also=list(cand.also),
                n_atoms=int(m.sum()),
                n_structures=len(np.unique(sidx[m])),
                coverage=float(m.mean()),
                mean_error=mean,
                ci=ci,
                baseline=baseline,
                ratio=mean / baseline if baseline > 0 else float("nan"),
                ratio_ci=ratio_ci,
                p_value=p,
                uncertainty_mean=unc,
                uncertainty_ratio=unc / unc_all if unc_all else float("nan"),
                error_to_uncertainty=float(e2u),
                elements={str(s): int(c) for s, c in zip(symbols, counts, strict=True)},
                enriched=cand.enriched,
            )
        )
        masks.append(m)
    q = benjamini_hochberg(np.array(p_values))
    for r, qv in zip(regions, q, strict=True):
        r.q_value = float(qv)
        r.significant = bool(qv <= alpha and r.ratio >= min_ratio)
        r.silent = bool(r.significant and np.isfinite(r.error_to_uncertainty))
        r.silent = r.silent and r.error_to_uncertainty >= silent_factor
        r.severity = float((r.ratio_ci[0] - 1.0) * (2.0 if r.silent else 1.0))
    keep = [i for i, r in enumerate(regions) if r.significant]
    log.info("%d candidate rules tested, %d significant before merging", len(regions), len(keep))
    merged = _merge([regions[i] for i in keep], [masks[i] for i in keep])
    merged.sort(key=lambda r: -r.severity)
    return merged[:max_regions], len(regions)


def _merge(regions: list[Region], masks: list[np.ndarray]) -> list[Region]:
    """Greedy merge of findings whose atom sets overlap (Jaccard ≥ 0.8); simplest rule wins."""
    order = sorted(
        range(len(regions)),
        key=lambda i: (
            len(regions[i].conditions),
            regions[i].method == "cluster",
            -regions[i].severity,
        ),
    )
    kept: list[tuple[Region, np.ndarray]] = []
    for i in order:
        r, m = regions[i], masks[i]
        for k, km in kept:
            inter = np.logical_and(m, km).sum()
            union = np.logical_or(m, km).sum()
            if union and inter / union >= MERGE_JACCARD:
                if r.method not in k.methods:
                    k.methods.append(r.method)
                k.also.extend(rule for rule in [r.rule, *r.also] if rule not in k.also)
                if r.enriched and not k.enriched:
                    k.enriched = r.enriched
                break
        else:
            kept.append((r, m))
    return [r for r, _ in kept]


def region_masks(regions: list[Region], features: Features) -> dict[str, np.ndarray]:
    """(n_atoms,) bool mask of every region's rule on ``features``."""
    out = {}
    for r in regions:
        conds = [Condition(**c) for c in r.conditions]
        try:
            out[r.id] = rule_mask(conds, features)
        except KeyError:
            out[r.id] = np.zeros(features.n_atoms, dtype=bool)
    return out
