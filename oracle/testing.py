"""Contract checks every oracle must pass (DESIGN style rule 8), reusable by tests of any backend.

:func:`check_oracle_contract` evaluates a calculator on a structure and checks that

- forces equal minus the central finite-difference gradient of the energy;
- the energy is invariant under rigid rotation, translation and atom permutation, and the forces
  rotate and permute with the atoms;
- for cells periodic in all three directions, the stress equals the finite-strain derivative
  ``σ_ij = (1/V) ∂E/∂ε_ij`` (ASE's sign convention: positive under tension).

A violation raises ``AssertionError`` naming the check and the size of the deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(kw_only=True)
class ContractReport:
    """Largest deviations found, in the units of each quantity.

    Attributes:
        force_fd_error: max |F + dE/dx| over checked components, eV/Å.
        rotation_energy_error, translation_energy_error, permutation_energy_error: eV.
        rotation_force_error, permutation_force_error: max component error, eV/Å.
        stress_fd_error: max |σ - (1/V) dE/dε| over Voigt components, eV/Å³ (None if not periodic).
    """

    force_fd_error: float
    rotation_energy_error: float
    rotation_force_error: float
    translation_energy_error: float
    permutation_energy_error: float
    permutation_force_error: float
    stress_fd_error: float | None


def _energy_forces(calc: BaseCalculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    work = atoms.copy()
    if hasattr(calc, "reset"):
        calc.reset()
    work.calc = calc
    return float(work.get_potential_energy()), np.array(work.get_forces())


def _energy(calc: BaseCalculator, atoms: Atoms) -> float:
    work = atoms.copy()
    if hasattr(calc, "reset"):
        calc.reset()
    work.calc = calc
    return float(work.get_potential_energy())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _fail(what: str, error: float, tolerance: float) -> None:
    if not error <= tolerance:  # also catches NaN
        raise AssertionError(f"{what}: deviation {error:.3g} exceeds tolerance {tolerance:.3g}")


def check_oracle_contract(
    calc: BaseCalculator,
    atoms: Atoms,
    *,
    rng: np.random.Generator,
    fd_step: float = 1e-3,
    max_fd_components: int = 12,
    force_tol: float = 1e-3,
    energy_tol: float = 1e-6,
    stress_step: float = 1e-4,
    stress_tol: float = 1e-5,
    stress_rtol: float = 0.0,
    check_stress: bool | None = None,
) -> ContractReport:
    """Check ``calc`` on ``atoms`` against the contract; raise ``AssertionError`` on a violation.

    Args:
        calc: the calculator under test (reused for every evaluation).
        atoms: a small structure, ideally rattled off symmetry so forces are non-zero.
        rng: seeded generator choosing components, the rotation, shift and permutation.
        fd_step: displacement of the central finite difference, Å.
        max_fd_components: at most this many Cartesian components are differentiated.
        force_tol: tolerance on forces, eV/Å (finite differences and equivariance).
        energy_tol: tolerance on invariance of the energy, eV (scaled by atom count).
        stress_step: strain of the central finite difference (dimensionless).
        stress_tol: tolerance on stress, eV/Å³ ...
        stress_rtol: ... plus this fraction of the largest stress component (for backends with
            cutoff-smoothing noise, such as D3's coordination numbers).
        check_stress: check stress (default: when the cell is periodic in all three directions).
    """
    energy, forces = _energy_forces(calc, atoms)
    n = len(atoms)
    if not np.isfinite(energy) or forces.shape != (n, 3):
        raise AssertionError(f"bad reference evaluation: energy {energy}, forces {forces.shape}")

    # Forces: F = -dE/dx by central differences.
    flat = rng.permutation(3 * n)[:max_fd_components]
    fd_error = 0.0
    for k in flat:
        i, c = divmod(int(k), 3)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, c] += fd_step
        minus.positions[i, c] -= fd_step
        numeric = -(_energy(calc, plus) - _energy(calc, minus)) / (2 * fd_step)
        fd_error = max(fd_error, abs(numeric - forces[i, c]))
    _fail("forces vs -dE/dx (finite differences)", fd_error, force_tol)

    energy_scale = energy_tol * max(1, n)
    # Rotation: energy invariant, forces rotate (cell rotates with a periodic structure).
    rotation = _random_rotation(rng)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.cell.rank > 0:
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    e_rot, f_rot = _energy_forces(calc, rotated)
    rot_e = abs(e_rot - energy)
    rot_f = float(np.max(np.abs(f_rot - forces @ rotation.T)))
    _fail("energy under rotation", rot_e, energy_scale)
    _fail("forces under rotation", rot_f, force_tol)

    # Translation: energy invariant.
    shifted = atoms.copy()
    shifted.positions += rng.normal(scale=1.0, size=3)
    trans_e = abs(_energy(calc, shifted) - energy)
    _fail("energy under translation", trans_e, energy_scale)

    # Permutation: energy invariant, forces permute with the atoms.
    order = rng.permutation(n)
    e_perm, f_perm = _energy_forces(calc, atoms[order])
    perm_e = abs(e_perm - energy)
    perm_f = float(np.max(np.abs(f_perm - forces[order])))
    _fail("energy under permutation", perm_e, energy_scale)
    _fail("forces under permutation", perm_f, force_tol)

    stress_error = None
    if check_stress if check_stress is not None else bool(atoms.pbc.all()):
        work = atoms.copy()
        if hasattr(calc, "reset"):
            calc.reset()
        work.calc = calc
        stress = np.array(work.get_stress(voigt=True))
        volume = atoms.get_volume()
        numeric = np.zeros(6)
        for v, (a, b) in enumerate(VOIGT):
            values = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * stress_step / (1 if a == b else 2)
                strain[b, a] += 0.0 if a == b else sign * stress_step / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                values.append(_energy(calc, strained))
            numeric[v] = (values[0] - values[1]) / (2 * stress_step) / volume
        stress_error = float(np.max(np.abs(numeric - stress)))
        tolerance = stress_tol + stress_rtol * float(np.max(np.abs(stress)))
        _fail("stress vs (1/V) dE/dstrain (finite strain)", stress_error, tolerance)

    return ContractReport(
        force_fd_error=fd_error,
        rotation_energy_error=rot_e,
        rotation_force_error=rot_f,
        translation_energy_error=trans_e,
        permutation_energy_error=perm_e,
        permutation_force_error=perm_f,
        stress_fd_error=stress_error,
    )
