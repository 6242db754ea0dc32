"""Relax structures with every row's potential at once: atoms by ASE optimisers in lockstep,
and the crystal's lattice by a batched isotropic line search.

Atoms (:func:`relax_many`, :func:`relax_rows`): each row (member, mean, oracle) relaxes its own
copy of each structure with its own ASE optimiser (FIRE by default: Bitzek et al., Phys. Rev.
Lett. 97, 170201 (2006)). The optimisers are stepped in lockstep and the copies' forces come
from a shared cache: after every round of steps the copies still running are evaluated in one
batched model call, so relaxing S structures costs one model evaluation per optimiser step,
not one per structure and row. Each copy's trajectory is exactly what a plain
``FIRE(atoms).run(fmax, steps)`` with its row's potential would give.

Lattice (:func:`relax_lattice`): each row's own equilibrium lattice, found before the bulk
probes that must sit at a row's minimum (EOS, elastic constants) — DP-GEN autotest's "relax,
then EOS / elastic". The cell is scaled isotropically (atoms at fixed fractional positions) and
E(s) minimised over the length scale s by a bracketing search and a three-point parabolic zoom,
every row in lockstep (one batched model call per round). For cubic crystals whose atoms sit on
symmetry-fixed sites (fcc, bcc, diamond, rock salt, ...) this is the full relaxation: the stress
is hydrostatic and the forces vanish by symmetry, so E(s) has its minimum where ASE's
``FrechetCellFilter`` relaxation ends (``ase.filters``). Other crystals get the minimum along
the isotropic path (cell shape and internal coordinates fixed), the clamped-ion curve the EOS
samples; the elastic probe reports the residual stress there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import FIRE
from ase.optimize.optimize import Optimizer

from chemgap.campaigns.spec import RelaxSettings

from .potentials import Potentials, RowResult

log = logging.getLogger(__name__)

__all__ = ["Lattice", "Relaxed", "relax_lattice", "relax_many", "relax_rows", "scaled"]

LATTICE_LIMITS = (0.8, 1.25)  # length scales searched, relative to the given cell
LATTICE_WIDTH = 0.02  # first half-width of the three points, in length scale (±6 % volume)
LATTICE_XTOL = 1e-4  # the search ends once the half-width is below this (ΔV/V ≲ 3e-4)
LATTICE_ROUNDS = 30  # at most this many rounds (batched calls)
_GROW = 1.6  # bracketing: each step downhill this much longer than the last


@dataclass(kw_only=True)
class Relaxed:
    """One row's relaxation: final ``atoms``, its ``energy`` (eV) and ``fmax`` (eV/Å), whether
    it ``converged`` and the optimiser ``steps`` it took.
    """

    atoms: Atoms
    energy: float
    fmax: float
    converged: bool
    steps: int


class _BlockPool:
    """The live copies being relaxed (one per structure and row) and their cached results."""

    def __init__(self, pot: Potentials, blocks: list[tuple[Atoms, int]]):
        self.pot = pot
        self.blocks = blocks
        self._cache: dict[int, tuple[np.ndarray, RowResult]] = {}

    def _fresh(self, i: int) -> bool:
        hit = self._cache.get(i)
        return hit is not None and np.array_equal(hit[0], self.blocks[i][0].positions)

    def refresh(self, blocks: list[int]) -> None:
        """Evaluate every block of ``blocks`` whose cached result is stale, in one call."""
        stale = [i for i in blocks if not self._fresh(i)]
        if not stale:
            return
        results = self.pot.evaluate_rows([self.blocks[i] for i in stale])
        for i, res in zip(stale, results, strict=True):
            self._cache[i] = (self.blocks[i][0].positions.copy(), res)

    def result(self, i: int) -> RowResult:
        """Block ``i``'s result at its current positions (evaluating stale blocks if needed)."""
        if not self._fresh(i):
            self.refresh(list(range(len(self.blocks))))
        return self._cache[i][1]


class _BlockCalculator(Calculator):
    """An ASE calculator serving one block's energy and forces from a :class:`_BlockPool`."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, pool: _BlockPool, index: int):
        super().__init__()
        self.pool, self.index = pool, index

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Look the block's result up (ASE ``Calculator`` interface)."""
        super().calculate(atoms, properties, system_changes)
        res = self.pool.result(self.index)
        self.results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces}


def _fmax(atoms: Atoms) -> float:
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def relax_many(
    pot: Potentials,
    structures: list[Atoms],
    settings: RelaxSettings,
    *,
    optimizer: type[Optimizer] = FIRE,
) -> list[list[Relaxed]]:
    """Relax a copy of each structure (fixed cell, constraints kept) with every row's
    potential, all in lockstep: one batched model evaluation per optimiser step.

    Args:
        pot: the rows.
        structures: the starting structures.
        settings: ``fmax`` (eV/Å) and ``max_steps``.
        optimizer: an ASE optimiser class taking ``(atoms, logfile=None)``.

    Returns:
        Per structure, one :class:`Relaxed` per row, in row order (members, mean, oracle).
    """
    blocks = [(a.copy(), row) for a in structures for row in range(pot.n_rows)]
    pool = _BlockPool(pot, blocks)
    for i, (a, _) in enumerate(blocks):
        a.calc = _BlockCalculator(pool, i)
    opts = [optimizer(a, logfile=None) for a, _ in blocks]
    everything = list(range(len(blocks)))
    pool.refresh(everything)
    done = [_fmax(a) <= settings.fmax for a, _ in blocks]
    for _ in range(settings.max_steps):
        active = [i for i in everything if not done[i]]
        if not active:
            break
        for i in active:
            opts[i].step()
            opts[i].nsteps += 1
        pool.refresh(active)
        for i in active:
            done[i] = _fmax(blocks[i][0]) <= settings.fmax
    out = []
    for i, (a, _) in enumerate(blocks):
        energy, fmax = float(a.get_potential_energy()), _fmax(a)
        a.calc = None
        out.append(
            Relaxed(atoms=a, energy=energy, fmax=fmax, converged=done[i], steps=opts[i].nsteps)
        )
    if not all(done):
        log.info(
            "relaxation: %d of %d not below fmax after %d steps",
            done.count(False),
            len(done),
            settings.max_steps,
        )
    n = pot.n_rows
    return [out[j * n : (j + 1) * n] for j in range(len(structures))]


def relax_rows(
    pot: Potentials,
    atoms: Atoms,
    settings: RelaxSettings,
    *,
    optimizer: type[Optimizer] = FIRE,
) -> list[Relaxed]:
    """:func:`relax_many` of one structure: one :class:`Relaxed` per row."""
    return relax_many(pot, [atoms], settings, optimizer=optimizer)[0]


def scaled(cell: Atoms, s: float) -> Atoms:
    """A copy of ``cell`` with its lattice vectors times ``s`` (atoms moved with the cell)."""
    out = cell.copy()
    out.set_cell(cell.cell[:] * s, scale_atoms=True)
    return out


@dataclass(kw_only=True)
class Lattice:
    """Every row's equilibrium lattice along the isotropic path (:func:`relax_lattice`).

    Attributes:
        cell: the cell searched from (the system's crystal).
        scale: (R,) each row's length scale s of ``cell`` at its minimum (volume × s³), or
            where its search stopped.
        found: (R,) whether a minimum was bracketed (False: none within the limits, or
            non-finite or flat energies; the row has no equilibrium lattice).
        converged: (R,) whether the row's search closed in on its minimum to ``xtol``.
        reasons: (R,) why a row's search did not (no minimum in the range, non-finite
            energies, no convergence), or None.
        evaluations: (R,) single points each row took.
    """

    cell: Atoms
    scale: np.ndarray
    found: np.ndarray
    converged: np.ndarray
    reasons: list[str | None]
    evaluations: np.ndarray

    def row_cell(self, row: int) -> Atoms:
        """``cell`` at row ``row``'s own lattice."""
        return scaled(self.cell, float(self.scale[row]))

    def volume(self, row: int) -> float:
        """Row ``row``'s equilibrium volume per atom, Å³/atom."""
        return float(self.cell.get_volume() * self.scale[row] ** 3 / len(self.cell))


def relax_lattice(
    pot: Potentials,
    cell: Atoms,
    *,
    limits: tuple[float, float] = LATTICE_LIMITS,
    width: float = LATTICE_WIDTH,
    xtol: float = LATTICE_XTOL,
    max_rounds: int = LATTICE_ROUNDS,
) -> Lattice:
    """Each row's equilibrium length scale s of ``cell`` (energies only), all rows in lockstep.

    Every round evaluates, for each row still searching, E at s − w, s, s + w (points already
    done are reused): when an end point is lowest, s moves there (bracketing; w grows by 1.6
    while no minimum was bracketed yet); when the centre is lowest, s moves to the vertex of
    the parabola through the three points (within ±w/2 of the centre) and w shrinks fourfold —
    successive parabolic interpolation (Press et al., *Numerical Recipes*, "Parabolic
    interpolation and Brent's method") on a shrinking bracket. The
    search ends for a row when w < ``xtol`` (converged), when s would leave ``limits`` (no
    minimum there: s is left at the limit) or after ``max_rounds``.

    Args:
        pot: the rows.
        cell: a periodic cell (the system's crystal).
        limits: the length scales searched, relative to ``cell``.
        width: the first half-width w, in length scale.
        xtol: the last half-width, in length scale.
        max_rounds: rounds (batched calls) at most.

    Returns:
        A :class:`Lattice`; a row whose search failed has its reason and the scale where it
        stopped (a limit, when no minimum lies within them).
    """
    rows = [_ScaleSearch(width, xtol, limits) for _ in range(pot.n_rows)]
    for _ in range(max_rounds):
        active = [r for r, row in enumerate(rows) if not row.done]
        if not active:
            break
        todo = [(r, x) for r in active for x in rows[r].points() if x not in rows[r].seen]
        results = pot.evaluate_rows([(scaled(cell, x), r) for r, x in todo])
        for (r, x), res in zip(todo, results, strict=True):
            rows[r].seen[x] = res.energy
        for r in active:
            rows[r].update()
    for r, row in enumerate(rows):
        if not row.done:
            row.reason = f"lattice search not converged in {max_rounds} rounds (scale {row.s:.4f})"
        if row.reason is not None:
            log.info("lattice of %s: %s", pot.row_name(r), row.reason)
    return Lattice(
        cell=cell.copy(),
        scale=np.array([row.s for row in rows]),
        found=np.array([row.bracketed and not row.failed for row in rows]),
        converged=np.array([row.converged for row in rows]),
        reasons=[row.reason for row in rows],
        evaluations=np.array([len(row.seen) for row in rows]),
    )


class _ScaleSearch:
    """One row's search for its lowest-energy length scale s (see :func:`relax_lattice`):
    ``points()`` to evaluate (into ``seen``, s -> eV), then ``update()``.
    """

    def __init__(self, width: float, xtol: float, limits: tuple[float, float]):
        self.s, self.w = 1.0, float(width)
        self.xtol, self.limits = xtol, limits
        self.seen: dict[float, float] = {}
        self.bracketed = self.converged = self.failed = self.done = False
        self.reason: str | None = None

    def points(self) -> list[float]:
        """The three length scales of this round."""
        return [self.s - self.w, self.s, self.s + self.w]

    def _fail(self, reason: str) -> None:
        self.done = self.failed = True
        self.reason = reason

    def update(self) -> None:
        """Move, zoom or stop from the energies at :meth:`points`."""
        e0, e1, e2 = (self.seen[x] for x in self.points())
        if not all(map(np.isfinite, (e0, e1, e2))):
            self._fail(f"non-finite energy near lattice scale {self.s:.4f}")
        elif e1 <= e0 and e1 <= e2:  # bracketed: to the parabola's vertex, then zoom in
            curvature = e0 - 2 * e1 + e2
            if curvature <= 0:  # three equal energies: no minimum to find
                self._fail(f"flat energy around lattice scale {self.s:.4f}")
                return
            self.s += 0.5 * self.w * (e0 - e2) / curvature
            self.bracketed = True
            self.done = self.converged = self.w < self.xtol
            self.w /= 4
        else:  # downhill to the lower end point
            step = -self.w if e0 < e2 else self.w
            lo, hi = self.limits
            if not lo <= self.s + step <= hi:
                self.s = min(max(self.s + step, lo), hi)
                self._fail(
                    f"no energy minimum for lattice scales {lo:g}–{hi:g} of the system's "
                    f"(lowest at the {'lower' if step < 0 else 'upper'} end)"
                )
                return
            self.s += step
            if not self.bracketed:
                self.w *= _GROW
