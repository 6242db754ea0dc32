"""Rules over a feature table: the machine form that selects atoms, and the form a chemist reads.

A rule is a conjunction of :class:`Condition` s. Its **machine form** (:func:`rule_text`,
``environment = env4 and shell_frac:Au > 0.5``) names the feature columns and values exactly;
it is what selects atoms (:func:`rule_mask`), what is stored and what a region's id hashes
(:func:`region_id`), so ids stay stable however the display changes. Its **readable form**
(:func:`readable_rule`) says the same in words with units: environment classes by their
chemistry (``Au, 12-fold, 8–11 Au + 1–4 Cu neighbours (env4)``), local fractions in percent
(``first-shell Au fraction > 50 %``), distances in Å.

Rules are made plain before they are scored (:func:`simplify_conditions`; the atoms selected
never change, so neither do the statistics): negated categories become a set, the positive one
when it is no longer (``element ≠ Cu`` in a Cu-Au table is ``element = Au``), and a condition is
dropped when the rule without it selects the same atoms. Thresholds are the roundest numbers
that cut the data in the same place (:func:`round_threshold`). When regions overlap, the most
readable one represents them (:func:`readability`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.table import FeatureKind, Features

NEGATIVE_OPS = frozenset({"≠", "∉"})
SET_OPS = frozenset({"∈", "∉"})

# readable name, unit and display scale of numeric features (values x scale are shown)
FEATURE_WORDS: dict[str, tuple[str, str, float]] = {
    "coordination": ("coordination", "", 1.0),
    "coordination_deficit": ("coordination deficit", "", 1.0),
    "defect_distance_A": ("distance to a defect", "Å", 1.0),
    "isolation_A": ("isolated atom's nearest-neighbour distance", "Å", 1.0),
    "bond_stretch_A": ("mean bond stretch", "Å", 1.0),
    "bond_distortion_A": ("RMS bond deviation of the structure", "Å", 1.0),
    "density_g_cm3": ("density", "g/cm³", 1.0),
    "strain": ("volumetric strain", "%", 100.0),
    "n_atoms": ("atoms in the structure", "", 1.0),
    "total_charge_e": ("total charge of the structure", "e", 1.0),
    "pred_charge_e": ("predicted atomic charge", "e", 1.0),
    "charge_spread_e": ("spread of the predicted charge", "e", 1.0),
    "temperature_K": ("temperature", "K", 1.0),
}
PREFIX_WORDS: dict[str, tuple[str, str, float]] = {
    "shell_frac:": ("first-shell {} fraction", "%", 100.0),
    "nb_count:": ("{} neighbours", "", 1.0),
    "comp_frac:": ("{} fraction of the structure", "%", 100.0),
}
CATEGORY_WORDS = {"seed_kind": "seed kind", "composition": "composition"}
FLAG_WORDS: dict[str, tuple[str, str]] = {
    "in_ring": ("in a ring", "not in a ring"),
    "aromatic": ("aromatic", "not aromatic"),
    "periodic": ("in a periodic cell", "not in a periodic cell"),
    "out_of_distribution": ("out of distribution", "in distribution"),
}
# how readily a chemist reads a feature (lower first); environment classes come last
FEATURE_RANK: dict[str, int] = {
    "element": 0,
    "hybridisation": 1,
    "in_ring": 1,
    "aromatic": 1,
    "coordination": 2,
    "coordination_deficit": 2,
    "defect_distance_A": 2,
    "isolation_A": 2,
    "environment": 5,
}
PREFIX_RANK = {"group:": 0, "shell_frac:": 1, "nb_count:": 1, "comp_frac:": 2, "bond_": 3}
DEFAULT_RANK = 3
ENVIRONMENT = "environment"


class UnknownFeature(KeyError):
    """A rule names a feature column the feature table does not have.

    Attributes:
        feature: the missing column.
        available: the columns the table has.
    """

    def __init__(self, feature: str, available: Sequence[str]) -> None:
        super().__init__(feature)
        self.feature = feature
        self.available = sorted(available)

    def __str__(self) -> str:
        return (
            f"feature {self.feature!r} is not a column of this feature table "
            f"(columns: {', '.join(self.available) or 'none'})"
        )


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One test on one feature column: ``feature op value``.

    ``op`` is ``=`` / ``≠`` (categorical value or flag True/False), ``∈`` / ``∉`` (categorical,
    ``value`` a tuple of values), ``≤`` / ``≥`` / ``<`` / ``>`` (numeric; NaN never satisfies a
    numeric condition).
    """

    feature: str
    op: str
    value: Any

    def mask(self, features: Features) -> np.ndarray:
        """(n_atoms,) bool: the atoms of ``features`` that satisfy this condition.

        Raises:
            UnknownFeature: ``features`` has no column ``feature`` (a rule of another feature
                table is not a region of zero atoms here).
        """
        if self.feature not in features.atom:
            raise UnknownFeature(self.feature, list(features.atom))
        col = features.atom[self.feature]
        kind = features.kinds.get(self.feature, FeatureKind.NUMERIC)
        if kind == FeatureKind.FLAG:
            flag = col.astype(bool)
            return flag == bool(self.value) if self.op == "=" else flag != bool(self.value)
        if kind == FeatureKind.CATEGORICAL:
            return self._categorical(col)
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

    def _categorical(self, col: np.ndarray) -> np.ndarray:
        if self.op in SET_OPS:
            inside = np.isin(col.astype(str), np.array([str(v) for v in self.value]))
            return inside if self.op == "∈" else ~inside
        return col == self.value if self.op == "=" else col != self.value

    @property
    def text(self) -> str:
        """The machine form: ``coordination ≤ 9``, ``group = nitrile``, ``element ∈ {Au, Pt}``."""
        if self.feature.startswith("group:"):
            group = self.feature.removeprefix("group:")
            positive = (self.op == "=") == bool(self.value)
            return f"group {'=' if positive else '≠'} {group}"
        if isinstance(self.value, bool):
            positive = (self.op == "=") == self.value
            return f"{self.feature} = {'yes' if positive else 'no'}"
        if self.op in SET_OPS:
            return f"{self.feature} {self.op} {_set_text([str(v) for v in self.value])}"
        return f"{self.feature} {self.op} {_fmt(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready ``{"feature", "op", "value"}`` dict (``Condition(**d)`` restores it)."""
        v = self.value
        if isinstance(v, tuple | list):
            v = [x.item() if hasattr(x, "item") else x for x in v]
        elif hasattr(v, "item"):
            v = v.item()
        return {"feature": self.feature, "op": self.op, "value": v}


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        return str(int(v)) if v.is_integer() else f"{v:.6g}"
    return str(value)


def _set_text(values: Sequence[str]) -> str:
    """``{a, b}``; members are separated by ``;`` when one of them holds a comma."""
    sep = "; " if any("," in v for v in values) else ", "
    return "{" + sep.join(values) + "}"


def rule_text(conditions: Sequence[Condition]) -> str:
    """The machine form of a rule: its conditions' :attr:`Condition.text`, joined by ``and``."""
    return " and ".join(c.text for c in conditions)


def rule_mask(conditions: Sequence[Condition], features: Features) -> np.ndarray:
    """(n_atoms,) bool: the atoms that satisfy every condition of a rule."""
    mask = np.ones(features.n_atoms, dtype=bool)
    for c in conditions:
        mask &= c.mask(features)
    return mask


def region_id(rule: str) -> str:
    """Stable id of a rule's machine form: ``R`` + 8 hex digits of its SHA-1."""
    return "R" + hashlib.sha1(rule.encode()).hexdigest()[:8]


def as_condition(c: Condition | dict[str, Any]) -> Condition:
    """A :class:`Condition` from itself or from its :meth:`Condition.to_dict` dict."""
    if isinstance(c, Condition):
        return c
    value = c["value"]
    return Condition(
        feature=c["feature"], op=c["op"], value=tuple(value) if isinstance(value, list) else value
    )


# --------------------------------------------------------------------------- thresholds
def round_threshold(lo: float, hi: float) -> float:
    """The roundest number c with lo ≤ c < hi: fewest significant digits, nearest the middle.

    A cut ``x ≤ c`` between the data values ``lo`` and ``hi`` selects the same atoms for any
    such c, so the one a chemist writes is chosen: 1.4 between 1.18 and 1.63, 0.5 between 0.5
    and 0.583, 0 between -0.003 and 0.002.
    """
    if not lo < hi:
        return float(lo)
    if lo <= 0.0 < hi:
        return 0.0
    mid = (lo + hi) / 2
    top = math.floor(math.log10(max(abs(lo), abs(hi))))
    for k in range(16):
        step = 10.0 ** (top - k)
        n_lo, n_hi = math.ceil(lo / step - 1e-9), math.ceil(hi / step - 1e-9) - 1
        if n_lo > n_hi:
            continue
        n = min(max(round(mid / step), n_lo), n_hi)
        c = round(n * step, max(0, k - top))
        if lo <= c < hi:
            return float(c)
    return float(mid)


# the finest step a threshold is written with, by feature (suffix or prefix): 0.01 Å, 1 %, ...
RESOLUTION_SUFFIX = {"_A": 0.01, "_K": 1.0, "_g_cm3": 0.01}
RESOLUTION_PREFIX = {"shell_frac:": 0.01, "comp_frac:": 0.01, "strain": 0.001}


def feature_resolution(name: str) -> float | None:
    """The finest step worth writing a threshold of ``name`` with (None: as fine as needed).

    0.01 Å for distances, 1 K, 0.01 g/cm³, one percentage point for fractions, 0.1 % strain.
    """
    for suffix, step in RESOLUTION_SUFFIX.items():
        if name.endswith(suffix):
            return step
    for prefix, step in RESOLUTION_PREFIX.items():
        if name.startswith(prefix):
            return step
    return None


def cut_between(values: np.ndarray, t: float, resolution: float | None = None) -> float | None:
    """The roundest c splitting sorted distinct ``values`` as ``t`` does (``≤ c`` iff ``≤ t``).

    When the roundest such c is finer than ``resolution`` (dense data: 0.0123 Å between 0.0122
    and 0.0124), ``t`` rounded to ``resolution`` is used instead (0.01 Å), which moves the cut
    past the few atoms in between: a threshold is written with meaningful precision.

    Returns:
        The cut, or None when every value lies on one side of ``t``.
    """
    below, above = values[values <= t], values[values > t]
    if not len(below) or not len(above):
        return None
    cut = round_threshold(float(below.max()), float(above.min()))
    if resolution is not None and abs(cut - round(cut / resolution) * resolution) > 1e-9:
        digits = max(0, -math.floor(math.log10(resolution)))
        cut = round(round(t / resolution) * resolution, digits)
    return float(cut)


# --------------------------------------------------------------------------- readable form
def feature_words(name: str) -> tuple[str, str, float]:
    """(readable name, unit, display scale) of a numeric feature column."""
    if name in FEATURE_WORDS:
        return FEATURE_WORDS[name]
    for prefix, (label, unit, scale) in PREFIX_WORDS.items():
        if name.startswith(prefix):
            return label.format(name.removeprefix(prefix)), unit, scale
    return name, "", 1.0


def _value_text(feature: str, value: Any, features: Features | None) -> str:
    if feature == ENVIRONMENT and features is not None and features.environment is not None:
        return features.environment.name(str(value))
    return str(value)


def _kind(cond: Condition, features: Features | None) -> FeatureKind:
    if features is not None and cond.feature in features.kinds:
        return features.kinds[cond.feature]
    if isinstance(cond.value, bool):
        return FeatureKind.FLAG
    if isinstance(cond.value, str | tuple | list):
        return FeatureKind.CATEGORICAL
    return FeatureKind.NUMERIC


def condition_text(cond: Condition, features: Features | None = None) -> str:
    """One condition as a chemist reads it: names, units, environment classes in words.

    Args:
        cond: the condition.
        features: the table it applies to (environment class names, column kinds); None:
            inferred from the value, classes shown by id.
    """
    kind = _kind(cond, features)
    if cond.feature.startswith("group:"):
        group = cond.feature.removeprefix("group:").replace("_", " ")
        positive = (cond.op == "=") == bool(cond.value)
        return f"group {'=' if positive else '≠'} {group}"
    if kind == FeatureKind.FLAG:
        positive = (cond.op == "=") == bool(cond.value)
        if cond.feature in FLAG_WORDS:
            return FLAG_WORDS[cond.feature][0 if positive else 1]
        return f"{cond.feature} = {'yes' if positive else 'no'}"
    if kind == FeatureKind.CATEGORICAL:
        label = CATEGORY_WORDS.get(cond.feature, cond.feature)
        if cond.op in SET_OPS:
            values = [_value_text(cond.feature, v, features) for v in cond.value]
            return f"{label} {cond.op} {_set_text(values)}"
        return f"{label} {cond.op} {_value_text(cond.feature, cond.value, features)}"
    label, unit, scale = feature_words(cond.feature)
    value = float(cond.value) * scale
    number = _fmt(float(f"{value:.6g}"))
    return f"{label} {cond.op} {number}" + (f" {unit}" if unit else "")


def readable_rule(
    conditions: Sequence[Condition | dict[str, Any]], features: Features | None = None
) -> str:
    """A rule as a chemist reads it (:func:`condition_text` of each, joined by ``and``)."""
    return " and ".join(condition_text(as_condition(c), features) for c in conditions)


# --------------------------------------------------------------------------- plain rules
def feature_rank(feature: str) -> int:
    """How readily a chemist reads a feature: 0 (element, group) to 5 (environment class)."""
    if feature in FEATURE_RANK:
        return FEATURE_RANK[feature]
    for prefix, rank in PREFIX_RANK.items():
        if feature.startswith(prefix):
            return rank
    return DEFAULT_RANK


def _negated(c: Condition) -> bool:
    return c.op in NEGATIVE_OPS or (isinstance(c.value, bool) and (c.op == "=") != c.value)


def readability(conditions: Sequence[Condition | dict[str, Any]]) -> tuple[int, int, int, int]:
    """Sort key of a rule, most readable first.

    (names an environment class, number of conditions, the least readable feature's
    :func:`feature_rank`, negated conditions): a named feature before an environment class,
    fewer conditions before more, ``element`` and groups before local fractions before
    structure-level features, positive before negated.
    """
    conds = [as_condition(c) for c in conditions]
    return (
        int(any(c.feature == ENVIRONMENT for c in conds)),
        len(conds),
        max((feature_rank(c.feature) for c in conds), default=0),
        sum(_negated(c) for c in conds),
    )


def _as_set(feature: str, group: list[Condition], features: Features, mask: np.ndarray):
    """One condition for a categorical feature's negations: the positive set or ``∉``.

    The positive set is the values the rule's atoms have; it selects the same atoms as long
    as no atom of the rule lacks a value. It is used when it is no longer than the excluded set.
    """
    excluded = sorted({str(v) for c in group for v in (c.value if c.op in SET_OPS else [c.value])})
    present = sorted({str(v) for v in features.atom[feature][mask]})
    if present and "" not in present and len(present) <= len(excluded):
        if len(present) == 1:
            return Condition(feature=feature, op="=", value=present[0])
        return Condition(feature=feature, op="∈", value=tuple(present))
    if len(excluded) == 1:
        return Condition(feature=feature, op="≠", value=excluded[0])
    return Condition(feature=feature, op="∉", value=tuple(excluded))


def _categorical_sets(
    conditions: list[Condition], features: Features, mask: np.ndarray
) -> list[Condition]:
    """Negated values of one categorical feature as one set condition (:func:`_as_set`)."""
    negated: dict[str, list[Condition]] = {}
    positive = {c.feature for c in conditions if c.op in {"=", "∈"}}
    for c in conditions:
        categorical = features.kinds.get(c.feature) == FeatureKind.CATEGORICAL
        if categorical and c.op in NEGATIVE_OPS and c.feature not in positive:
            negated.setdefault(c.feature, []).append(c)
    out: list[Condition] = []
    done: set[str] = set()
    for c in conditions:
        if c.feature not in negated:
            out.append(c)
        elif c.feature not in done:
            done.add(c.feature)
            out.append(_as_set(c.feature, negated[c.feature], features, mask))
    return out


def simplify_conditions(
    conditions: Sequence[Condition], features: Features, mask: np.ndarray | None = None
) -> list[Condition]:
    """The plainest rule selecting the same atoms of ``features`` as ``conditions``.

    Negated values of a categorical feature become one set condition, positive where that is
    no longer (:func:`_as_set`); then conditions are dropped, least readable first
    (:func:`feature_rank`, negated before positive), while the rule without them selects the
    same atoms. The result selects exactly ``mask`` (checked), so a rule's statistics do not
    change.

    Args:
        conditions: the rule.
        features: the table it applies to.
        mask: (n_atoms,) bool, the rule's atoms (computed when None).

    Returns:
        The simplified conditions (at least one).
    """
    mask = rule_mask(conditions, features) if mask is None else mask
    out = _categorical_sets(list(conditions), features, mask)
    if not np.array_equal(rule_mask(out, features), mask):  # the sets never widen a rule
        out = list(conditions)
    order = sorted(out, key=lambda c: (-feature_rank(c.feature), not _negated(c)))
    for c in order:
        if len(out) == 1:
            break
        trial = [x for x in out if x is not c]
        if np.array_equal(rule_mask(trial, features), mask):
            out = trial
    return out
