"""What a diagnosis found (:class:`DiagnosisResult`, the ``regions.json`` payload) and what the
next diagnosis needs of it (:class:`PreviousDiagnosis`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.splits import SplitResult
from chemgap.agent.diagnostics.table import EnvironmentClasses, Features

PAYLOAD_VERSION = 2  # 2: readable rules beside machine_rule, also_ids, folded, provenance


@dataclass(kw_only=True)
class DiagnosisResult:
    """What a diagnosis found.

    Attributes:
        regions: significant failure regions, most severe first.
        splits: per-split errors (:class:`SplitResult`), side by side.
        baseline: overall numbers, each named after its :mod:`chemgap.common.metrics` metric:
            n_structures, n_atoms; force_mae (``force_mae``: mean over atoms and Cartesian
            components of |F_pred - F_ref|, eV/Å); force_error_mean (``force_error_norm_mean``:
            mean over atoms of the error norm, eV/Å; the regions' baseline);
            energy_mae_per_atom (``energy_mae_per_atom``, eV/atom); uncertainty_mean (mean
            calibrated per-atom force std, eV/Å); calibrated; spearman_uncertainty_error
            (Spearman rank correlation of uncertainty and error norm over atoms); per_element
            {symbol: {n_atoms, force_error_mean, force_mae, uncertainty_mean}}, the same metrics
            restricted to that element's atoms.
        iteration: the campaign iteration diagnosed (None outside a run).
        seed: the seed of every random choice.
        n_tested: candidate rules tested (the Benjamini-Hochberg family size).
        diagnosed: what the region search could have found
            (:func:`~chemgap.agent.diagnostics.search.search_summary`: n_structures, n_atoms,
            n_rules_tested, n_two_sided, alpha, min_ratio, min_region_atoms, min_q_achievable,
            min_q_lone, best_sizes, best_two_sided, structures_needed, n_below_min_ratio,
            max_ratio_seen, min_q_seen).
        source: what was diagnosed, in words (``test set of RUN``, a file's name).
        resolved: ids of ``previous`` regions not found any more.
        resolved_regions: per resolved region: id, rule, first_seen, last_seen, ratio_before
            (its ratio when last found) and, its rule applied to this diagnosis' data,
            n_atoms_now and ratio_now (mean error of those atoms over the baseline; NaN when
            the rule selects no atom now). When the rule names a feature this data does not
            have (group flags exist only where a group was perceived; environment classes
            differ), n_atoms_now is 0, ratio_now NaN and ``note`` says which feature is absent.
        provenance: the sampling check
            (:func:`~chemgap.agent.diagnostics.provenance.check_provenance`): per provenance
            column (walker, iteration, seed index, temperature), whether the error follows it;
            flagged ones carry a warning ``message``. Never failure regions; shown apart.
        perception: RDKit bond perception of the molecules
            (:attr:`~chemgap.agent.diagnostics.table.Features.perception`: tried,
            perceived, failed, failed_formulas); empty when no molecular features were made.
        environment: the environment classes (SOAP centroids) the region ids of environment
            regions refer to; the next diagnosis matches its classes to them.
        exemplars: region id -> annotated exemplar structures.
        features: the feature table.
        atom_error: (n_atoms,) force error norms |F_pred - F_ref|, eV/Å.
        atom_uncertainty: (n_atoms,) calibrated per-atom force std, eV/Å.
        energy_error: (n_struct,) signed (E_pred - E_ref) / n_atoms, eV/atom.
        wall_s: how long the diagnosis took, s.
        quality: the model's in-distribution quality against its target
            (:func:`chemgap.agent.evaluation.model_quality`; a campaign sets it), or None;
            when it misses the target the regions are tentative.
    """

    regions: list[Region]
    splits: list[SplitResult]
    baseline: dict[str, Any]
    iteration: int | None = None
    seed: int = 0
    n_tested: int = 0
    diagnosed: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    resolved: list[str] = field(default_factory=list)
    resolved_regions: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    perception: dict[str, Any] = field(default_factory=dict)
    environment: EnvironmentClasses | None = None
    exemplars: dict[str, list[Atoms]] = field(default_factory=dict)
    features: Features | None = None
    atom_error: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    energy_error: np.ndarray | None = None
    wall_s: float = 0.0
    quality: dict[str, Any] | None = None

    @property
    def tentative(self) -> bool:
        """Whether the model misses its in-distribution target (regions are not findings)."""
        return self.quality is not None and not self.quality["ready"]

    def to_dict(self) -> dict[str, Any]:
        """The ``regions.json`` payload (JSON-safe: NaN written as null)."""
        return json_safe(
            {
                "format": PAYLOAD_VERSION,
                "created": time.time(),
                "iteration": self.iteration,
                "seed": self.seed,
                "source": self.source,
                "baseline": self.baseline,
                "n_tested": self.n_tested,
                "diagnosed": self.diagnosed,
                "resolved": self.resolved,
                "resolved_regions": self.resolved_regions,
                "provenance": self.provenance,
                "perception": self.perception,
                "regions": [r.to_dict() for r in self.regions],
                "splits": [s.to_dict() for s in self.splits],
                "environment": None if self.environment is None else self.environment.to_dict(),
                "wall_s": self.wall_s,
                "quality": self.quality,
                "tentative": self.tentative,
            }
        )


@dataclass(kw_only=True)
class PreviousDiagnosis:
    """What a diagnosis needs of the one before it
    (:func:`~chemgap.agent.diagnostics.storage.load_previous`).

    Attributes:
        regions: its regions (first seen, history, and which are resolved now).
        environment: its environment classes (so the classes keep their names); None if unknown.
        iteration: its iteration (None outside a run).
    """

    regions: list[Region]
    environment: EnvironmentClasses | None = None
    iteration: int | None = None


def json_safe(obj: Any) -> Any:
    """``obj`` with NumPy scalars as Python ones and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
