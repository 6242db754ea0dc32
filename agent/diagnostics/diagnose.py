"""Diagnosis of one ensemble on labelled data: errors, uncertainty, features, splits, regions.

:func:`diagnose` is what the campaign loop calls after every iteration (no training inside), on
the campaign's fixed test set, so that a region's figures form a history across iterations:

1. the ensemble predicts every labelled structure; the errors are those of
   :mod:`chemgap.common.metrics`: per-atom force error norm |F_pred - F_ref| (eV/Å), per-structure
   energy error per atom (eV/atom), the overall :class:`~chemgap.common.metrics.ErrorReport`,
   and the calibrated per-atom force std (eV/Å) for every structure;
2. chemical features, built as every reader of a diagnosis' regions rebuilds them
   (:func:`~chemgap.agent.diagnostics.selector.diagnosis_features`); the environment classes
   are named after the previous diagnosis' matching classes, so an environment region keeps
   its id;
3. the given ensemble scored on both sides of every configured split
   (:func:`chemgap.agent.diagnostics.splits.evaluate_splits`);
4. the sampling check (:func:`~chemgap.agent.diagnostics.provenance.check_provenance`): does
   the error follow the walker, iteration, seed index or temperature? a warning, never a region;
5. failure regions (:func:`~chemgap.agent.diagnostics.search.search_regions`) with their
   exemplar structures, the iterations they were first and last seen and their history (from
   ``previous``), the previous regions not found any more (``resolved``, their rules applied
   through :class:`~chemgap.agent.diagnostics.selector.RegionSelector`), and what the search
   could have found (``diagnosed``: why a result is empty,
   :func:`~chemgap.agent.diagnostics.explain.explain_empty`).

The result (:class:`~chemgap.agent.diagnostics.result.DiagnosisResult`) is written and read by
:mod:`chemgap.agent.diagnostics.storage` (:func:`write_regions`, :func:`load_regions`,
:func:`load_previous`, importable from here too); diagnosing a run directory is
:func:`chemgap.agent.diagnostics.service.run_diagnosis`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.provenance import check_provenance
from chemgap.agent.diagnostics.region import Region, region_masks
from chemgap.agent.diagnostics.result import DiagnosisResult, PreviousDiagnosis
from chemgap.agent.diagnostics.search import search_regions
from chemgap.agent.diagnostics.selector import RegionSelector, diagnosis_features
from chemgap.agent.diagnostics.splits import evaluate_splits
from chemgap.agent.diagnostics.stats import slice_p_value
from chemgap.agent.diagnostics.storage import load_previous, load_regions, write_regions
from chemgap.agent.diagnostics.table import Features
from chemgap.agent.errors import BadInput
from chemgap.agent.layout import DiagnosisLayout
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import reference_energies, reference_forces
from chemgap.common.metrics import (
    ErrorReport,
    breakdown,
    energy_errors_per_atom,
    force_error_norms,
    score,
)

if TYPE_CHECKING:
    from chemgap.models.contract import EnsembleModel
    from chemgap.models.predict import Prediction

log = logging.getLogger(__name__)

# what the loop and other readers import from here (defined in result and storage)
__all__ = [
    "DiagnosisResult",
    "PreviousDiagnosis",
    "diagnose",
    "load_previous",
    "load_regions",
    "write_regions",
]


def diagnose(
    structures_labelled: list[Atoms],
    ensemble: EnsembleModel,
    cfg: DiagnosticsConfig,
    *,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    iteration: int | None = None,
    previous: PreviousDiagnosis | list[Region] | None = None,
    features: Features | None = None,
    source: str | None = None,
) -> DiagnosisResult:
    """Diagnose ``ensemble`` on labelled structures: errors, features, splits, failure regions.

    Args:
        structures_labelled: structures with labelled energies and forces; others (status not
            'ok', no labels) are skipped. In a campaign: its fixed test set, every iteration.
        ensemble: the model (:class:`chemgap.models.contract.EnsembleModel`).
        cfg: the ``diagnostics`` section of the spec.
        seed: seed of every random choice (bootstrap, tree halves, splits, KMeans).
        rng: overrides the generator derived from ``seed`` (regions only).
        iteration: the campaign iteration (sets first/last seen and the history).
        previous: the last diagnosis (:func:`~chemgap.agent.diagnostics.storage.load_previous`),
            or just its regions: first seen, history, ``resolved``; with its environment
            classes, the classes here are named after the matching ones there.
        features: a precomputed feature table of the same structures (else computed).
        source: what the structures are, in words (stored with the result).

    Returns:
        :class:`DiagnosisResult`.
    """
    from chemgap.models.data import usable

    t0 = time.perf_counter()
    structures = usable(list(structures_labelled))
    if len(structures) < 2:
        raise BadInput(
            f"diagnose: need at least 2 labelled structures (got {len(structures)} usable)"
        )
    if previous is not None and not isinstance(previous, PreviousDiagnosis):
        previous = PreviousDiagnosis(regions=list(previous))
    rng = rng if rng is not None else np.random.default_rng(seed)
    pred = ensemble.predict(structures)
    atom_error = force_error_norms(pred.forces_mean, reference_forces(structures))
    energy_error = energy_errors_per_atom(
        pred.energy_mean, reference_energies(structures), np.array([len(a) for a in structures])
    )
    uncertainty = np.asarray(pred.force_std_atom_cal, dtype=float)

    if features is not None and features.n_atoms != len(atom_error):
        raise ValueError("features: table does not match the structures (atom count differs)")
    features = diagnosis_features(
        structures,
        environment_classes=cfg.environment_classes,
        seed=seed,
        prediction=pred,
        environment=previous.environment if previous is not None else None,
        features=features,
    )

    search = search_regions(features, atom_error, uncertainty, cfg, rng=rng)
    regions = search.regions
    exemplars = _exemplars(regions, features, structures, pred, atom_error, cfg.exemplars)
    resolved = _track(regions, previous, iteration, features, atom_error, cfg.alpha)
    splits = evaluate_splits(structures, features, cfg, prediction=pred, seed=seed)
    result = DiagnosisResult(
        regions=regions,
        splits=splits,
        baseline=_baseline(
            score(pred, structures), features, atom_error, uncertainty, pred.calibrated
        ),
        iteration=iteration,
        seed=seed,
        n_tested=search.n_tested,
        diagnosed=search.summary,
        source=source,
        resolved=[d["id"] for d in resolved if d["status"] == RESOLVED],
        resolved_regions=resolved,
        provenance=check_provenance(features, atom_error, cfg.alpha),
        perception=dict(features.perception),
        environment=features.environment,
        exemplars=exemplars,
        features=features,
        atom_error=atom_error,
        atom_uncertainty=uncertainty,
        energy_error=energy_error,
    )
    result.wall_s = time.perf_counter() - t0
    log.info(
        "diagnosis: %d structures, force MAE %.4g eV/Å per component, %d regions (%d rules "
        "tested) in %.1f s",
        len(structures),
        result.baseline["force_mae"],
        len(regions),
        search.n_tested,
        result.wall_s,
    )
    return result


def _track(
    regions: list[Region],
    previous: PreviousDiagnosis | None,
    iteration: int | None,
    features: Features,
    atom_error: np.ndarray,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Set first/last seen and history of ``regions`` from ``previous``; describe the regions
    not found any more and whether each is resolved (:func:`_resolved_entry`).

    A region continues a previous one with its id, or with one of its ``also_ids`` (a finding
    folded under a more readable rule, or an earlier machine form of its own rule). A previous
    region that no region continues is resolved; its rule is applied to this data to say how
    its atoms do now (:func:`_resolved_entry`).
    """
    if iteration is None and previous is None:
        return []
    before = {r.id: r for r in previous.regions} if previous else {}
    continued: set[str] = set()
    for r in regions:
        ids = [r.id, *r.also_ids]
        old = next((before[i] for i in ids if i in before), None)
        continued.update(i for i in ids if i in before)
        r.first_seen = old.first_seen if old and old.first_seen is not None else iteration
        r.last_seen = iteration
        past = [h for h in (old.history if old else []) if h.get("iteration") != iteration]
        r.history = [
            *past,
            {
                "iteration": iteration,
                "ratio": r.ratio,
                "ratio_ci": list(r.ratio_ci),
                "ci_level": r.ci_level,
                "q_value": r.q_value,
            },
        ]
    gone = [r for rid, r in before.items() if rid not in continued]
    selector = RegionSelector(features)
    return [_resolved_entry(r, selector, atom_error, alpha) for r in gone]


RESOLVED = "resolved"


def _resolved_entry(
    r: Region, selector: RegionSelector, atom_error: np.ndarray, alpha: float = 0.05
) -> dict[str, Any]:
    """A previous region not found any more, with its rule applied to this diagnosis' data.

    Not being found again is not being resolved: the region may have been folded under
    another, ranked out, or missed by a finder. It is ``resolved`` only when its atoms are no
    longer significantly above the baseline on this data (the structure-level test of
    :func:`~chemgap.agent.diagnostics.stats.slice_p_value` at ``alpha``, uncorrected, which
    makes "resolved" the harder verdict) and its ratio has not risen; otherwise its ``status``
    says which: ``still above the baseline`` or ``ratio rising``; ``cannot be re-scored`` when
    its rule names a feature this data lacks.

    The rule of an earlier diagnosis may name a feature this data lacks (a group flag exists
    only where that group was perceived); it then selects no atom
    (:class:`~chemgap.agent.diagnostics.selector.RegionSelector`) and the entry says which
    feature was absent (``n_atoms_now`` 0, ``ratio_now`` NaN, ``note``), so it is not mistaken
    for a rule matching no atom.

    Args:
        r: the previous diagnosis' region.
        selector: this diagnosis' feature table.
        atom_error: (n_atoms,) force error norms of this diagnosis, eV/Å.
        alpha: the level below which its atoms are still significantly above the baseline.

    Returns:
        ``{"id", "rule", "machine_rule", "first_seen", "last_seen", "ratio_before",
        "n_atoms_now", "ratio_now", "p_now", "status"}``, plus ``"note"`` when a feature of
        the rule is absent.
    """
    entry: dict[str, Any] = {
        "id": r.id,
        "rule": r.rule,
        "machine_rule": r.machine_rule,
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "ratio_before": r.ratio,
    }
    m = selector.select(r)
    missing = selector.absent(r)
    if missing is not None:
        note = f"feature {missing!r} absent from this data"
        return {**entry, "n_atoms_now": 0, "ratio_now": float("nan"), "p_now": float("nan"),
                "status": "cannot be re-scored", "note": note}  # fmt: skip
    ratio = float(atom_error[m].mean() / atom_error.mean()) if m.any() else float("nan")
    p_now = slice_p_value(atom_error, selector.features.system_idx, m) if m.any() else 1.0
    status = RESOLVED
    if np.isfinite(ratio) and np.isfinite(r.ratio) and ratio > r.ratio:
        status = "ratio rising"
    elif p_now <= alpha:
        status = "still above the baseline"
    return {**entry, "n_atoms_now": int(m.sum()), "ratio_now": ratio, "p_now": p_now,
            "status": status}  # fmt: skip


def _baseline(
    report: ErrorReport,
    features: Features,
    atom_error: np.ndarray,
    uncertainty: np.ndarray,
    calibrated: bool,
) -> dict[str, Any]:
    """The ``baseline`` of a :class:`DiagnosisResult`: overall and per-element figures.

    Args:
        report: :func:`chemgap.common.metrics.score` of the prediction on all structures.
        features: the feature table (its ``element`` column groups the atoms).
        atom_error: (n_atoms,) :func:`~chemgap.common.metrics.force_error_norms`, eV/Å.
        uncertainty: (n_atoms,) calibrated per-atom force std, eV/Å.
        calibrated: whether ``uncertainty`` comes from a stored calibration.

    Returns:
        The dict described under :class:`DiagnosisResult` ``baseline``.
    """
    from scipy.stats import spearmanr

    symbols = features.atom["element"].astype(str)
    elements, counts = np.unique(symbols, return_counts=True)
    error_norm = breakdown(atom_error, symbols)
    unc = breakdown(uncertainty, symbols)
    per_element = {
        str(el): {
            "n_atoms": int(n),
            "force_error_mean": error_norm[str(el)],
            "force_mae": report.force_mae_per_element[str(el)],
            "uncertainty_mean": unc[str(el)],
        }
        for el, n in zip(elements, counts, strict=True)
    }
    rho = spearmanr(uncertainty, atom_error).statistic if len(atom_error) > 2 else float("nan")
    return {
        "n_structures": report.n_structures,
        "n_atoms": report.n_atoms,
        "force_mae": report.force_mae,
        "force_error_mean": report.force_error_norm_mean,
        "energy_mae_per_atom": report.energy_mae_per_atom,
        "uncertainty_mean": float(uncertainty.mean()),
        "calibrated": bool(calibrated),
        "spearman_uncertainty_error": float(rho),
        "per_element": per_element,
    }


def _exemplars(
    regions: list[Region],
    features: Features,
    structures: list[Atoms],
    pred: Prediction,
    atom_error: np.ndarray,
    k: int,
) -> dict[str, list[Atoms]]:
    """Per region, the ``k`` structures whose region atoms have the highest mean error.

    Raises:
        UnknownFeature: a region's rule names a column ``features`` lacks (the regions are this
            table's own findings, so that is a bug, never an empty region).
    """
    out: dict[str, list[Atoms]] = {}
    if k <= 0:
        return out
    masks = region_masks(regions, features)
    sidx = features.system_idx
    n = features.n_struct
    for r in regions:
        m = masks[r.id]
        sums = np.bincount(sidx[m], weights=atom_error[m], minlength=n)
        counts = np.bincount(sidx[m], minlength=n)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        top = [int(i) for i in np.argsort(-means)[:k] if counts[i] > 0]
        images, info = [], []
        for frame, i in enumerate(top):
            sl = sidx == i
            a = structures[i].copy()
            a.calc = None
            a.arrays["in_region"] = m[sl].astype(bool)
            a.arrays["force_error"] = atom_error[sl]
            a.arrays["force_std_cal"] = pred.force_std_atom_cal[sl]
            a.arrays["pred_forces"] = pred.forces_mean[sl]
            a.info["region"] = r.id
            a.info["region_rule"] = r.rule
            a.info["region_machine_rule"] = r.machine_rule
            a.info["region_mean_error"] = float(means[i])
            a.info["structure_index"] = i
            images.append(a)
            info.append(
                {
                    "index": i,
                    "db_id": structures[i].info.get("db_id"),
                    "formula": structures[i].get_chemical_formula(),
                    "n_atoms": len(structures[i]),
                    "atoms_in_region": int(counts[i]),
                    "mean_error": float(means[i]),
                    "file": DiagnosisLayout.region_file_name(r.id),
                    "frame": frame,
                }
            )
        r.exemplars = info
        out[r.id] = images
    return out
