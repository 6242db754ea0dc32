"""RDF probe: the radial distribution function of model MD against oracle MD (cheap oracles).

One start (the crystal's smallest supercell with ``min_atoms`` atoms, else the first molecule)
runs BAOAB NVT at ``temperature_K`` with the ensemble mean, each member and the oracle, sharing
velocities and noise (:mod:`.dynamics`); after ``equilibration`` steps a frame is taken every
``stride`` steps and g(r) is histogrammed to ``r_max_A`` over all pairs (periodic images
included; normalised by the ideal-gas pair density N/V for periodic cells, per atom and shell
volume otherwise). Overlap = Σ min(g, g_oracle) / Σ max(g, g_oracle) over the bins (the
Ruzicka similarity: 1 for identical functions); the first peak's position (Å) is compared with
the oracle's (MLIPAudit judges RDFs at 0.1 Å).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .dynamics import paired_md
from .md_stability import rows_of, starts
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.RDF


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    s = ctx.system
    if not s.molecules and s.crystal is None:
        return "needs molecules or a crystal"
    if not ctx.oracle_cheap and not ctx.cfg.rdf.expensive_oracle:
        return (
            "runs MD with the oracle, which is only done for cheap oracles (emt, sw, tersoff); "
            "set probes.rdf.expensive_oracle=true to run it anyway"
        )
    return None


def rdf(frames: list[Atoms], r_max: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres (bins,) Å, g(r) (bins,)) averaged over ``frames``; NaNs without frames."""
    edges = np.linspace(0.0, r_max, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    if not frames:
        return centres, np.full(bins, np.nan)
    shell = 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    total = np.zeros(bins)
    for atoms in frames:
        d = neighbor_list("d", atoms, r_max)
        hist = np.histogram(d, bins=edges)[0].astype(float)
        n = len(atoms)
        density = n / atoms.get_volume() if atoms.pbc.all() else 1.0
        total += hist / (n * density * shell)
    return centres, total / len(frames)


def overlap(g: np.ndarray, ref: np.ndarray) -> float:
    """Σ min / Σ max of two non-negative functions on the same bins (1: identical)."""
    top = np.maximum(g, ref).sum()
    return float(np.minimum(g, ref).sum() / top) if top > 0 else float("nan")


def run(ctx: ProbeContext) -> ProbeResult:
    """g(r) per row; overlap with the oracle's and first-peak position."""
    cfg = ctx.cfg.rdf
    pot = ctx.pot
    rows = rows_of(ctx, cfg.members, True)
    label, start = starts(ctx, cfg.min_atoms)[0]
    runs = paired_md(
        pot,
        [start],
        [cfg.temperature_K],
        rows,
        steps=cfg.steps,
        timestep_fs=cfg.timestep_fs,
        friction_per_fs=cfg.friction_per_fs,
        seed=ctx.seed,
        sample_every=cfg.stride,
        equilibration=cfg.equilibration,
    )
    g = np.full((pot.n_rows, cfg.bins), np.nan)
    r = rdf([], cfg.r_max_A, cfg.bins)[0]
    for run_ in runs:
        frames = run_.frames if run_.exploded is None else []
        g[run_.row] = rdf(frames, cfg.r_max_A, cfg.bins)[1]
    o = pot.oracle_row
    sim = [overlap(row, g[o]) if np.isfinite(row).all() else np.nan for row in g]
    peak = [float(r[np.argmax(row)]) if np.isfinite(row).all() else np.nan for row in g]
    kw = {"members": cfg.members}
    result = ProbeResult(name=NAME)
    result.metrics = [
        ctx.metric(
            NAME, "overlap", sim, unit="", label=f"g(r) overlap {label}", judge=Judge.VALUE, **kw
        ),
        ctx.metric(NAME, "first_peak", peak, unit="Å", label=f"g(r) 1st peak {label}", **kw),
    ]
    result.payload = {
        "kind": "curves",
        "x_label": "r (Å)",
        "y_label": "g(r)",
        "curves": [ctx.curve(label, r, g)],
    }
    model_run = next(x for x in runs if x.row == pot.model_row)
    frames = model_run.frames[-1:] or ([model_run.last_good] if model_run.last_good else [])
    result.candidates = pick_candidates(
        frames,
        [1.0 - sim[pot.model_row]] * len(frames),
        None,
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=False,
    )
    n_frames = len(model_run.frames)
    result.notes.append(
        f"{label} ({len(start)} atoms) at {cfg.temperature_K:g} K, {n_frames} frames per row"
    )
    return result
