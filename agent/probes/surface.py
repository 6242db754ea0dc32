"""Surface probe: surface energies of low-index facets, relaxed and unrelaxed, and the energy
error of each slab.

Each facet's slab is ASE's ``surface(cell, miller, layers, vacuum)`` of the crystal's unit cell
(the conventional cell for cubic lattices, so Miller indices are the cubic ones; periodic in
plane, open along the normal), relaxed at fixed cell by every row (:func:`~.relax.relax_many`);
γ = (E_slab − N · E_bulk/atom) / 2A with E_bulk from the unit cell at the same lattice
constant and A the in-plane area (DP-GEN autotest ``surface``; eV/Å²), judged as ``gamma``.
Beside it, informational: γ of the slab as cut (``gamma_unrelaxed``) and each row's energy
error on that unrelaxed slab, (E_row − E_oracle)/N in meV/atom (``E_error``), so a reader sees
whether the energy or the relaxation is wrong. Every row works at the system's lattice (not its
own), so that all rows' slabs are the same structure. With three or more
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
    e_cut = pot.single_points(slabs_in).energy  # (R, facets) unrelaxed slabs
    for j, (miller, s, relaxed) in enumerate(
        zip(facets, slabs_in, relax_many(pot, slabs_in, cfg.relax), strict=True)
    ):
        area = float(np.linalg.norm(np.cross(s.cell[0], s.cell[1])))
        gamma = (np.array([r.energy for r in relaxed]) - len(s) * e_bulk) / (2 * area)
        gamma_cut = (e_cut[:, j] - len(s) * e_bulk) / (2 * area)
        error = (e_cut[:, j] - e_cut[o, j]) / len(s) * 1000  # meV/atom
        label = "".join(str(i) for i in miller)
        gammas.append(gamma)
        slabs.append(relaxed[k].atoms)
        labels.append(label)
        for row in (k, o):
            if not relaxed[row].converged:
                result.notes.append(f"{pot.row_name(row)} not relaxed below fmax for ({label})")
        result.metrics += ctx.energy_triple(
            NAME,
            "gamma",
            gamma,
            gamma_cut,
            error,
            unit="eV/Å²",
            labels=(f"γ({label})", f"γ unrelaxed ({label})", f"E error slab ({label})"),
        )
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
        "slabs at the system's lattice of "
        + ", ".join(f"{len(s)} atoms ({lab})" for s, lab in zip(slabs, labels, strict=True))
    )
    return result
