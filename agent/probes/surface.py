"""Surface probe: relaxed surface energies of low-index facets.

Each facet's slab is ASE's ``surface(cell, miller, layers, vacuum)`` of the crystal's unit cell
(the conventional cell for cubic lattices, so Miller indices are the cubic ones; periodic in
plane, open along the normal), relaxed at fixed cell by every row (:func:`~.relax.relax_rows`);
γ = (E_slab − N · E_bulk/atom) / 2A with E_bulk from the unit cell at the same lattice
constant and A the in-plane area (DP-GEN autotest ``surface``; eV/Å²). With three or more
facets, Spearman's ρ between the model's and the oracle's γ over facets says whether the facet
order (which facet is most stable) is right.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import surface

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .curves import spearman
from .relax import relax_many
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.SURFACE


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.crystal is not None else "needs a periodic crystal"


def slab(cell: Atoms, miller: tuple[int, int, int], layers: int, vacuum_A: float) -> Atoms:
    """The slab of ``cell`` normal to ``miller``: ``layers`` repeats, vacuum on both sides."""
    out = surface(cell, miller, layers, vacuum=vacuum_A, periodic=True)
    out.pbc = (True, True, False)
    return out


def run(ctx: ProbeContext) -> ProbeResult:
    """γ per facet and row; facet-order Spearman with three or more facets."""
    cfg = ctx.cfg.surface
    pot = ctx.pot
    k, o = pot.k, pot.oracle_row
    cell = ctx.system.crystal
    e_bulk = pot.single_points([cell]).energy[:, 0] / len(cell)  # (R,) eV/atom
    result = ProbeResult(name=NAME)
    gammas, slabs, labels = [], [], []
    facets = [tuple(m) for m in cfg.facets]
    slabs_in = [slab(cell, m, cfg.layers, cfg.vacuum_A) for m in facets]
    for miller, s, relaxed in zip(
        facets, slabs_in, relax_many(pot, slabs_in, cfg.relax), strict=True
    ):
        area = float(np.linalg.norm(np.cross(s.cell[0], s.cell[1])))
        gamma = (np.array([r.energy for r in relaxed]) - len(s) * e_bulk) / (2 * area)
        label = "".join(str(i) for i in miller)
        gammas.append(gamma)
        slabs.append(relaxed[k].atoms)
        labels.append(label)
        for row in (k, o):
            if not relaxed[row].converged:
                result.notes.append(f"row {row} not relaxed below fmax for ({label})")
        result.metrics.append(ctx.metric(NAME, "gamma", gamma, unit="eV/Å²", label=f"γ({label})"))
    g = np.array(gammas)  # (facets, R)
    if len(cfg.facets) >= 3:
        rho = [spearman(g[:, row], g[:, o]) for row in range(pot.n_rows)]
        result.metrics.append(ctx.metric(NAME, "facet_spearman", rho, unit="", judge=Judge.VALUE))
    result.payload = {
        "kind": "bars",
        "x_label": "facet",
        "y_label": "γ (eV/Å²)",
        "curves": [ctx.curve("surface energy", list(range(len(labels))), g.T)],
        "x_ticks": labels,
    }
    result.candidates = pick_candidates(
        slabs,
        g[:, :k].std(axis=1),
        np.abs(g[:, k] - g[:, o]),
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(
        "slabs of "
        + ", ".join(f"{len(s)} atoms ({lab})" for s, lab in zip(slabs, labels, strict=True))
    )
    return result
