"""A failure region: the rule, its statistics and its history, and its regions.json form.

:class:`Region` is what the search reports (:mod:`chemgap.agent.diagnostics.regions` has the
method), what ``regions.json`` stores (:meth:`Region.to_dict`, read back with
:meth:`Region.from_dict`) and what passes between packages: the remediation experiment, the
report and the CLI take regions as this type, never as the stored dicts
(:func:`as_region` reads either). Which atoms a region's rule selects on some structures is
:class:`chemgap.agent.diagnostics.selector.RegionSelector`'s job; :func:`region_masks` applies
rules to the very table they were found on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.rules import Condition, region_id, rule_mask
from chemgap.agent.diagnostics.table import Features

# the statistics regions.json writes as null when they are NaN (JSON has no NaN)
_NAN_FIELDS = (
    "uncertainty_mean",
    "uncertainty_ratio",
    "error_to_uncertainty",
    "ratio",
    "within_p",
    "within_q",
    "parent_p",
    "parent_q",
)
_NAN_PAIRS = ("ci", "ratio_ci")


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
            ≥ :data:`~chemgap.agent.diagnostics.folding.MERGE_JACCARD`, a cut of the same
            feature at another threshold, or a conjunction not worse than its parent, this
            region): per region ``{"id", "rule", "machine_rule", "method", "n_atoms",
            "jaccard", "ratio", "ratio_ci", "q_value", "severity"}`` and, for such a
            conjunction, ``"parent_q"``: their own statistics; this region's statistics are
            its own, unchanged by folding.
        n_atoms / n_structures: atoms and structures covered; coverage: n_atoms / all atoms.
        mean_error, ci: mean error inside and its cluster-bootstrap CI at ``ci_level``, eV/Å.
        baseline: mean error over all atoms, eV/Å; ratio, ratio_ci: mean_error / baseline.
        ci_level: the confidence level of ``ci`` and ``ratio_ci``. A significant region's
            intervals are false-coverage-rate adjusted (Benjamini & Yekutieli, JASA 100, 71,
            2005): with R of m hypotheses significant, 1 - R alpha / m, so that at most a share
            alpha of the reported intervals is expected to miss (the intervals of regions
            chosen for their large errors are otherwise optimistic); 1 - alpha when every
            hypothesis is significant; 0.95 for a rule not reported, and in files written
            before the adjustment existed.
        held_out: the statistics (mean error, CIs, baseline, ratio, p, uncertainty, severity)
            come from the structures the rule was not found on (tree rules); n_atoms,
            n_structures, coverage and elements always describe the whole set.
        scored_structures: structures the statistics come from.
        p_value / q_value: structure-level test, and BH-adjusted; significant: q ≤ alpha,
            ratio ≥ ``min_ratio`` and, for a conjunction, reported (see ``parent_q``).
        within_p / within_q: the within-structure test of the rule's atoms against the other
            atoms of the same structures (:func:`~chemgap.agent.diagnostics.stats.
            within_structure_p`) over the ``mixed_structures`` holding both, and BH-adjusted
            over the significant atom rules; NaN for a rule that selects whole structures.
        level: where the finding lives: ``atom`` (both tests hold: these atoms are worse than
            their neighbours), ``structure`` (the structures holding them are worse: a
            whole-structure rule, or an atom rule whose within test does not hold), ``""``
            (a file written before the within test existed).
        parent / parent_id: for a conjunction (a tree rule below the tree's first split), the
            readable rule and id of its parent, the rule one split up; None otherwise.
        parent_p / parent_q: the test that the conjunction's atoms are worse than the parent's
            other atoms (one-sided Mann-Whitney of per-structure means over the parent's
            structures, on the structures the conjunction is scored on), and BH-adjusted over
            the significant conjunctions; a conjunction is a region of its own only with
            parent_q ≤ alpha, else it is folded under its parent's region (or, with none
            reported, not significant). NaN for a rule that is no conjunction (or not tested).
        complement: the rule of the other side of the same cut (the candidate whose atoms, on
            the structures scored, were exactly the others), when one was proposed; p_value is
            then the two-sided p = min(1, 2 min(p_this, p_other)) and the other side was not
            tested on its own (:func:`~chemgap.agent.diagnostics.scoring.fold_complements`).
            None: p_value is one-sided.
        uncertainty_mean: mean calibrated force std inside, eV/Å; uncertainty_ratio: / overall.
        error_to_uncertainty: (mean error / mean uncertainty) inside over the same outside-agnostic
            ratio for all atoms; silent: error_to_uncertainty ≥ silent_factor and mean_error >
            uncertainty_mean (``search._silent``).
        severity: (lower bound of ``ratio_ci`` - 1), doubled when silent; the ranking key.
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
    ci_level: float = 0.95
    p_value: float
    within_p: float = float("nan")
    within_q: float = float("nan")
    mixed_structures: int = 0
    level: str = ""
    complement: str | None = None
    parent: str | None = None
    parent_id: str | None = None
    parent_p: float = float("nan")
    parent_q: float = float("nan")
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
    def from_dict(cls, d: Mapping[str, Any]) -> Region:
        """The region :meth:`to_dict` wrote, or its ``regions.json`` form; unknown keys are
        ignored.

        ``regions.json`` writes NaN as null: null statistics and CI bounds are read as NaN.
        Files written before the readable form existed hold the machine form in ``rule`` and
        machine rules in ``also``: ``machine_rule`` is then ``rule``, ``also_ids`` the ids of
        ``also``, and ``folded`` empty.
        """
        d = dict(d)
        for k in _NAN_FIELDS:
            if d.get(k) is None:
                d[k] = float("nan")
        for k in _NAN_PAIRS:
            d[k] = tuple(_nan(v) for v in d.get(k) or (None, None))
        if "also_ids" not in d:
            d["also_ids"] = [region_id(rule) for rule in d.get("also") or []]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


WHOLE_STRUCTURES = "structures with: "
"""How a rule over atoms reads when its finding is about whole structures (:func:`shown_rule`)."""


def shown_rule(region: Region | Mapping[str, Any]) -> str:
    """The rule as tables show it: an atom rule whose atoms are not shown to be worse than their
    neighbours (``level`` ``structure`` over structures that also hold other atoms) reads
    ``structures with: <rule>``: its finding is that those structures are worse.
    """
    get = region.get if isinstance(region, Mapping) else lambda k: getattr(region, k, None)
    rule = str(get("rule") or get("id") or "")
    if get("level") == "structure" and (get("mixed_structures") or 0) > 0:
        return WHOLE_STRUCTURES + rule
    return rule


def level_text(region: Region) -> str:
    """Which tests the region passed, in one line (``inspect REGION``)."""
    if region.level == "atom":
        return (
            f"atom-level: worse than the other atoms of the same structures (within-structure "
            f"q {region.within_q:.1e} over {region.mixed_structures} structures) and across "
            f"structures (q {region.q_value:.1e})"
        )
    if region.level == "structure" and region.mixed_structures:
        return (
            f"structure-level: the structures holding these atoms are worse (q "
            f"{region.q_value:.1e}); their atoms are not shown to be worse than the other atoms "
            f"of the same structures (within-structure q {region.within_q:.2g} over "
            f"{region.mixed_structures} structures)"
        )
    if region.level == "structure":
        return f"structure-level: a rule over whole structures (q {region.q_value:.1e})"
    return "written before the within-structure test existed"


def ci_text(region: Region) -> str:
    """The confidence level of a region's intervals, as tables and ``inspect`` say it.

    ``99.6 % CI, selection-aware`` for a significant region (false-coverage-rate adjusted,
    :attr:`Region.ci_level`), ``95 % CI`` otherwise; the level has the digits that tell it
    from 100 %.
    """
    text = f"{level_percent(region.ci_level)} % CI"
    return text + ", selection-aware" if region.significant else text


def level_percent(level: float) -> str:
    """A confidence level in percent with two significant digits of what it misses:
    ``95``, ``99.6``, ``99.958``.
    """
    miss = 100.0 * (1.0 - level)
    if not np.isfinite(miss) or miss <= 0:
        return "100"
    decimals = max(0, 1 - int(np.floor(np.log10(miss))))
    return f"{100.0 * level:.{decimals}f}".rstrip("0").rstrip(".")


def parent_text(region: Region) -> str | None:
    """For a conjunction, how it compares with its parent (``inspect REGION``); None else."""
    if not region.parent:
        return None
    return (
        f"worse than the other atoms of its parent rule '{region.parent}' (q "
        f"{region.parent_q:.1e}): the last condition adds to it"
    )


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def as_region(value: Region | Mapping[str, Any]) -> Region:
    """``value`` as a :class:`Region`: a region as it is, a ``regions.json`` dict read with
    :meth:`Region.from_dict`.
    """
    return value if isinstance(value, Region) else Region.from_dict(value)


def region_masks(regions: list[Region], features: Features) -> dict[str, np.ndarray]:
    """(n_atoms,) bool mask of every region's rule on ``features``, the table they were found on.

    Raises:
        UnknownFeature: a rule names a column ``features`` lacks (a rule is never silently an
            empty region; regions applied to other structures go through
            :class:`~chemgap.agent.diagnostics.selector.RegionSelector`).
    """
    return {r.id: rule_mask([Condition(**c) for c in r.conditions], features) for r in regions}
