"""EOS probe: E(V) of the crystal around each row's own equilibrium, and a Birch–Murnaghan fit.

Each row (member, mean, oracle) first relaxes the lattice (:func:`~.relax.relax_lattice`: the
cell scaled isotropically to the row's energy minimum, atoms at fixed fractional positions),
then samples ``points`` volumes evenly spaced in V/V_row ∈ [1 − range, 1 + range] around its
own equilibrium volume V_row — DP-GEN autotest's "relax, then EOS" — so every row's minimum is
inside its grid and no fit extrapolates. Each row's curve is fitted with ASE's
``EquationOfState(eos="birchmurnaghan")`` (F. Birch, Phys. Rev. 71, 809 (1947)), giving V0
(Å³/atom), E0 (eV/atom) and B0 (GPa). A fit that raises, has no minimum (B0 ≤ 0) or puts V0
outside the row's sampled volumes (the lattice search hit its limits, or the curve is not a
single well) gives NaN V0, E0 and B0 — never an extrapolated value — and a note saying why; a NaN
scores 0, so the metric fails. ``curve_rmse`` is the RMS difference per atom between a row's
curve and the oracle's at the same V/V_row, each shifted to its own lowest energy: the shape of
the well, with its position judged by V0 (ML-PEG's EOS Δ on aligned minima). mlipx's
``nodes/energy_volume.py`` is the shape of this module.

Candidates are the oracle's grid (the volumes the model must get right), by the model's
energy error or the members' disagreement there.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from ase.eos import EquationOfState
from ase.units import GPa

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .relax import scaled
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.EOS
_NAN3 = (math.nan, math.nan, math.nan)


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.crystal is not None else "needs a periodic crystal"


def fit(
    volumes: np.ndarray, energies: np.ndarray, *, unit: str = "Å³/atom"
) -> tuple[float, float, float, str | None]:
    """Birch–Murnaghan fit of one curve, only where its minimum lies among the samples.

    Args:
        volumes: (n,) volumes, Å³ (per atom or per cell, as ``unit`` says).
        energies: (n,) energies, eV, on the same basis.
        unit: of the volumes, for the reason.

    Returns:
        V0 (volume unit), E0 (eV), B0 (GPa) and None; or NaN, NaN, NaN and why: the fit
        raised, has no minimum (B0 ≤ 0), or its V0 lies outside [min, max] of ``volumes``.
    """
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed fit is reported by its reason instead
            v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit(warn=False)
    except Exception as exc:  # singular fit, no minimum of the initial polynomial, ...
        return *_NAN3, f"fit failed ({type(exc).__name__}: {exc})"
    v0, e0, b0 = float(v0), float(e0), float(b / GPa)
    if not all(map(math.isfinite, (v0, e0, b0))) or b0 <= 0:
        return *_NAN3, f"no minimum (fitted B0 {b0:.4g} GPa)"
    lo, hi = float(np.min(volumes)), float(np.max(volumes))
    if v0 > hi:
        return *_NAN3, f"minimum beyond the grid (V0 {v0:.4g} > {hi:.4g} {unit})"
    if v0 < lo:
        return *_NAN3, f"minimum below the grid (V0 {v0:.4g} < {lo:.4g} {unit})"
    return v0, e0, b0, None


def run(ctx: ProbeContext) -> ProbeResult:
    """E(V) for every row around its own V0, fitted; V0, E0, B0 and curve_rmse vs the oracle."""
    cfg = ctx.cfg.eos
    pot = ctx.pot
    cell = ctx.system.crystal
    n = len(cell)
    k, o = pot.k, pot.oracle_row
    lattice = ctx.lattice()
    grid = np.linspace(1 - cfg.volume_range, 1 + cfg.volume_range, cfg.points)  # V / V_row
    structures = [
        [scaled(cell, lattice.scale[row] * g ** (1 / 3)) for g in grid] for row in range(pot.n_rows)
    ]
    volumes = np.array([[a.get_volume() / n for a in row] for row in structures])  # (R, points)
    own, on_oracle = pot.own_points(structures)
    e = own.energy / n  # (R, points) eV/atom, each row on its own grid
    fits = [fit(v, row) for v, row in zip(volumes, e, strict=True)]
    values = np.array([f[:3] for f in fits])  # (R, 3)
    shifted = e - e.min(axis=1, keepdims=True)
    rmse = np.sqrt(((shifted - shifted[o]) ** 2).mean(axis=1))
    metrics = [
        ctx.metric(NAME, "V0", values[:, 0], unit="Å³/atom", judge=Judge.RELATIVE_ERROR),
        ctx.metric(NAME, "E0", values[:, 1], unit="eV/atom"),
        ctx.metric(NAME, "B0", values[:, 2], unit="GPa"),
        ctx.metric(NAME, "curve_rmse", rmse, unit="eV/atom", judge=Judge.VALUE),
    ]
    result = ProbeResult(name=NAME, metrics=metrics)
    result.notes += ctx.lattice_notes()
    result.notes += [f"{pot.row_name(r)}: {f[3]}" for r, f in enumerate(fits) if f[3]]
    result.payload = {
        "kind": "curves",
        "x_label": "V (Å³/atom)",
        "y_label": "E (eV/atom)",
        "curves": [ctx.curve(cell.get_chemical_formula(), volumes, e)],
    }
    e_ref = on_oracle.energy / n  # (R, points) every row on the oracle's grid
    result.candidates = pick_candidates(
        structures[o],
        e_ref[:k].std(axis=0),
        np.abs(e_ref[k] - e_ref[o]),
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(
        f"{cfg.points} volumes of the {n}-atom cell, ±{cfg.volume_range:.0%} around each row's "
        f"own V0 (model {lattice.volume(k):.4g}, oracle {lattice.volume(o):.4g} Å³/atom)"
    )
    return result
