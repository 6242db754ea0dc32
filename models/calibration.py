"""Calibrate ensemble uncertainty on labelled data, and measure how good it is, anywhere.

Pure functions of stored residuals: a :class:`Residuals` holds the raw (uncalibrated) errors and
ensemble spreads of one prediction against labels (built from a live prediction with
:meth:`Residuals.from_prediction`, or loaded from disk). :func:`fit_calibration` fits scales on
one set of residuals and :func:`calibration_quality` scores any calibration (or none) on any
other; :meth:`chemgap.models.ensemble.Ensemble.calibrate` fits and keeps one. Nothing here knows
the ensemble.

The ensemble std is rescaled so that the scaled std's mean variance equals the mean squared
error on the data fitted (variance matching: Levi et al.'s calibration condition RMV = RMSE,
Sensors 22, 5540, 2022, applied globally; Kuleshov et al., ICML 2018 for recalibration of
regression uncertainty): one global scale for energies, one global and one per element for
force components. chemgap departs here from σ-scaling, the Gaussian maximum-likelihood scale
s = sqrt(mean((error/std)²)): with the few members an ensemble has, error/std is heavy-tailed
(for two members a ratio of normals, with no second moment at all), so that mean is ruled by
the components whose members happen to agree, and the scale it gives is many times the
typical error (measured on a 2-member ensemble of EMT Cu: a calibrated force std of 2.7 eV/Å
beside force errors of 0.11 eV/Å, mean z² 0.004 on fresh in-distribution cells;
``tests/test_calibration.py`` checks both estimators on such stds). Variance matching divides
sums, not values, so a small std cannot rule it, and a calibrated std reads as the error it
predicts: on the fitting data the RMS calibrated std equals the RMS error. A scale that cannot
be fitted (no finite errors, zero std everywhere, fewer than :data:`MIN_VALUES` usable values)
is 1.0 and :attr:`Calibration.uncalibrated` says why; the fit logs a warning.

Quality (:func:`calibration_quality`), raw or calibrated:

- Spearman ρ between std and |error|, per atom (force std magnitude vs force error norm) and per
  structure (energy std vs |energy error|): does the uncertainty rank the errors?
- miscalibration area (Tran et al., Mach. Learn.: Sci. Technol. 1, 025006, 2020): the mean
  absolute gap between the expected and observed fraction of errors inside the central Gaussian
  interval, over expected fractions 0.01..0.99;
- mean squared z-score, z = error/σ (ZMS; Pernot, "Negative impact of heavy-tailed uncertainty
  and error distributions on the reliability of calibration statistics for machine learning
  regression tasks", arXiv:2402.10043, 2024): 1 for calibrated uncertainties (average
  calibration), > 1 overconfident, < 1 underconfident. On the fitting data it is near 1 for
  Gaussian errors (exactly 1 under σ-scaling; variance matching makes RMV = RMSE exact
  instead), so it says most on other data;
- coverage of the nominal 68 % and 95 % Gaussian intervals (|z| ≤ 1, |z| ≤ 1.96), the
  interval check of error–uncertainty benchmarks of neural-network potentials (Tan et al.,
  npj Comput. Mater. 9, 225, 2023).

Ensembles tend to be overconfident out of distribution: a calibration fitted and scored on the
same in-distribution holdout looks perfect by construction; score it on other data, and on
out-of-distribution data especially.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as ASE_Z
from ase.data import chemical_symbols

from chemgap.common.files import atomic_write
from chemgap.common.keys import reference_energies, reference_forces

if TYPE_CHECKING:
    from .predict import Prediction

log = logging.getLogger(__name__)

_EPS = 1e-12
_Z68 = 1.0
_Z95 = 1.959963984540054
MIN_VALUES = 2
"""Fewest usable (finite error, std > 0) values a scale is fitted from; one value would make
the scale a single ratio |error|/σ."""

_RESIDUAL_FIELDS = (
    "energy_error",
    "energy_std",
    "n_atoms",
    "force_error",
    "force_std",
    "numbers",
    "system_idx",
)


@dataclass(kw_only=True)
class Calibration:
    """Multiplicative scales of the ensemble std, fitted on labelled data.

    Attributes:
        energy_scale: global scale of the per-structure energy std.
        force_scale: global scale of the per-component force std.
        force_scale_per_element: symbol -> scale of the force std of that element's atoms
            (elements with fewer than ``min_atoms`` atoms use ``force_scale``).
        metrics: ``{"raw": {...}, "calibrated": {...}}``, :func:`calibration_quality` on the
            data the scales were fitted on (where the calibrated RMS std equals the RMS error by
            construction).
        n_structures, n_atoms: size of the calibration set.
        uncalibrated: None when every scale was fitted; otherwise why some could not be
            ("energy: all stds are zero; forces of H: no finite errors"): those scales are 1.0
            (a per-element one falls back to ``force_scale``).
    """

    energy_scale: float = 1.0
    force_scale: float = 1.0
    force_scale_per_element: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    n_structures: int = 0
    n_atoms: int = 0
    uncalibrated: str | None = None

    def force_scales_for(self, numbers: np.ndarray) -> np.ndarray:
        """Per-atom force-std scale for atomic ``numbers``; shape (n_atoms,)."""
        table = {ASE_Z[s]: v for s, v in self.force_scale_per_element.items()}
        return np.array([table.get(int(z), self.force_scale) for z in numbers], dtype=float)

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``ensemble.json`` stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """The calibration :meth:`to_dict` wrote (fields it does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(kw_only=True)
class Residuals:
    """Raw (uncalibrated) errors and ensemble spreads of one prediction against labels.

    Attributes:
        energy_error: (n_struct,) eV, ensemble-mean total energy − label.
        energy_std: (n_struct,) eV, raw ensemble std of the total energy.
        n_atoms: (n_struct,) int, atoms per structure.
        force_error: (n_atoms_total, 3) eV/Å, ensemble-mean force − label, atoms of all
            structures concatenated in order.
        force_std: (n_atoms_total, 3) eV/Å, raw per-component ensemble std.
        numbers: (n_atoms_total,) int, atomic numbers.
        system_idx: (n_atoms_total,) int, the structure (0..n_struct−1) each atom belongs to.
    """

    energy_error: np.ndarray
    energy_std: np.ndarray
    n_atoms: np.ndarray
    force_error: np.ndarray
    force_std: np.ndarray
    numbers: np.ndarray
    system_idx: np.ndarray

    def __post_init__(self) -> None:
        self.energy_error = np.asarray(self.energy_error, dtype=float).reshape(-1)
        self.energy_std = np.asarray(self.energy_std, dtype=float).reshape(-1)
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64).reshape(-1)
        self.force_error = np.asarray(self.force_error, dtype=float).reshape(-1, 3)
        self.force_std = np.asarray(self.force_std, dtype=float).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.system_idx = np.asarray(self.system_idx, dtype=np.int64).reshape(-1)
        n_s, n_a = len(self.energy_error), len(self.numbers)
        shapes = {
            "energy_std": (len(self.energy_std), n_s),
            "n_atoms": (len(self.n_atoms), n_s),
            "force_error": (len(self.force_error), n_a),
            "force_std": (len(self.force_std), n_a),
            "system_idx": (len(self.system_idx), n_a),
        }
        bad = [
            f"{k} has {got} rows, expected {want}"
            for k, (got, want) in shapes.items()
            if got != want
        ]
        if int(self.n_atoms.sum()) != n_a:
            bad.append(f"n_atoms sums to {int(self.n_atoms.sum())}, expected {n_a}")
        if bad:
            raise ValueError("Residuals: " + "; ".join(bad))

    @property
    def n_structures(self) -> int:
        """Number of structures."""
        return len(self.energy_error)

    @property
    def n_atoms_total(self) -> int:
        """Number of atoms of all structures (``n_atoms`` is the per-structure array)."""
        return len(self.numbers)

    @classmethod
    def from_prediction(cls, pred: Prediction, structures: Sequence[Atoms]) -> Residuals:
        """Residuals of ``pred`` against the labels of ``structures`` (the ones it predicted).

        Uses the raw std fields of ``pred`` (``energy_std``, ``forces_std``), never the
        ``*_cal`` ones, so the result does not depend on a stored calibration.
        """
        structures = list(structures)
        n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
        if len(pred.energy_mean) != len(structures) or len(pred.numbers) != int(n_atoms.sum()):
            raise ValueError(
                f"Residuals.from_prediction: prediction of {len(pred.energy_mean)} structures / "
                f"{len(pred.numbers)} atoms, labels of {len(structures)} / {int(n_atoms.sum())}"
            )
        return cls(
            energy_error=pred.energy_mean - reference_energies(structures),
            energy_std=pred.energy_std,
            n_atoms=n_atoms,
            force_error=pred.forces_mean - reference_forces(structures),
            force_std=pred.forces_std,
            numbers=pred.numbers,
            system_idx=pred.system_idx,
        )

    @classmethod
    def concat(cls, parts: Sequence[Residuals]) -> Residuals:
        """``parts`` one after another; ``system_idx`` of each part is offset by the structures
        before it. No parts give empty residuals.
        """
        parts = list(parts)
        offsets = np.cumsum([0] + [p.n_structures for p in parts])[:-1]

        def cat(name: str, shape: tuple[int, ...]) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            return np.concatenate(arrays) if arrays else np.zeros(shape)

        return cls(
            energy_error=cat("energy_error", (0,)),
            energy_std=cat("energy_std", (0,)),
            n_atoms=cat("n_atoms", (0,)),
            force_error=cat("force_error", (0, 3)),
            force_std=cat("force_std", (0, 3)),
            numbers=cat("numbers", (0,)),
            system_idx=np.concatenate(
                [p.system_idx + off for p, off in zip(parts, offsets, strict=True)] or [np.zeros(0)]
            ),
        )

    def save(self, path: Path) -> None:
        """Write to ``path`` as ``.npz`` (exactly that name), atomically: temp file in the same
        directory, fsync, rename, fsync of the directory.
        """
        fields = {name: getattr(self, name) for name in _RESIDUAL_FIELDS}
        atomic_write(Path(path), lambda handle: np.savez(handle, **fields), binary=True)

    @classmethod
    def load(cls, path: Path) -> Residuals:
        """The residuals :meth:`save` wrote to ``path``."""
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(**{name: data[name] for name in _RESIDUAL_FIELDS})


# ------------------------------------------------------------------------------------ fitting
def _scale(err: np.ndarray, std: np.ndarray) -> tuple[float, str | None]:
    """Variance matching: s = sqrt(Σ err² / Σ std²) over usable values, so that the scaled
    std's RMS equals the RMS error there (RMV = RMSE). Returns (s, None), or (1.0, why not)
    when s cannot be fitted.

    Usable: finite error and finite std > 1e-12 (a zero std scaled by anything stays zero, so it
    says nothing about the scale). Not σ-scaling's sqrt(mean((err/std)²)): see the module
    docstring.
    """
    err, std = np.asarray(err, dtype=float).ravel(), np.asarray(std, dtype=float).ravel()
    finite = np.isfinite(err) & np.isfinite(std)
    usable = finite & (std > _EPS)
    n = int(usable.sum())
    if len(err) == 0:
        return 1.0, "no data"
    if not np.isfinite(err).any():
        return 1.0, "no finite errors"
    if n == 0:
        return 1.0, "all stds are zero" if finite.any() else "no finite stds"
    if n < MIN_VALUES:
        return 1.0, f"too few data ({n} usable values, need {MIN_VALUES})"
    s = math.sqrt(float(np.sum(err[usable] ** 2) / np.sum(std[usable] ** 2)))
    if s == 0:
        return 1.0, "all errors are zero"
    if not math.isfinite(s):
        return 1.0, "the scale overflows"
    return s, None


def _per_element_scales(res: Residuals, min_atoms: int) -> tuple[dict[str, float], list[str]]:
    """Force scales of the elements with ≥ ``min_atoms`` atoms, and why some could not be fitted."""
    scales: dict[str, float] = {}
    reasons: list[str] = []
    for z in np.unique(res.numbers):
        mask = res.numbers == z
        if mask.sum() < min_atoms:
            continue
        symbol = chemical_symbols[int(z)]
        s, why = _scale(res.force_error[mask], res.force_std[mask])
        if why is None:
            scales[symbol] = s
        else:
            reasons.append(f"forces of {symbol}: {why} (uses the global force scale)")
    return scales, reasons


def fit_calibration(
    res: Residuals, *, per_element: bool = True, min_atoms: int = 10
) -> Calibration:
    """Fit energy, global-force and per-element force scales on raw residuals ``res``.

    Args:
        res: raw residuals (uncalibrated std) of the data to fit on.
        per_element: also fit one force scale per element with at least ``min_atoms`` atoms;
            the others use the global force scale.
        min_atoms: fewest atoms of an element for a scale of its own.

    Returns:
        The :class:`Calibration` (``metrics`` empty). A scale that cannot be fitted is 1.0, its
        reason goes into ``uncalibrated`` and a warning is logged.
    """
    e_scale, e_why = _scale(res.energy_error, res.energy_std)
    f_scale, f_why = _scale(res.force_error, res.force_std)
    reasons = [f"{what}: {why}" for what, why in (("energy", e_why), ("forces", f_why)) if why]
    per_el: dict[str, float] = {}
    if per_element:
        per_el, el_reasons = _per_element_scales(res, min_atoms)
        reasons += el_reasons
    uncalibrated = "; ".join(reasons) or None
    if uncalibrated:
        log.warning("calibration: left some scales at 1 or global: %s", uncalibrated)
    return Calibration(
        energy_scale=e_scale,
        force_scale=f_scale,
        force_scale_per_element=per_el,
        n_structures=res.n_structures,
        n_atoms=res.n_atoms_total,
        uncalibrated=uncalibrated,
    )


# ------------------------------------------------------------------------------------ quality
def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
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


def _z_stats(z: np.ndarray, kind: str) -> dict[str, float]:
    """Miscalibration area, mean z² and 68 %/95 % coverage of the finite z-scores ``z``."""
    z = np.asarray(z, dtype=float).ravel()
    z = z[np.isfinite(z)]
    if len(z) == 0:
        nan = float("nan")
        stats = dict.fromkeys(("miscalibration_area", "mean_z2", "coverage_68", "coverage_95"), nan)
    else:
        stats = {
            "miscalibration_area": miscalibration_area(z),
            "mean_z2": float(np.mean(z**2)),
            "coverage_68": float(np.mean(np.abs(z) <= _Z68)),
            "coverage_95": float(np.mean(np.abs(z) <= _Z95)),
        }
    return {f"{k}_{kind}": v for k, v in stats.items()}


def calibration_quality(res: Residuals, cal: Calibration | None) -> dict[str, float]:
    """Ranking and calibration quality of the std of ``res``, scaled by ``cal`` (None: raw).

    z-scores are error / max(std, 1e-12) per force component and per structure energy;
    non-finite ones (a failed prediction) are left out.

    Returns:
        spearman_atom (per-atom force std magnitude vs force error norm), spearman_struct
        (energy std vs |energy error|), miscalibration_area_forces, miscalibration_area_energy,
        mean_z2_forces, mean_z2_energy (1 when calibrated), coverage_68_forces,
        coverage_95_forces, coverage_68_energy, coverage_95_energy (nominal 0.68 and 0.95),
        n_structures, n_atoms. NaN where there is nothing to measure.
    """
    e_std, f_std = res.energy_std, res.force_std
    if cal is not None:
        e_std = e_std * cal.energy_scale
        f_std = f_std * cal.force_scales_for(res.numbers)[:, None]
    f_std_atom = np.sqrt(np.sum(f_std**2, axis=1))
    f_err_norm = np.linalg.norm(res.force_error, axis=1)
    return {
        "spearman_atom": _spearman(f_std_atom, f_err_norm),
        "spearman_struct": _spearman(e_std, np.abs(res.energy_error)),
        **_z_stats(res.force_error / np.maximum(f_std, _EPS), "forces"),
        **_z_stats(res.energy_error / np.maximum(e_std, _EPS), "energy"),
        "n_structures": res.n_structures,
        "n_atoms": res.n_atoms_total,
    }
