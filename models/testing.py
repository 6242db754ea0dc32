"""Contract checks every model kind must pass (DESIGN style rules 8 and 11), reusable by tests.

:func:`check_model_contract` takes any :class:`~chemgap.models.contract.EnsembleModel` and a few
structures and checks, for the ensemble-mean prediction and every member:

- it satisfies the protocol (the attributes and methods the agent uses);
- forces are minus the central finite-difference gradient of the energy;
- energies are invariant under a rigid rotation (of positions and cell) and under a
  permutation of the atoms, and forces rotate and permute with the atoms; the uncertainty
  (per-atom force std) is invariant too;
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

__all__ = ["ModelContractReport", "Tolerances", "check_model_contract", "random_rotation"]


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """Largest deviations accepted (eV, eV/Å); defaults suit float64 models."""

    fd_step: float = 1e-4
    force_fd: float = 1e-5
    energy: float = 1e-8
    force: float = 1e-8

    @classmethod
    def for_dtype(cls, dtype: str) -> Tolerances:
        """Defaults for ``"float64"``; float32 round-off allows ~1e-4 eV, ~1e-2 eV/Å by FD."""
        if dtype == "float64":
            return cls()
        return cls(fd_step=1e-2, force_fd=2e-2, energy=2e-4, force=2e-4)


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
        seed: seeds the rotation and the permutation.

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
    batch_e, batch_f = _batch_errors(model, structures)
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
    )
