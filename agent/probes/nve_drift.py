"""NVE-drift probe: energy conservation of velocity-Verlet dynamics.

One start (the crystal's smallest supercell with ``min_atoms`` atoms, else the first molecule)
gets Maxwell–Boltzmann velocities at ``temperature_K`` and runs NVE with the ensemble mean —
each member and the oracle too, from the same velocities (:mod:`.dynamics`). The total energy's
drift is the least-squares slope of E_tot(t) (eV/ps; reported per atom); the ratio
r = |slope| · t_run / σ_KE compares the drift over the run with the natural fluctuation of the
kinetic energy, as the issue defines MLIPAudit's NVE check (the definition is not in the
2025-11 MLIPAudit sources we read); r ≤ 1 scores 1, MLIPAudit's threshold. A run that explodes
has r = ∞.
"""

from __future__ import annotations

import numpy as np

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .dynamics import Run, paired_md
from .md_stability import rows_of, starts
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.NVE_DRIFT


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    s = ctx.system
    return None if s.molecules or s.crystal is not None else "needs molecules or a crystal"


def drift(run: Run, timestep_fs: float) -> tuple[float, float]:
    """(slope of the total energy, eV/ps; ratio r = |slope| t_run / σ_KE) of one run."""
    total = run.potential + run.kinetic
    t_ps = np.arange(len(total)) * timestep_fs / 1000
    ok = np.isfinite(total)
    if run.exploded is not None or ok.sum() < 3:
        return float("inf"), float("inf")
    slope = float(np.polyfit(t_ps[ok], total[ok], 1)[0])
    sigma = float(np.std(run.kinetic[ok]))
    span = float(t_ps[ok][-1] - t_ps[ok][0])
    ratio = abs(slope) * span / sigma if sigma > 0 else float("inf")
    return slope, ratio


def run(ctx: ProbeContext) -> ProbeResult:
    """Drift per atom and drift ratio for each row that ran."""
    cfg = ctx.cfg.nve_drift
    pot = ctx.pot
    oracle = ctx.oracle_cheap if cfg.oracle is None else cfg.oracle
    rows = rows_of(ctx, cfg.members, oracle)
    label, start = starts(ctx, cfg.min_atoms)[0]
    runs = paired_md(
        pot,
        [start],
        [cfg.temperature_K],
        rows,
        steps=cfg.steps,
        timestep_fs=cfg.timestep_fs,
        friction_per_fs=None,
        seed=ctx.seed,
    )
    slope = np.full(pot.n_rows, np.nan)
    ratio = np.full(pot.n_rows, np.nan)
    for r in runs:
        slope[r.row], ratio[r.row] = drift(r, cfg.timestep_fs)
    kw = {"oracle": oracle, "members": cfg.members}
    n = len(start)
    result = ProbeResult(name=NAME)
    result.metrics = [
        ctx.metric(
            NAME,
            "drift_ratio",
            ratio,
            unit="",
            label=f"drift ratio {label}",
            judge=Judge.VALUE,
            **kw,
        ),
        ctx.metric(
            NAME,
            "drift_per_atom",
            slope / n,
            unit="eV/atom/ps",
            label=f"drift {label}",
            bounded=False,
            **kw,
        ),
    ]
    t = (np.arange(cfg.steps + 1) * cfg.timestep_fs).tolist()
    series = np.full((pot.n_rows, cfg.steps + 1), np.nan)
    for r in runs:
        series[r.row] = (r.potential + r.kinetic - (r.potential[0] + r.kinetic[0])) / n
    result.payload = {
        "kind": "curves",
        "x_label": "t (fs)",
        "y_label": "E_tot − E_tot(0) (eV/atom)",
        "curves": [ctx.curve(label, t, series)],
    }
    bad = [r for r in runs if r.exploded is not None and r.last_good is not None]
    result.notes += [f"row {r.row}: {r.reason} at step {r.exploded}" for r in bad]
    result.candidates = pick_candidates(
        [r.last_good for r in bad],
        [1.0] * len(bad),
        None,
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=False,
    )
    result.notes.append(
        f"{label} ({n} atoms), {cfg.steps} steps of {cfg.timestep_fs:g} fs from "
        f"{cfg.temperature_K:g} K"
    )
    return result
