"""Elastic probe: the 6×6 Voigt stiffness C_ij of the crystal from finite strains and stresses.

Each row (member, mean, oracle) works at its own relaxed lattice (:func:`~.relax.relax_lattice`:
DP-GEN autotest's "relax, then elastic"), where its stress vanishes: at another row's lattice a
potential is pre-stressed and its finite-difference constants carry terms in the pressure
(D. C. Wallace, *Thermodynamics of Crystals*, 1972, on stress-strain coefficients under load).
Each Voigt strain component ε_j (engineering shears for j ≥ 4) is applied as ±``strain`` to the
row's unit cell (atoms at fixed fractional positions: clamped-ion constants, exact for monatomic
cubic crystals) and C_ij = (σ_i(+ε_j) − σ_i(−ε_j)) / 2ε (ASE's stress sign: σ = (1/V) ∂E/∂ε),
symmetrised, in GPa — the stress–strain route of DP-GEN's autotest ``elastic`` and of
Le Page & Saxe, Phys. Rev. B 65, 104104 (2002). Cubic crystals (C11 = C22 = C33,
C12 = C13 = C23, C44 = C55 = C66 in the oracle's matrix) report C11, C12 and C44 (averaged over
the equivalent entries); every crystal reports the mean absolute error of the matrix (ML-PEG's
elasticity-tensor MAE) and the Voigt bulk and shear moduli
B_V = (C11 + C22 + C33 + 2(C12 + C13 + C23)) / 9,
G_V = (C11 + C22 + C33 − C12 − C13 − C23 + 3(C44 + C55 + C66)) / 15 (W. Voigt, 1928).
The residual stress at each row's lattice, (σ(+ε) + σ(−ε))/2 averaged over the strains, is
noted where it exceeds ``RESIDUAL_GPA`` (a non-cubic crystal, whose cell shape the isotropic
relaxation keeps). A row whose lattice search found no minimum (none within its limits) has
NaN constants, with a note: a NaN scores 0. Candidates are the oracle's strained cells.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.units import GPa

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.ELASTIC
RESIDUAL_GPA = 0.1  # a row's residual stress above this is noted, GPa
_PAIRS = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]  # Voigt index -> tensor indices
# the equivalent Voigt entries of each independent cubic constant
_CUBIC = {
    "C11": [(0, 0), (1, 1), (2, 2)],
    "C12": [(0, 1), (0, 2), (1, 2)],
    "C44": [(3, 3), (4, 4), (5, 5)],
}


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.crystal is not None else "needs a periodic crystal"


def strained(cell: Atoms, j: int, eps: float) -> Atoms:
    """``cell`` under Voigt strain component ``j`` of size ``eps`` (engineering shear for
    j ≥ 3: the tensor entries are eps/2), atoms moved with the cell.
    """
    e = np.zeros((3, 3))
    a, b = _PAIRS[j]
    if a == b:
        e[a, a] = eps
    else:
        e[a, b] = e[b, a] = eps / 2
    out = cell.copy()
    out.set_cell(cell.cell[:] @ (np.eye(3) + e), scale_atoms=True)
    return out


def voigt_moduli(c: np.ndarray) -> tuple[float, float]:
    """Voigt bulk and shear moduli of a 6×6 stiffness matrix (same unit as ``c``)."""
    b = (c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[0, 2] + c[1, 2])) / 9
    g = (
        c[0, 0]
        + c[1, 1]
        + c[2, 2]
        - (c[0, 1] + c[0, 2] + c[1, 2])
        + 3 * (c[3, 3] + c[4, 4] + c[5, 5])
    ) / 15
    return float(b), float(g)


def is_cubic(c: np.ndarray, rtol: float = 1e-3) -> bool:
    """Whether ``c`` has the cubic pattern (3 independent constants) to ``rtol`` of its max."""
    tol = rtol * np.abs(c).max()
    groups = [
        [c[0, 0], c[1, 1], c[2, 2]],
        [c[0, 1], c[0, 2], c[1, 2]],
        [c[3, 3], c[4, 4], c[5, 5]],
    ]
    mask = np.zeros((6, 6), dtype=bool)
    mask[:3, :3] = True
    mask[[3, 4, 5], [3, 4, 5]] = True
    return all(np.ptp(g) <= tol for g in groups) and bool(np.abs(c[~mask]).max() <= tol)


def stiffness(stress: np.ndarray, eps: float) -> np.ndarray:
    """C_ij (GPa), symmetrised, from stresses (R, 12, 6) eV/Å³ of the cells strained by
    ``+eps`` and ``−eps`` along each Voigt component in turn (:func:`strained`): (R, 6, 6).
    """
    sig = stress.reshape(len(stress), 6, 2, 6)  # (R, j, ±, i)
    c = (sig[:, :, 0, :] - sig[:, :, 1, :]).transpose(0, 2, 1) / (2 * eps) / GPa  # (R, i, j)
    return 0.5 * (c + c.transpose(0, 2, 1))


def run(ctx: ProbeContext) -> ProbeResult:
    """C_ij per row from 12 strained cells at its own lattice; cubic constants, matrix MAE,
    Voigt moduli.
    """
    pot = ctx.pot
    cell = ctx.system.crystal
    eps = ctx.cfg.elastic.strain
    lattice = ctx.lattice()
    structures = [
        [strained(lattice.row_cell(row), j, s * eps) for j in range(6) for s in (1.0, -1.0)]
        for row in range(pot.n_rows)
    ]
    own, on_oracle = pot.own_points(structures, stress=True)
    c = stiffness(own.stress, eps)  # (R, 6, 6) GPa
    c[~lattice.found] = np.nan  # no equilibrium lattice: constants of a loaded cell, not given
    residual = own.stress.reshape(pot.n_rows, 6, 2, 6).mean(axis=(1, 2)) / GPa  # (R, 6)
    k = pot.k
    ref = c[k + 1]
    metrics = []
    if is_cubic(ref):
        for label, entries in _CUBIC.items():
            rows, cols = zip(*entries, strict=True)
            values = c[:, list(rows), list(cols)].mean(axis=1)
            metrics.append(ctx.metric(NAME, label, values, unit="GPa"))
    mae = np.abs(c - ref).mean(axis=(1, 2))
    moduli = np.array([voigt_moduli(m) for m in c])
    metrics += [
        ctx.metric(NAME, "Cij_mae", mae, unit="GPa", judge=Judge.VALUE),
        ctx.metric(NAME, "B_voigt", moduli[:, 0], unit="GPa"),
        ctx.metric(NAME, "G_voigt", moduli[:, 1], unit="GPa"),
    ]
    result = ProbeResult(name=NAME, metrics=metrics)
    result.notes += ctx.lattice_notes()
    for row in range(pot.n_rows):
        worst = float(np.abs(residual[row]).max())
        if not lattice.found[row]:
            result.notes.append(f"{pot.row_name(row)}: no C_ij (no equilibrium lattice)")
        elif not worst <= RESIDUAL_GPA:
            result.notes.append(
                f"{pot.row_name(row)}: residual stress {worst:.3g} GPa at its lattice "
                "(the constants carry it)"
            )
    result.payload = {
        "kind": "matrices",
        "unit": "GPa",
        "oracle": np.round(ref, 3).tolist(),
        "model": np.round(c[k], 3).tolist(),
        "members": [np.round(m, 3).tolist() for m in c[:k]],
    }
    stress_gpa = on_oracle.stress / GPa  # (R, 12, 6) every row on the oracle's cells
    result.candidates = pick_candidates(
        structures[k + 1],
        stress_gpa[:k].std(axis=0).max(axis=1),
        np.abs(stress_gpa[k] - stress_gpa[k + 1]).max(axis=1),
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    a_model, a_oracle = (float(lattice.scale[r]) for r in (k, k + 1))
    result.notes.append(
        f"clamped ions, ±{eps:g} strains of the {len(cell)}-atom cell at each row's own lattice "
        f"(model ×{a_model:.4f}, oracle ×{a_oracle:.4f} the system's)"
    )
    return result
