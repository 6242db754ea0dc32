"""Dimer probe: pair curves for every element pair, with MLIP Arena's and ML-PEG's metrics.

Two atoms in vacuum (non-periodic), separated along x from ``r_min_A`` (0.5 Å) to the model's
cutoff + ``beyond_A`` in steps of ``step_A``; every row gives E(r) and the projected force on
the second atom. The counts of :mod:`.curves` (force flips, energy minima) pass only when the
model's count equals the oracle's: judged by their error, |model − oracle|, against good 0 and
bad 1 (a count one off scores 0). The continuous shape metrics (Spearman repulsion/attraction,
tortuosity, energy jump, conservation deviation) are judged by how much worse than the oracle's
curve the model's is (``shift``); well depth (eV) and position (Å) by their error against the
oracle's.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .curves import diatomic_metrics
from .potentials import SinglePoints
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.DIMER
_BOX_A = 20.0  # side of the vacuum box, Å
_SPREAD_A = 0.3  # candidates of one pair are at least this far apart, Å
_ERROR_METRICS = ("force_flips", "energy_minima", "well_depth", "well_position")
_UNITS = {
    "energy_jump": "eV",
    "conservation_deviation": "eV/Å",
    "well_depth": "eV",
    "well_position": "Å",
}


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    return None if ctx.system.elements else "the system has no elements"


def pairs(elements: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``elements``, like ones included."""
    return list(itertools.combinations_with_replacement(sorted(elements), 2))


def dimer(a: str, b: str, r: float) -> Atoms:
    """Atoms ``a`` and ``b`` ``r`` Å apart along x, centred in a non-periodic box."""
    c = _BOX_A / 2
    return Atoms(
        [a, b], positions=[[c - r / 2, c, c], [c + r / 2, c, c]], cell=[_BOX_A] * 3, pbc=False
    )


def _spread(r: np.ndarray, key: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices of the largest ``key`` values, at least ``_SPREAD_A`` apart in r."""
    chosen: list[int] = []
    for i in np.argsort(-np.where(np.isfinite(key), key, np.inf), kind="stable"):
        if all(abs(r[i] - r[j]) >= _SPREAD_A for j in chosen):
            chosen.append(int(i))
        if len(chosen) == n:
            break
    return chosen


def _oracle_done(
    r: np.ndarray, sp: SinglePoints, f_proj: np.ndarray, structures: list[Atoms], row: int
) -> tuple[np.ndarray, SinglePoints, np.ndarray, list[Atoms]]:
    """The separations the oracle (row ``row``) could do, every row kept on them alone, so
    model and oracle curves are judged on the same points; fewer than 3 left raises.
    """
    keep = np.isfinite(sp.energy[row])
    if keep.sum() < 3:
        raise RuntimeError(
            f"the oracle failed on {int((~keep).sum())} of {len(r)} separations "
            f"(first: {sp.failures[0] if sp.failures else 'non-finite energy'})"
        )
    idx = np.flatnonzero(keep)
    kept = SinglePoints(energy=sp.energy[:, keep], forces=[sp.forces[i] for i in idx])
    return r[keep], kept, f_proj[:, keep], [structures[i] for i in idx]


def run(ctx: ProbeContext) -> ProbeResult:
    """Every pair's curve per row; shape metrics and well against the oracle."""
    cfg = ctx.cfg.dimer
    pot = ctx.pot
    k = pot.k
    r = np.arange(cfg.r_min_A, pot.model.r_max + cfg.beyond_A + 1e-9, cfg.step_A)
    result = ProbeResult(name=NAME)
    curves, cand_structs, cand_dis, cand_err = [], [], [], []
    for a, b in pairs(ctx.system.elements):
        structures = [dimer(a, b, x) for x in r]
        sp = pot.single_points(structures, skip_failures=True)
        f_proj = np.array([f[:, 1, 0] for f in sp.forces]).T  # (R, n) along +x = 0 → 1
        r_pair, sp, f_proj, structures = _oracle_done(r, sp, f_proj, structures, k + 1)
        if len(r_pair) < len(r):
            result.notes.append(
                f"{a}-{b}: {len(r) - len(r_pair)} of {len(r)} separations dropped "
                f"(the oracle failed there), {r_pair[0]:.2f}–{r_pair[-1]:.2f} Å kept"
            )
        per_row = [
            diatomic_metrics(r_pair, sp.energy[row], f_proj[row]) for row in range(pot.n_rows)
        ]
        pair_metrics = [
            ctx.metric(
                NAME,
                name,
                [m[name] for m in per_row],
                unit=_UNITS.get(name, ""),
                label=f"{name.replace('_', ' ')} {a}-{b}",
                judge=Judge.ERROR if name in _ERROR_METRICS else Judge.SHIFT,
            )
            for name in per_row[0]
        ]
        result.metrics += pair_metrics
        curves.append(ctx.curve(f"{a}-{b}", r_pair, sp.energy - sp.energy[:, -1:]))
        dis = sp.energy[:k].std(axis=0)
        err = np.abs(sp.energy[k] - sp.energy[k + 1])
        failed = any(m.passed is False for m in pair_metrics)
        for i in _spread(r_pair, err if failed else dis, max(ctx.cfg.candidates_per_probe, 1)):
            cand_structs.append(structures[i])
            cand_dis.append(dis[i])
            cand_err.append(err[i])
    result.payload = {
        "kind": "curves",
        "x_label": "r (Å)",
        "y_label": "E − E(r_max) (eV)",
        "curves": curves,
    }
    result.candidates = pick_candidates(
        cand_structs,
        cand_dis,
        cand_err,
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(f"{len(r)} separations {r[0]:.2f}–{r[-1]:.2f} Å per pair")
    return result
