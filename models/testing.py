"""Contract checks every model kind must pass (docs/architecture.md, "The model contract").

Reusable by tests.

:func:`check_model_contract` takes any :class:`~chemgap.models.contract.EnsembleModel` and a few
structures and checks, for the ensemble-mean prediction and every member:

- it satisfies the protocol (the attributes and methods the agent uses);
- forces are minus the central finite-difference gradient of the energy (and, with
  ``stress=True`` on a periodic structure, the stress is the finite-difference strain
  derivative of the energy over the volume);
- energies and forces are invariant under a rigid translation; energies are invariant under a
  rigid rotation (of positions and cell) and under a permutation of the atoms, and forces rotate
  and permute with the atoms; the uncertainty (per-atom force std) is invariant too;
- learned charges, when the model predicts them, sum to each structure's total charge
  (``atoms.info["charge"]``, default 0) and are invariant under rotation and permutation;
- a batch of structures predicts what each structure predicts alone;
- a saved and re-loaded model predicts exactly the same (when ``load`` is given).

Finite differences need float64 to be sharp: pass a float64 model, or loosen
:class:`Tolerances`. A violation raises ``AssertionError`` naming the check and its size, as
:mod:`chemgap.oracle.testing` does for oracles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .contract import EnsembleModel

__all__ = [
    "ModelContractReport",
    "Tolerances",
    "check_model_contract",
    "random_rotation",
    "strain",
]


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """Largest deviations accepted (eV, eV/Å, eV/Å³, e); defaults suit float64 models.

    ``translation`` is looser than ``energy``: a translated periodic structure is wrapped back
    into its cell, which changes positions by lattice vectors and the sums by rounding.
    ``stress_fd_step`` (a strain) is small because D3 dispersion has s-dftd3's hard cutoffs:
    its energy jumps by ~1e-7 eV when a pair crosses 60 Bohr, and a strain of 1e-6 moves
    (almost always) no pair across, where 1e-4 moves several.
    """

    fd_step: float = 1e-4
    force_fd: float = 1e-5
    stress_fd_step: float = 1e-6
    stress_fd: float = 1e-6
    energy: float = 1e-8
    force: float = 1e-8
    translation: float = 1e-7
    charge: float = 1e-8

    @classmethod
    def for_dtype(cls, dtype: str) -> Tolerances:
        """Defaults for ``"float64"``; float32 round-off allows ~1e-4 eV, ~1e-2 eV/Å by FD."""
        if dtype == "float64":
            return cls()
        return cls(
            fd_step=1e-2,
            force_fd=2e-2,
            stress_fd_step=1e-3,
            stress_fd=2e-3,
            energy=2e-4,
            force=2e-4,
            translation=2e-3,
            charge=1e-5,
        )


@dataclass(kw_only=True)
class ModelContractReport:
    """Largest deviations found (eV for energies, eV/Å for forces and stds)."""

    force_fd_error: float
    rotation_energy_error: float
    rotation_force_error: float
    rotation_std_error: float
    permutation_energy_error: float
    permutation_force_error: float
    batch_energy_error: float
    batch_force_error: float
    reload_error: float | None
    translation_energy_error: float = 0.0
    translation_force_error: float = 0.0
    stress_fd_error: float | None = None
    charge_sum_error: float | None = None
    charge_invariance_error: float | None = None


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) proper rotation matrix drawn uniformly (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _check(name: str, error: float, tol: float) -> float:
    if not error <= tol:
        raise AssertionError(f"model contract: {name} off by {error:.3g} (tolerance {tol:.3g})")
    return error


def _fd_error(model: EnsembleModel, atoms: Atoms, h: float) -> float:
    """Max |F_k + dE_k/dx| over members k, atoms and components (central differences)."""
    forces = model.predict([atoms]).forces_members  # (K, n, 3)
    displaced = []
    for i in range(len(atoms)):
        for c in range(3):
            for sign in (1.0, -1.0):
                a = atoms.copy()
                a.positions[i, c] += sign * h
                displaced.append(a)
    e = model.predict(displaced).energy_members.reshape(forces.shape[0], len(atoms), 3, 2)
    fd = -(e[..., 0] - e[..., 1]) / (2 * h)
    if np.abs(forces).max() < 1e-6:
        raise AssertionError("model contract: forces are all ~0, the FD check would be vacuous")
    return float(np.abs(forces - fd).max())


def _rotation_errors(
    model: EnsembleModel, atoms: Atoms, rng: np.random.Generator
) -> tuple[float, float, float]:
    q = random_rotation(rng)
    rot = atoms.copy()
    rot.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    rot.positions = atoms.positions @ q.T
    a, b = model.predict([atoms]), model.predict([rot])
    return (
        float(np.abs(b.energy_members - a.energy_members).max()),
        float(np.abs(b.forces_members - a.forces_members @ q.T).max()),
        float(np.abs(b.force_std_atom - a.force_std_atom).max()),
    )


def _permutation_errors(
    model: EnsembleModel, atoms: Atoms, rng: np.random.Generator
) -> tuple[float, float]:
    perm = rng.permutation(len(atoms))
    a, b = model.predict([atoms]), model.predict([atoms[perm]])
    return (
        float(np.abs(b.energy_members - a.energy_members).max()),
        float(np.abs(b.forces_members - a.forces_members[:, perm]).max()),
    )


def _translation_errors(
    model: EnsembleModel, atoms: Atoms, rng: np.random.Generator
) -> tuple[float, float]:
    moved = atoms.copy()
    moved.positions = atoms.positions + rng.normal(scale=2.0, size=3)
    if any(atoms.pbc):
        moved.wrap()
    a, b = model.predict([atoms]), model.predict([moved])
    return (
        float(np.abs(b.energy_members - a.energy_members).max()),
        float(np.abs(b.forces_members - a.forces_members).max()),
    )


def strain(atoms: Atoms, component: int, h: float) -> Atoms:
    """``atoms`` (positions and cell) deformed by ``I + h·E``, E the symmetric unit strain of
    Voigt ``component`` (0..5: xx, yy, zz, yz, xz, xy; shear split over both entries).
    """
    a, b = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)][component]
    eps = np.zeros((3, 3))
    eps[a, b] += 0.5 * h
    eps[b, a] += 0.5 * h
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=False)
    out.positions = atoms.positions @ (np.eye(3) + eps)
    return out


def _stress_fd_error(model: EnsembleModel, atoms: Atoms, h: float) -> float:
    """Max |σ − (1/V) dE/dε| over Voigt components, eV/Å³ (ensemble mean, central differences)."""
    stress = model.predict([atoms], compute_stress=True).stress_mean[0]  # (6,) ASE sign
    strained = [strain(atoms, c, sign * h) for c in range(6) for sign in (1.0, -1.0)]
    e = model.predict(strained).energy_mean.reshape(6, 2)
    fd = (e[:, 0] - e[:, 1]) / (2 * h * atoms.get_volume())
    return float(np.abs(stress - fd).max())


def _charge_errors(
    model: EnsembleModel, structures: Sequence[Atoms], rng: np.random.Generator
) -> tuple[float | None, float | None]:
    """Largest |Σ q − Q| over structures and largest change of the charges under a rotation and
    a permutation of the first structure, e; (None, None) when no charges are predicted.
    """
    pred = model.predict(structures)
    if pred.charges_mean is None:
        return None, None
    sums = np.bincount(pred.system_idx, weights=pred.charges_mean, minlength=len(structures))
    total = np.array([float(a.info.get("charge", 0.0)) for a in structures])
    atoms = structures[0]
    q = random_rotation(rng)
    rot = atoms.copy()
    rot.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    rot.positions = atoms.positions @ q.T
    perm = rng.permutation(len(atoms))
    ref = model.predict([atoms]).charges_mean
    inv = max(
        np.abs(model.predict([rot]).charges_mean - ref).max(),
        np.abs(model.predict([atoms[perm]]).charges_mean - ref[perm]).max(),
    )
    return float(np.abs(sums - total).max()), float(inv)


def _batch_errors(model: EnsembleModel, structures: Sequence[Atoms]) -> tuple[float, float]:
    together = model.predict(structures)
    e_err = f_err = 0.0
    for i, atoms in enumerate(structures):
        alone = model.predict([atoms])
        e_err = max(
            e_err, float(np.abs(together.energy_members[:, i] - alone.energy_members[:, 0]).max())
        )
        sl = together.per_structure(i)
        f_err = max(
            f_err, float(np.abs(together.forces_members[:, sl] - alone.forces_members).max())
        )
    return e_err, f_err


def check_model_contract(
    model: EnsembleModel,
    structures: Sequence[Atoms],
    *,
    tolerances: Tolerances | None = None,
    load: Callable[[Path], EnsembleModel] | None = None,
    save_dir: Path | None = None,
    seed: int = 0,
    stress: bool = False,
) -> ModelContractReport:
    """Check ``model`` against the contract on ``structures`` (the first one for the
    per-structure checks, all of them for batching; use small ones: the finite-difference check
    costs 6 n_atoms predictions).

    Args:
        model: any :class:`EnsembleModel`.
        structures: at least two structures of the model's elements.
        tolerances: limits (default :meth:`Tolerances.for_dtype` of the model).
        load: the kind's loader (e.g. ``Ensemble.load``); with ``save_dir``, checks that a
            saved and re-loaded model predicts the same to the last bit.
        save_dir: an empty directory to save into for the reload check.
        seed: seeds the rotation, the permutation and the translation.
        stress: also check the stress against finite strains of the first periodic structure.

    Returns:
        The largest deviation of each check; raises ``AssertionError`` on the first violation.
    """
    if not isinstance(model, EnsembleModel):
        raise AssertionError(f"model contract: {type(model).__name__} lacks EnsembleModel members")
    if len(structures) < 2:
        raise AssertionError("model contract: needs at least two structures to check batching")
    tol = tolerances or Tolerances.for_dtype(model.dtype)
    rng = np.random.default_rng(seed)
    atoms = structures[0]
    fd = _check("forces vs -dE/dx", _fd_error(model, atoms, tol.fd_step), tol.force_fd)
    rot_e, rot_f, rot_s = _rotation_errors(model, atoms, rng)
    perm_e, perm_f = _permutation_errors(model, atoms, rng)
    trans_e, trans_f = _translation_errors(model, atoms, rng)
    batch_e, batch_f = _batch_errors(model, structures)
    stress_err = None
    periodic = [a for a in structures if all(a.pbc)]
    if stress and periodic:
        stress_err = _check(
            "stress vs dE/dε / V",
            _stress_fd_error(model, periodic[0], tol.stress_fd_step),
            tol.stress_fd,
        )
    q_sum, q_inv = _charge_errors(model, structures, rng)
    if q_sum is not None:
        _check("charges vs total charge", q_sum, tol.charge)
        _check("charges under rotation and permutation", q_inv, tol.charge)
    reload = None
    if load is not None and save_dir is not None:
        model.save(save_dir)
        a, b = model.predict(structures), load(save_dir).predict(structures)
        reload = float(
            max(
                np.abs(a.energy_members - b.energy_members).max(),
                np.abs(a.forces_members - b.forces_members).max(),
            )
        )
        _check("reloaded prediction", reload, 0.0)
    return ModelContractReport(
        force_fd_error=fd,
        rotation_energy_error=_check("energy under rotation", rot_e, tol.energy),
        rotation_force_error=_check("forces under rotation", rot_f, tol.force),
        rotation_std_error=_check("force std under rotation", rot_s, tol.force),
        permutation_energy_error=_check("energy under permutation", perm_e, tol.energy),
        permutation_force_error=_check("forces under permutation", perm_f, tol.force),
        batch_energy_error=_check("batched vs single energy", batch_e, tol.energy),
        batch_force_error=_check("batched vs single forces", batch_f, tol.force),
        reload_error=reload,
        translation_energy_error=_check("energy under translation", trans_e, tol.translation),
        translation_force_error=_check("forces under translation", trans_f, tol.translation),
        stress_fd_error=stress_err,
        charge_sum_error=q_sum,
        charge_invariance_error=q_inv,
    )
