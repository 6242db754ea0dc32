"""Elastic probe: the 6×6 Voigt stiffness C_ij of the crystal from finite strains and stresses.

Each Voigt strain component ε_j (engineering shears for j ≥ 4) is applied as ±``strain`` to the
unit cell (atoms at fixed fractional positions: clamped-ion constants, exact for monatomic
cubic crystals) and C_ij = (σ_i(+ε_j) − σ_i(−ε_j)) / 2ε (ASE's stress sign: σ = (1/V) ∂E/∂ε),
symmetrised, in GPa — the stress–strain route of DP-GEN's autotest ``elastic`` and of
Le Page & Saxe, Phys. Rev. B 65, 104104 (2002). Cubic crystals (C11 = C22 = C33,
C12 = C13 = C23, C44 = C55 = C66 in the oracle's matrix) report C11, C12 and C44 (averaged over
the equivalent entries); every crystal reports the mean absolute error of the matrix (ML-PEG's
elasticity-tensor MAE) and the Voigt bulk and shear moduli
B_V = (C11 + C22 + C33 + 2(C12 + C13 + C23)) / 9,
G_V = (C11 + C22 + C33 − C12 − C13 − C23 + 3(C44 + C55 + C66)) / 15 (W. Voigt, 1928).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.units import GPa

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.ELASTIC
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


def run(ctx: ProbeContext) -> ProbeResult:
    """C_ij per row from 12 strained cells; cubic constants, matrix MAE, Voigt moduli."""
    cell = ctx.system.crystal
    eps = ctx.cfg.elastic.strain
    structures = [strained(cell, j, s * eps) for j in range(6) for s in (1.0, -1.0)]
    sp = ctx.pot.single_points(structures, stress=True)
    sig = sp.stress.reshape(ctx.pot.n_rows, 6, 2, 6)  # (R, j, ±, i)
    c = (sig[:, :, 0, :] - sig[:, :, 1, :]).transpose(0, 2, 1) / (2 * eps) / GPa  # (R, i, j)
    c = 0.5 * (c + c.transpose(0, 2, 1))
    k = ctx.pot.k
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
    result.payload = {
        "kind": "matrices",
        "unit": "GPa",
        "oracle": np.round(ref, 3).tolist(),
        "model": np.round(c[k], 3).tolist(),
        "members": [np.round(m, 3).tolist() for m in c[:k]],
    }
    stress_gpa = sp.stress / GPa  # (R, 12, 6)
    result.candidates = pick_candidates(
        structures,
        stress_gpa[:k].std(axis=0).max(axis=1),
        np.abs(stress_gpa[k] - stress_gpa[k + 1]).max(axis=1),
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(f"clamped ions, ±{eps:g} strains of the {len(cell)}-atom cell")
    return result
