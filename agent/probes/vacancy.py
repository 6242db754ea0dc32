"""Vacancy probe: vacancy formation energy against supercell size, relaxed and unrelaxed, the
energy error of the defect cell, and the geometry.

For each size n the crystal's unit cell is repeated n×n×n (N atoms), atom 0 removed and the
defect cell relaxed at fixed cell by every row (:func:`~.relax.relax_many`);
E_f = E(N − 1, relaxed) − (N − 1)/N · E(N, perfect), both at the system's lattice constant
(DP-GEN autotest ``vacancy``; the standard supercell definition), judged as ``E_vac``. Beside
it, informational: the unrelaxed E_f (the defect cell as cut, ``E_vac_unrelaxed``) and each
row's energy error on that unrelaxed defect cell, (E_row − E_oracle)/(N − 1) in meV/atom
(``E_error``), so a reader sees whether the energy or the relaxation is wrong. Every row works
at the system's lattice (not its own), so that all rows' defect cells are the same structure.
The relaxed geometry of each row is compared with the oracle's by the RMSD of atomic positions
(minimum image, same atom order) at the largest size (ML-PEG split_vacancy's RMSD). With three
or more sizes, Spearman's ρ between the model's and the oracle's E_f over sizes says whether the
size trend is right.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .curves import spearman
from .relax import relax_many
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.VACANCY


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.crystal is not None else "needs a periodic crystal"


def rmsd(a: Atoms, b: Atoms) -> float:
    """RMS displacement between two geometries of the same atoms in the same cell, Å."""
    d, _ = find_mic(a.positions - b.positions, a.cell, a.pbc)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def run(ctx: ProbeContext) -> ProbeResult:
    """E_f per size and row, RMSD to the oracle's relaxed geometry, size trend."""
    cfg = ctx.cfg.vacancy
    pot = ctx.pot
    k, o = pot.k, pot.oracle_row
    result = ProbeResult(name=NAME)
    perfects = [ctx.system.crystal * (n, n, n) for n in cfg.sizes]
    perfects = [a for a in perfects if len(a) >= 2]
    if not perfects:
        raise ValueError("no supercell size leaves atoms after removing one")
    defects = [a[1:] for a in perfects]
    e_bulk = pot.single_points(perfects).energy  # (R, sizes)
    e_cut = pot.single_points(defects).energy  # (R, sizes) unrelaxed defect cells
    sizes, energies = [], []
    for j, relaxed in enumerate(relax_many(pot, defects, cfg.relax)):
        n_atoms = len(perfects[j])
        e_f = np.array([r.energy for r in relaxed]) - (n_atoms - 1) / n_atoms * e_bulk[:, j]
        e_f_cut = e_cut[:, j] - (n_atoms - 1) / n_atoms * e_bulk[:, j]
        error = (e_cut[:, j] - e_cut[o, j]) / (n_atoms - 1) * 1000  # meV/atom
        sizes.append(n_atoms)
        energies.append(e_f)
        for row in (k, o):
            if not relaxed[row].converged:
                result.notes.append(f"{pot.row_name(row)} not relaxed below fmax at N={n_atoms}")
        result.metrics += ctx.energy_triple(
            NAME,
            "E_vac",
            e_f,
            e_f_cut,
            error,
            unit="eV",
            labels=(
                f"E_vac N={n_atoms}",
                f"E_vac unrelaxed N={n_atoms}",
                f"E error defect N={n_atoms}",
            ),
        )
    relaxed_last = relaxed
    e_all = np.array(energies)  # (sizes, R)
    dev = [rmsd(r.atoms, relaxed_last[o].atoms) for r in relaxed_last]
    result.metrics.append(
        ctx.metric(NAME, "rmsd", dev, unit="Å", judge=Judge.VALUE, label=f"RMSD N={sizes[-1]}")
    )
    if len(sizes) >= 3:
        rho = [spearman(e_all[:, row], e_all[:, o]) for row in range(pot.n_rows)]
        result.metrics.append(ctx.metric(NAME, "size_spearman", rho, unit="", judge=Judge.VALUE))
    result.payload = {
        "kind": "curves",
        "x_label": "N (atoms of the perfect cell)",
        "y_label": "E_f (eV)",
        "curves": [ctx.curve("vacancy", sizes, e_all.T)],
    }
    relaxed_model = relaxed_last[k].atoms
    relaxed_model.info["probe_size"] = sizes[-1]
    result.candidates = pick_candidates(
        [relaxed_model],
        [float(e_all[-1, :k].std())],
        [abs(float(e_all[-1, k] - e_all[-1, o]))],
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(
        f"supercells {'/'.join(str(s) for s in sizes)} atoms, fixed cell at the system's lattice"
    )
    return result
