"""Relax one structure with every row's potential at once: ASE optimisers in lockstep.

Each row (member, mean, oracle) relaxes its own copy of each structure with its own ASE
optimiser (FIRE by default: Bitzek et al., Phys. Rev. Lett. 97, 170201 (2006)). The optimisers
are stepped in lockstep and the copies' forces come from a shared cache: after every round of
steps the copies still running are evaluated in one batched model call, so relaxing S
structures costs one model evaluation per optimiser step, not one per structure and row. Each
copy's trajectory is exactly what a plain ``FIRE(atoms).run(fmax, steps)`` with its row's
potential would give.
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

__all__ = ["Relaxed", "relax_many", "relax_rows"]


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
