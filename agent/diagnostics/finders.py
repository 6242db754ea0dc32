"""The region finders: the rules proposed as candidate failure regions (before statistics).

Three finders (registry :data:`FINDERS`, names :class:`RegionMethod`), over every feature
column but the sampling provenance
(:meth:`~chemgap.agent.diagnostics.table.Features.region_columns`); the method and its
references are in :mod:`chemgap.agent.diagnostics.regions`:

- ``slice``: one condition per categorical value, flag and threshold of a numeric feature; cut
  points come from the feature values alone (midpoints between distinct values, or deciles).
- ``tree``: the high-error nodes (leaves and the nodes above them) of a shallow regression tree
  grown on a random half of the structures (:func:`honest_split`); their rules are scored on
  the other half only. A node below the first split is a conjunction: it carries its
  ``parent``, the rule of the node one split up.
- ``cluster``: the local-environment classes, described by the slice rules most enriched in
  them.

A finder is ``Callable[[RegionInputs], list[Candidate]]``; a new one is a :class:`RegionMethod`
member and an entry of :data:`FINDERS` (docs/architecture.md, "How to add …").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.rules import (
    Condition,
    cut_between,
    feature_resolution,
    readable_rule,
    rule_mask,
    rule_text,
)
from chemgap.agent.diagnostics.table import FeatureKind, Features

_NUMERIC_MAX_DISTINCT = 12


class RegionMethod(StrEnum):
    """The finders that propose candidate rules (keys of :data:`FINDERS`)."""

    SLICE = "slice"
    TREE = "tree"
    CLUSTER = "cluster"


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
        earlier: machine forms this rule had before
            :func:`~chemgap.agent.diagnostics.rules.simplify_conditions` made it plain.
        parent: a tree rule below the tree's first split (a conjunction): the rule of the node
            one split up, i.e. this rule before its last split (its last condition dropped, or
            that condition's feature bounded as before the split); None for every other rule.
        parent_mask: (n_atoms,) bool, the parent's atoms (a superset of ``mask``); None
            without a parent.
    """

    conditions: list[Condition]
    method: str
    mask: np.ndarray
    test_structures: np.ndarray | None = None
    enriched: list[str] = field(default_factory=list)
    also: list[list[Condition]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)
    parent: list[Condition] | None = None
    parent_mask: np.ndarray | None = None

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

    Over :meth:`~chemgap.agent.diagnostics.table.Features.region_columns`: the sampling
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

    Over :meth:`~chemgap.agent.diagnostics.table.Features.region_columns` (no provenance).

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


def _node_rules(
    tree, meaning: list[Condition], features: Features
) -> dict[int, tuple[list[Condition], int]]:
    """Every node of a fitted sklearn tree but the root: the conditions on the path to it,
    simplified per feature, and its parent node (0: the root, whose rule is every atom).
    """
    t = tree.tree_
    rules: dict[int, tuple[list[Condition], int]] = {}

    def walk(node: int, parent: int, path: list[tuple[int, bool, float]]) -> None:
        if path:
            rules[node] = (_simplify(path, meaning, features), parent)
        if t.children_left[node] == -1:
            return
        f, thr = int(t.feature[node]), float(t.threshold[node])
        walk(int(t.children_left[node]), node, [*path, (f, False, thr)])
        walk(int(t.children_right[node]), node, [*path, (f, True, thr)])

    walk(0, -1, [])
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
    """High-error nodes of a regression tree grown on half the structures (see module doc).

    Every node below the root whose mean error on the growing half is ≥ ``min_ratio`` x that
    half's baseline is a candidate, the leaves and the nodes above them alike: a conjunction
    (a node below the first split) is reported only where it is worse than its parent
    (:func:`~chemgap.agent.diagnostics.search.search_regions`), so its parent must be among the
    hypotheses for the finding to survive when the last split adds nothing. Parents come
    before their children. The choice looks at the growing half only, so the candidates'
    statistics on the held-out half (``test_structures``) stay honest.
    """
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
    on_path = tree.decision_path(x[rows]).tocsc()
    rules = _node_rules(tree, meaning, f)
    out = []
    for node, (conds, parent) in rules.items():
        in_node = on_path[:, node].toarray().ravel().astype(bool)
        if not conds or not in_node.any():
            continue
        if inp.errors[rows][in_node].mean() < inp.min_ratio * base:
            continue
        up = rules[parent][0] if parent in rules and rules[parent][0] else None
        out.append(
            Candidate(
                conditions=conds,
                method=RegionMethod.TREE,
                mask=rule_mask(conds, f),
                test_structures=~grow,
                parent=up,
                parent_mask=rule_mask(up, f) if up is not None else None,
            )
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
