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
            ≥ :data:`~chemgap.agent.diagnostics.folding.MERGE_JACCARD`): per region ``{"id",
            "rule", "machine_rule", "method", "n_atoms", "jaccard", "ratio", "ratio_ci",
            "q_value", "severity"}``, their own statistics; this region's statistics are its
            own, unchanged by folding.
        n_atoms / n_structures: atoms and structures covered; coverage: n_atoms / all atoms.
        mean_error, ci: mean error inside and its 95% cluster-bootstrap CI, eV/Å.
        baseline: mean error over all atoms, eV/Å; ratio, ratio_ci: mean_error / baseline.
        held_out: the statistics (mean error, CIs, baseline, ratio, p, uncertainty, severity)
            come from the structures the rule was not found on (tree rules); n_atoms,
            n_structures, coverage and elements always describe the whole set.
        scored_structures: structures the statistics come from.
        p_value / q_value: structure-level test, and BH-adjusted; significant: q ≤ alpha.
        within_p / within_q: the within-structure test of the rule's atoms against the other
            atoms of the same structures (:func:`~chemgap.agent.diagnostics.stats.
            within_structure_p`) over the ``mixed_structures`` holding both, and BH-adjusted
            over the significant atom rules; NaN for a rule that selects whole structures.
        level: where the finding lives: ``atom`` (both tests hold: these atoms are worse than
            their neighbours), ``structure`` (the structures holding them are worse: a
            whole-structure rule, or an atom rule whose within test does not hold), ``""``
            (a file written before the within test existed).
        complement: the rule of the other side of the same cut (the candidate whose atoms, on
            the structures scored, were exactly the others), when one was proposed; p_value is
            then the two-sided p = min(1, 2 min(p_this, p_other)) and the other side was not
            tested on its own (:func:`~chemgap.agent.diagnostics.scoring.fold_complements`).
            None: p_value is one-sided.
        uncertainty_mean: mean calibrated force std inside, eV/Å; uncertainty_ratio: / overall.
        error_to_uncertainty: (mean error / mean uncertainty) inside over the same outside-agnostic
            ratio for all atoms; silent: error_to_uncertainty ≥ silent_factor and mean_error >
            uncertainty_mean (``search._silent``).
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
    within_p: float = float("nan")
    within_q: float = float("nan")
    mixed_structures: int = 0
    level: str = ""
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
