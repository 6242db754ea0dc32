"""Calibrate ensemble uncertainty on held-out labelled data, and measure how good it is.

Pure functions of predictions and labels: :meth:`chemgap.models.ensemble.Ensemble.calibrate`
fits and keeps a calibration; nothing here knows the ensemble.

The ensemble std is rescaled so that errors divided by the scaled std have unit variance
(σ-scaling, the Gaussian maximum-likelihood scale; Levi et al. 2022, Kuleshov et al. 2018 for
recalibration of regression uncertainty): one global scale for energies, one global and one per
element for force components. Quality is reported both raw and calibrated:

- Spearman ρ between std and |error|, per atom (force std magnitude vs force error norm) and per
  structure (energy std vs |energy error|): does the uncertainty rank the errors?
- miscalibration area (Tran et al., Mach. Learn.: Sci. Technol. 1, 025006, 2020): the mean
  absolute gap between the expected and observed fraction of errors inside the central Gaussian
  interval, over expected fractions 0.01..0.99;
- coverage of the nominal 68% and 95% intervals (±1σ, ±1.96σ).

Ensembles tend to be overconfident out of distribution: check the calibration on OOD data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as ASE_Z
from ase.data import chemical_symbols

from chemgap.common.keys import reference_energies, reference_forces
from chemgap.common.metrics import energy_errors_per_atom, force_error_norms, rmse

from .predict import Prediction

log = logging.getLogger(__name__)

_EPS = 1e-12
_Z68 = 1.0
_Z95 = 1.959963984540054


@dataclass(kw_only=True)
class Calibration:
    """Multiplicative scales of the ensemble std, fitted on held-out labelled data.

    Attributes:
        energy_scale: global scale of the per-structure energy std.
        force_scale: global scale of the per-component force std.
        force_scale_per_element: symbol -> scale of the force std of that element's atoms
            (elements with fewer than ``min_atoms`` atoms use ``force_scale``).
        metrics: ``{"raw": {...}, "calibrated": {...}}`` quality on the calibration data
            (keys: spearman_atom, spearman_struct, miscalibration_area_forces,
            miscalibration_area_energy, coverage_68_forces, coverage_95_forces,
            coverage_68_energy, coverage_95_energy).
        n_structures, n_atoms: size of the calibration set.
    """

    energy_scale: float = 1.0
    force_scale: float = 1.0
    force_scale_per_element: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    n_structures: int = 0
    n_atoms: int = 0

    def force_scales_for(self, numbers: np.ndarray) -> np.ndarray:
        """Per-atom force-std scale for atomic ``numbers``; shape (n_atoms,)."""
        table = {ASE_Z[s]: v for s, v in self.force_scale_per_element.items()}
        return np.array([table.get(int(z), self.force_scale) for z in numbers], dtype=float)

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``ensemble.json`` stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """The calibration :meth:`to_dict` wrote."""
        return cls(**d)


def _ref_arrays(structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    return reference_energies(structures), reference_forces(structures)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def miscalibration_area(z: np.ndarray, n_levels: int = 99) -> float:
    """Tran et al. (2020) miscalibration area of standardised errors ``z`` = err/σ (Gaussian)."""
    from scipy.stats import norm

    z = np.abs(np.asarray(z, dtype=float).ravel())
    if len(z) == 0:
        return float("nan")
    p = np.linspace(0.01, 0.99, n_levels)
    half = norm.ppf(0.5 + p / 2)
    observed = (z[None, :] <= half[:, None]).mean(axis=1)
    return float(np.mean(np.abs(observed - p)))


def quality(pred: Prediction, structures: Sequence[Atoms], *, calibrated: bool) -> dict[str, float]:
    """Ranking and calibration quality of ``pred``'s std (raw or calibrated) against labels."""
    e_ref, f_ref = _ref_arrays(structures)
    e_std = pred.energy_std_cal if calibrated else pred.energy_std
    f_std = pred.forces_std_cal if calibrated else pred.forces_std
    f_atom = pred.force_std_atom_cal if calibrated else pred.force_std_atom
    e_err = pred.energy_mean - e_ref
    f_err = pred.forces_mean - f_ref
    z_f = f_err / np.maximum(f_std, _EPS)
    z_e = e_err / np.maximum(e_std, _EPS)
    return {
        "spearman_atom": _spearman(f_atom, force_error_norms(pred.forces_mean, f_ref)),
        "spearman_struct": _spearman(e_std, np.abs(e_err)),
        "miscalibration_area_forces": miscalibration_area(z_f),
        "miscalibration_area_energy": miscalibration_area(z_e),
        "coverage_68_forces": float(np.mean(np.abs(z_f) <= _Z68)),
        "coverage_95_forces": float(np.mean(np.abs(z_f) <= _Z95)),
        "coverage_68_energy": float(np.mean(np.abs(z_e) <= _Z68)),
        "coverage_95_energy": float(np.mean(np.abs(z_e) <= _Z95)),
        "rmse_e_per_atom": rmse(
            energy_errors_per_atom(pred.energy_mean, e_ref, np.bincount(pred.system_idx))
        ),
        "rmse_f": rmse(f_err),
    }


def _scale(err: np.ndarray, std: np.ndarray) -> float:
    """σ-scaling: s = sqrt(mean((err/std)²)) so that err/(s·std) has unit second moment."""
    ratio = (err / np.maximum(std, _EPS)) ** 2
    s = math.sqrt(float(np.mean(ratio)))
    return s if math.isfinite(s) and s > 0 else 1.0


def fit_calibration(
    pred: Prediction, structures: Sequence[Atoms], *, per_element: bool = True, min_atoms: int = 10
) -> Calibration:
    """Fit energy, global-force and per-element force scales on a raw ``pred`` of ``structures``."""
    e_ref, f_ref = _ref_arrays(structures)
    e_scale = _scale(pred.energy_mean - e_ref, pred.energy_std)
    f_err = pred.forces_mean - f_ref
    f_scale = _scale(f_err, pred.forces_std)
    per_el: dict[str, float] = {}
    if per_element:
        for z in np.unique(pred.numbers):
            mask = pred.numbers == z
            if mask.sum() >= min_atoms:
                per_el[chemical_symbols[int(z)]] = _scale(f_err[mask], pred.forces_std[mask])
    return Calibration(
        energy_scale=e_scale,
        force_scale=f_scale,
        force_scale_per_element=per_el,
        n_structures=len(structures),
        n_atoms=len(pred.numbers),
    )
