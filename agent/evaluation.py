"""Scoring one iteration on the campaign's fixed test set, and checking its calibration there.

Everything here is a pure function of residuals (prediction − label, with the ensemble's raw
spread; :class:`chemgap.models.calibration.Residuals`) and of the test structures' provenance
(``test_kind``, ``in_distribution``), so a resumed run recomputes the same numbers from the
files an iteration wrote.

- :func:`score_test_set`: the error metrics of :mod:`chemgap.common.metrics` on the whole test set,
  its in-distribution (ID) and out-of-distribution (OOD) parts, per kind and per element;
- :func:`calibration_checks`: a calibration's quality (Spearman ρ of spread and error,
  miscalibration area, mean squared z-score, 68 %/95 % coverage; Tan et al. 2023, Pernot 2024)
  on the data it was fitted on (which describes the fit only), on held-out data it was not
  fitted on, and on the test set's ID and OOD parts, where ensembles are known to be
  overconfident;
- :func:`model_quality`: whether the model is good enough where it has data for its failure
  regions to be findings: the in-distribution force MAE against the RMS of the reference forces
  it is scored on (a model no better than predicting zero force has a ratio near 0.8 for
  Gaussian forces: MAE/RMS of a normal variable is √(2/π));
- :func:`compare_calibrations`: whether a calibration fitted on the loop's own labels (as
  predicted by the ensemble that chose them) transfers to OOD data better than the one fitted
  on the calibration split alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.common.metrics import report_from_errors

if TYPE_CHECKING:
    from chemgap.models.calibration import Calibration, Residuals

__all__ = [
    "calibration_checks",
    "compare_calibrations",
    "score_test_set",
    "subset_residuals",
]

PARTS = ("id", "ood")


def subset_residuals(res: Residuals, keep: np.ndarray) -> Residuals | None:
    """The residuals of the structures where ``keep`` (n_struct,) is True, or None if none."""
    from chemgap.models.calibration import Residuals

    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        return None
    atom_keep = keep[res.system_idx]
    new_index = np.cumsum(keep) - 1
    return Residuals(
        energy_error=res.energy_error[keep],
        energy_std=res.energy_std[keep],
        n_atoms=res.n_atoms[keep],
        force_error=res.force_error[atom_keep],
        force_std=res.force_std[atom_keep],
        numbers=res.numbers[atom_keep],
        system_idx=new_index[res.system_idx[atom_keep]],
    )


def _report(res: Residuals | None) -> dict[str, Any] | None:
    if res is None:
        return None
    return report_from_errors(
        energy_error=res.energy_error,
        n_atoms=res.n_atoms,
        force_error=res.force_error,
        numbers=res.numbers,
    ).to_dict()


def _parts(structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    ident = np.array([bool(a.info.get("in_distribution", True)) for a in structures])
    return {"id": ident, "ood": ~ident}


def score_test_set(res: Residuals, structures: Sequence[Atoms]) -> dict[str, Any]:
    """Error metrics of one ensemble on the test set.

    Args:
        res: residuals of the test set, structures in the order of ``structures``.
        structures: the test structures (``info['test_kind']``, ``info['in_distribution']``).

    Returns:
        ``{"all": report, "id": report | None, "ood": report | None, "kinds": {kind: report}}``
        with each report a :class:`chemgap.common.metrics.ErrorReport` as a dict (its
        ``force_mae_per_element`` is the per-element breakdown).
    """
    kinds = np.array([str(a.info.get("test_kind", "test")) for a in structures])
    out: dict[str, Any] = {"all": _report(res)}
    for name, mask in _parts(structures).items():
        out[name] = _report(subset_residuals(res, mask))
    out["kinds"] = {k: _report(subset_residuals(res, kinds == k)) for k in dict.fromkeys(kinds)}
    return out


def calibration_checks(
    cal: Calibration,
    *,
    fitted_on: Residuals,
    held_out: Residuals | None = None,
    test: Residuals | None,
    test_structures: Sequence[Atoms],
) -> dict[str, Any]:
    """Quality of ``cal`` on the data it was fitted on, on held-out data and on the test set.

    Args:
        cal: the calibration to check.
        fitted_on: residuals of the data ``cal`` was fitted on.
        held_out: residuals of in-distribution data it was not fitted on (the campaign's
            holdout), or None.
        test: residuals of the test set, or None.
        test_structures: the test structures (for the ID/OOD parts).

    Returns:
        ``{"fitted_on": q, "held_out": q | None, "test_id": q | None, "test_ood": q | None}``,
        each ``q`` the dict of :func:`chemgap.models.calibration.calibration_quality` (raw
        spread scaled by ``cal``). Only the held-out and test numbers say how the calibration
        transfers: on its fitting data the RMS calibrated spread equals the RMS error by
        construction.
    """
    from chemgap.models.calibration import calibration_quality

    out: dict[str, Any] = {
        "fitted_on": calibration_quality(fitted_on, cal),
        "held_out": calibration_quality(held_out, cal) if held_out is not None else None,
    }
    for name, mask in _parts(test_structures).items():
        part = subset_residuals(test, mask) if test is not None else None
        out[f"test_{name}"] = calibration_quality(part, cal) if part is not None else None
    return out


def _z2_gap(quality: dict[str, Any] | None) -> float:
    """|log mean z²| of forces: 0 for a calibrated spread, the same for 2× over or under."""
    if quality is None:
        return float("nan")
    z2 = float(quality.get("mean_z2_forces", float("nan")))
    return abs(float(np.log(z2))) if z2 > 0 else float("nan")


def compare_calibrations(split: dict[str, Any], loop: dict[str, Any]) -> dict[str, Any]:
    """Which calibration's force spread is closer to calibrated on the OOD test part.

    Args:
        split: :func:`calibration_checks` of the calibration fitted on the calibration split.
        loop: the same for the one fitted on that split + the loop's own labels.

    Returns:
        ``{"split_gap", "loop_gap", "loop_transfers_better"}``: gaps are |log mean z²| on the
        OOD test part (0 is calibrated); ``loop_transfers_better`` None when either is unknown.
    """
    a, b = _z2_gap(split.get("test_ood")), _z2_gap(loop.get("test_ood"))
    better = None if np.isnan(a) or np.isnan(b) else bool(b < a)
    return {"split_gap": a, "loop_gap": b, "loop_transfers_better": better}


def model_quality(
    force_mae: float | None, structures: Sequence[Atoms], target: float, basis: str
) -> dict[str, Any] | None:
    """The in-distribution quality of a model, judged against ``target``.

    Args:
        force_mae: its force MAE (per component, eV/Å) on ``structures``; None: not scored.
        structures: the labelled structures it was scored on (``REF_forces``).
        target: the largest ratio of force MAE to the reference forces' RMS (per component)
            at which the model's failure regions count as findings.
        basis: what the structures are, in words (``test set, in distribution``).

    Returns:
        ``{"force_mae", "force_rms", "ratio", "target", "ready", "basis"}`` (eV/Å), or None
        without a score or forces.
    """
    from chemgap.common.keys import reference_forces

    if force_mae is None or not structures:
        return None
    forces = reference_forces(list(structures))
    rms = float(np.sqrt(np.mean(forces**2))) if forces.size else 0.0
    if rms <= 0:
        return None
    ratio = float(force_mae) / rms
    return {
        "force_mae": float(force_mae),
        "force_rms": rms,
        "ratio": ratio,
        "target": float(target),
        "ready": ratio <= target,
        "basis": basis,
    }


def quality_text(quality: dict[str, Any] | None) -> str | None:
    """One sentence on a model whose regions are tentative (None when they are findings)."""
    if not quality or quality["ready"]:
        return None
    return (
        f"tentative: the in-distribution force MAE ({1e3 * quality['force_mae']:.0f} meV/Å on "
        f"the {quality['basis']}) is {100 * quality['ratio']:.0f} % of the force RMS there "
        f"(target ≤ {100 * quality['target']:.0f} %); regions are not findings yet"
    )
