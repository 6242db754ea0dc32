"""Every error metric chemgap reports, each defined once (units: eV, eV/atom, eV/Å).

Names say what is averaged over what, so a table can say which metric it shows:

- ``energy_mae_per_atom`` / ``energy_rmse_per_atom``: mean / root-mean-square over structures
  of (E_pred − E_ref) / n_atoms, eV/atom;
- ``force_mae`` / ``force_rmse``: mean / root-mean-square over every atom and Cartesian
  component of F_pred − F_ref, eV/Å (the convention of MACE's and nequip's logs);
- ``force_error_norm`` of an atom: |F_pred − F_ref|, the Euclidean norm of its force-error
  vector, eV/Å; ``force_error_norm_mean`` is its mean over atoms. The failure-region statistics
  use it, because a region is a set of atoms;
- per-element and per-group breakdowns (:func:`breakdown`) are the same means restricted to
  the atoms (or structures) of each group.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from chemgap.common.keys import reference_energies, reference_forces

__all__ = [
    "ErrorReport",
    "HasMeanPrediction",
    "breakdown",
    "energy_errors_per_atom",
    "error_report",
    "force_error_norms",
    "mae",
    "per_element_force_mae",
    "report_from_errors",
    "rmse",
    "score",
]


def mae(errors: np.ndarray) -> float:
    """Mean absolute value of ``errors`` (any shape); NaN for an empty array."""
    e = np.asarray(errors, dtype=float)
    return float(np.mean(np.abs(e))) if e.size else float("nan")


def rmse(errors: np.ndarray) -> float:
    """Root of the mean square of ``errors`` (any shape); NaN for an empty array."""
    e = np.asarray(errors, dtype=float)
    return float(np.sqrt(np.mean(e**2))) if e.size else float("nan")


def energy_errors_per_atom(
    pred_energy: np.ndarray, ref_energy: np.ndarray, n_atoms: np.ndarray
) -> np.ndarray:
    """(n_struct,) signed (E_pred − E_ref) / n_atoms, eV/atom, from total energies in eV."""
    return (np.asarray(pred_energy, float) - np.asarray(ref_energy, float)) / np.asarray(n_atoms)


def force_error_norms(pred_forces: np.ndarray, ref_forces: np.ndarray) -> np.ndarray:
    """(n_atoms,) |F_pred − F_ref| per atom, eV/Å, from (n_atoms, 3) forces."""
    return np.linalg.norm(np.asarray(pred_forces, float) - np.asarray(ref_forces, float), axis=1)


def breakdown(values: np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> dict[Any, float]:
    """Mean of ``values`` per group label (``groups`` has one label per value), sorted by label."""
    v = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    return {k.item() if hasattr(k, "item") else k: float(v[g == k].mean()) for k in np.unique(g)}


def per_element_force_mae(
    numbers: np.ndarray, pred_forces: np.ndarray, ref_forces: np.ndarray
) -> dict[str, float]:
    """Force MAE (per component, eV/Å) of each element's atoms, by chemical symbol."""
    comp = np.abs(np.asarray(pred_forces, float) - np.asarray(ref_forces, float)).mean(axis=1)
    by_z = breakdown(comp, np.asarray(numbers, dtype=int))
    return {chemical_symbols[int(z)]: v for z, v in by_z.items()}


@dataclass(frozen=True, kw_only=True)
class ErrorReport:
    """Errors of predictions against labels (see the module docstring for each definition).

    Attributes:
        n_structures, n_atoms: how much was scored.
        energy_mae_per_atom, energy_rmse_per_atom: eV/atom.
        force_mae, force_rmse: per Cartesian component, eV/Å.
        force_error_norm_mean: mean over atoms of |F_pred − F_ref|, eV/Å.
        force_mae_per_element: symbol -> force MAE (per component) of that element's atoms.
    """

    n_structures: int
    n_atoms: int
    energy_mae_per_atom: float
    energy_rmse_per_atom: float
    force_mae: float
    force_rmse: float
    force_error_norm_mean: float
    force_mae_per_element: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def error_report(
    *,
    pred_energy: np.ndarray,
    ref_energy: np.ndarray,
    n_atoms: np.ndarray,
    pred_forces: np.ndarray,
    ref_forces: np.ndarray,
    numbers: np.ndarray,
) -> ErrorReport:
    """All error metrics of one prediction against its labels.

    Args:
        pred_energy: (n_struct,) predicted total energies, eV.
        ref_energy: (n_struct,) labelled total energies, eV.
        n_atoms: (n_struct,) atoms per structure.
        pred_forces: (n_atoms_total, 3) predicted forces, eV/Å, structures in order.
        ref_forces: (n_atoms_total, 3) labelled forces, eV/Å.
        numbers: (n_atoms_total,) atomic numbers, for the per-element breakdown.
    """
    return report_from_errors(
        energy_error=np.asarray(pred_energy, float) - np.asarray(ref_energy, float),
        n_atoms=n_atoms,
        force_error=np.asarray(pred_forces, float) - np.asarray(ref_forces, float),
        numbers=numbers,
    )


def report_from_errors(
    *,
    energy_error: np.ndarray,
    n_atoms: np.ndarray,
    force_error: np.ndarray,
    numbers: np.ndarray,
) -> ErrorReport:
    """All error metrics from signed errors (prediction − label) already computed.

    Args:
        energy_error: (n_struct,) total-energy errors, eV.
        n_atoms: (n_struct,) atoms per structure.
        force_error: (n_atoms_total, 3) force errors, eV/Å, structures in order.
        numbers: (n_atoms_total,) atomic numbers, for the per-element breakdown.
    """
    de = np.asarray(energy_error, float) / np.asarray(n_atoms)
    df = np.asarray(force_error, float).reshape(-1, 3)
    norms = np.linalg.norm(df, axis=1)
    comp = np.abs(df).mean(axis=1)
    by_z = breakdown(comp, np.asarray(numbers, dtype=int)) if len(df) else {}
    return ErrorReport(
        n_structures=len(de),
        n_atoms=len(df),
        energy_mae_per_atom=mae(de),
        energy_rmse_per_atom=rmse(de),
        force_mae=mae(df),
        force_rmse=rmse(df),
        force_error_norm_mean=float(norms.mean()) if len(df) else float("nan"),
        force_mae_per_element={chemical_symbols[int(z)]: v for z, v in by_z.items()},
    )


class HasMeanPrediction(Protocol):
    """What :func:`score` reads of a prediction (``chemgap.models.Prediction`` has it)."""

    energy_mean: np.ndarray  # (n_struct,) eV
    forces_mean: np.ndarray  # (n_atoms_total, 3) eV/Å
    numbers: np.ndarray  # (n_atoms_total,)


def score(prediction: HasMeanPrediction, structures: Sequence[Atoms]) -> ErrorReport:
    """:func:`error_report` of a model's mean prediction of ``structures`` against their labels."""
    return error_report(
        pred_energy=prediction.energy_mean,
        ref_energy=reference_energies(structures),
        n_atoms=np.array([len(a) for a in structures]),
        pred_forces=prediction.forces_mean,
        ref_forces=reference_forces(structures),
        numbers=prediction.numbers,
    )
