"""EOS probe: E(V) of the crystal over ± ``volume_range`` and a Birch–Murnaghan fit per row.

The unit cell is scaled isotropically (atoms kept at their fractional positions, not relaxed:
exact for monatomic cubic crystals, a clamped-ion curve otherwise) to ``points`` volumes
evenly spaced in V/V_ref ∈ [1 − range, 1 + range]; each row's curve is fitted with ASE's
``EquationOfState(eos="birchmurnaghan")`` (F. Birch, Phys. Rev. 71, 809 (1947)), giving V0
(Å³/atom), E0 (eV/atom) and B0 (GPa). ``curve_rmse`` is the RMS difference per atom between a
row's curve and the oracle's, each shifted to its own minimum (ML-PEG's EOS Δ). mlipx's
``nodes/energy_volume.py`` is the shape of this module.
"""

from __future__ import annotations

import numpy as np
from ase.eos import EquationOfState
from ase.units import GPa

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.EOS


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.crystal is not None else "needs a periodic crystal"


def fit(volumes: np.ndarray, energies: np.ndarray) -> tuple[float, float, float]:
    """Birch–Murnaghan V0 (Å³), E0 (eV), B0 (GPa) of one curve; NaNs when the fit fails."""
    try:
        v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit(warn=False)
    except Exception:  # no minimum in range, singular fit: the row's values are undefined
        return float("nan"), float("nan"), float("nan")
    return float(v0), float(e0), float(b / GPa)


def run(ctx: ProbeContext) -> ProbeResult:
    """E(V) for every row, fitted; metrics V0, E0, B0 and curve_rmse against the oracle."""
    cfg = ctx.cfg.eos
    cell = ctx.system.crystal
    n = len(cell)
    scales = np.linspace(1 - cfg.volume_range, 1 + cfg.volume_range, cfg.points)
    structures = []
    for s in scales:
        a = cell.copy()
        a.set_cell(cell.cell[:] * s ** (1 / 3), scale_atoms=True)
        structures.append(a)
    volumes = np.array([a.get_volume() for a in structures])
    sp = ctx.pot.single_points(structures)
    e = sp.energy / n  # (R, points) eV/atom
    fits = np.array([fit(volumes / n, row) for row in e])  # (R, 3)
    shifted = e - e.min(axis=1, keepdims=True)
    rmse = np.sqrt(((shifted - shifted[ctx.pot.oracle_row]) ** 2).mean(axis=1))
    metrics = [
        ctx.metric(NAME, "V0", fits[:, 0], unit="Å³/atom", judge=Judge.RELATIVE_ERROR),
        ctx.metric(NAME, "E0", fits[:, 1], unit="eV/atom"),
        ctx.metric(NAME, "B0", fits[:, 2], unit="GPa"),
        ctx.metric(NAME, "curve_rmse", rmse, unit="eV/atom", judge=Judge.VALUE),
    ]
    result = ProbeResult(name=NAME, metrics=metrics)
    result.payload = {
        "kind": "curves",
        "x_label": "V (Å³/atom)",
        "y_label": "E (eV/atom)",
        "curves": [ctx.curve(cell.get_chemical_formula(), volumes / n, e)],
    }
    k = ctx.pot.k
    result.candidates = pick_candidates(
        structures,
        e[:k].std(axis=0),
        np.abs(e[k] - e[k + 1]),
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(f"{cfg.points} volumes of the {n}-atom cell, ±{cfg.volume_range:.0%}")
    return result
