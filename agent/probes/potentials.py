"""The potentials a probe compares: each member, the ensemble mean and the oracle, as *rows*.

Row ``k < K`` is member k, row ``K`` the ensemble mean (the *model*: the mean energy and forces
of the members, the potential production MD runs on) and row ``K + 1`` the oracle. Every probe
computes its property once per row with the same procedure, so the oracle wrapped as a model
(:class:`chemgap.models.reference.ReferenceModel`) reproduces the oracle's row exactly.

Model rows go through the model contract only (``make_batch`` + ``evaluate``: all members on one
batched graph), so any model kind can be probed; the oracle is any ASE calculator.
Units: eV, Å, eV/Å, eV/Å³ (ASE's stress sign).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from chemgap.models.contract import EnsembleModel

__all__ = ["Potentials", "RowResult", "SinglePoints"]

MAX_ATOMS_PER_BATCH = 6000


log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RowResult:
    """One row's energy (eV), forces (n, 3) eV/Å and stress (6,) eV/Å³ Voigt or None."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None


@dataclass(kw_only=True)
class SinglePoints:
    """Every row on the same structures.

    Attributes:
        energy: (R, n_struct) eV, R = K + 2 rows.
        forces: per structure, (R, n_atoms_i, 3) eV/Å.
        stress: (R, n_struct, 6) eV/Å³ Voigt, ASE sign, or None.
        failures: ``"Type: message"`` of each oracle call skipped (``skip_failures``).
    """

    energy: np.ndarray
    forces: list[np.ndarray]
    stress: np.ndarray | None = None
    failures: list[str] = field(default_factory=list)


class Potentials:
    """A model's members, their mean and an oracle calculator, evaluated as rows.

    Args:
        model: any :class:`~chemgap.models.contract.EnsembleModel`.
        oracle: the reference ASE calculator.

    Attributes:
        k: number of members K; ``model_row`` = K, ``oracle_row`` = K + 1, ``n_rows`` = K + 2.
        oracle_calls: structures the oracle evaluated so far.
    """

    def __init__(self, model: EnsembleModel, oracle: BaseCalculator):
        self.model = model
        self.oracle = oracle
        self.k = int(model.n_members)
        self.oracle_calls = 0

    @property
    def model_row(self) -> int:
        """Row of the ensemble mean."""
        return self.k

    @property
    def oracle_row(self) -> int:
        """Row of the oracle."""
        return self.k + 1

    @property
    def n_rows(self) -> int:
        """K members + mean + oracle."""
        return self.k + 2

    def row_name(self, row: int) -> str:
        """``member i``, ``mean`` or ``oracle``: how notes name a row."""
        if row == self.oracle_row:
            return "oracle"
        return "mean" if row == self.model_row else f"member {row}"

    # -- model and oracle evaluation
    def _model(
        self, structures: Sequence[Atoms], stress: bool
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        """Members on ``structures``: energy (K, n), forces per structure (K, n_i, 3), stress
        (K, n, 6) or None; chunked to at most ``MAX_ATOMS_PER_BATCH`` atoms per graph.
        """
        from chemgap.models.ensemble import chunk_by_atoms

        energies, forces, stresses = [], [], []
        for chunk in chunk_by_atoms(list(structures), MAX_ATOMS_PER_BATCH):
            batch = self.model.make_batch(chunk)
            out = self.model.evaluate(batch, compute_stress=stress)
            e = out.energy.double().cpu().numpy()
            f = out.forces.double().cpu().numpy()
            energies.append(e)
            bounds = np.concatenate([[0], np.cumsum([len(a) for a in chunk])])
            forces += [f[:, a:b] for a, b in itertools.pairwise(bounds)]
            if stress:
                s = out.stress.double().cpu().numpy()
                stresses.append(np.array([[full_3x3_to_voigt_6_stress(x) for x in m] for m in s]))
        return (
            np.concatenate(energies, axis=1),
            forces,
            np.concatenate(stresses, axis=1) if stress else None,
        )

    def oracle_single(self, atoms: Atoms, *, stress: bool = False) -> RowResult:
        """The oracle on a copy of ``atoms`` (stress only for periodic cells)."""
        a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.calc = self.oracle
        energy = float(a.get_potential_energy())
        forces = np.array(a.get_forces(), dtype=float)
        sigma = np.array(a.get_stress(), dtype=float) if stress and a.pbc.all() else None
        a.calc = None
        self.oracle_calls += 1
        return RowResult(energy=energy, forces=forces, stress=sigma)

    def single_points(
        self, structures: Sequence[Atoms], *, stress: bool = False, skip_failures: bool = False
    ) -> SinglePoints:
        """Every row on every structure (the model rows from one batched call per chunk).

        With ``skip_failures``, a structure the oracle cannot do (an SCF that does not converge
        at a dimer's short separation, say) gets NaN oracle energy, forces and stress instead of
        raising; the caller drops it from every row (the model's values are kept).
        """
        structures = list(structures)
        e, f, s = self._model(structures, stress)
        k, n = self.k, len(structures)
        energy = np.zeros((self.n_rows, n))
        energy[:k], energy[k] = e, e.mean(axis=0)
        forces = []
        failures: list[str] = []
        stresses = np.zeros((self.n_rows, n, 6)) if stress else None
        for i, atoms in enumerate(structures):
            try:
                ref = self.oracle_single(atoms, stress=stress)
            except Exception as exc:
                if not skip_failures:
                    raise
                log.info("oracle failed on %s: %s", atoms.get_chemical_formula(), exc)
                failures.append(f"{type(exc).__name__}: {exc}")
                nan = np.full((len(atoms), 3), np.nan)
                ref = RowResult(energy=float("nan"), forces=nan, stress=None)
            energy[k + 1, i] = ref.energy
            forces.append(np.concatenate([f[i], f[i].mean(axis=0)[None], ref.forces[None]]))
            if stresses is not None:
                stresses[:k, i], stresses[k, i] = s[:, i], s[:, i].mean(axis=0)
                stresses[k + 1, i] = ref.stress if ref.stress is not None else np.nan
        return SinglePoints(energy=energy, forces=forces, stress=stresses, failures=failures)

    def own_points(
        self, structures: Sequence[Sequence[Atoms]], *, stress: bool = False
    ) -> tuple[SinglePoints, SinglePoints]:
        """Each row on its own structures, and every row on the oracle's.

        The structures of every row (members', mean's and oracle's) go through one batched
        model call per chunk (each evaluated by all members: the mean row needs all of them on
        its structures, and the comparison with the oracle needs them on the oracle's); the
        oracle evaluates its own structures only.

        Args:
            structures: R = K + 2 lists of n structures, row r's in ``structures[r]`` (a
                grid around each row's own lattice, say); structure i has the same atoms in
                every row.
            stress: also the stresses (periodic cells).

        Returns:
            ``(own, on_oracle)``: ``own.energy[r, i]`` is row r on ``structures[r][i]``
            (forces and stress alike); ``on_oracle`` is every row on the oracle's structures
            ``structures[K + 1]`` (what :meth:`single_points` of them gives, without calling the
            oracle again): the same structures, for errors and disagreement.
        """
        k, n_rows = self.k, self.n_rows
        if len(structures) != n_rows or len({len(s) for s in structures}) != 1:
            raise ValueError(f"own_points needs {n_rows} lists of equal length")
        n = len(structures[0])
        e, f, s = self._model([a for row in structures for a in row], stress)
        # every member on every row's structures: (K, R, n), (K, R, n, 6), forces [R * n]
        e = e.reshape(k, n_rows, n)
        s = None if s is None else s.reshape(k, n_rows, n, 6)
        ref = [self.oracle_single(a, stress=stress) for a in structures[k + 1]]
        ref_e = np.array([r.energy for r in ref])
        ref_s = np.array([np.full(6, np.nan) if r.stress is None else r.stress for r in ref])

        def on(q: int) -> SinglePoints:
            """Every row on row q's structures (the oracle's entries are its own)."""
            energy = np.concatenate([e[:, q], e[:, q].mean(axis=0)[None], ref_e[None]])
            forces = [
                np.concatenate([fq, fq.mean(axis=0)[None], ref[i].forces[None]])
                for i, fq in enumerate(f[q * n : (q + 1) * n])
            ]
            sig = None
            if s is not None:
                sig = np.concatenate([s[:, q], s[:, q].mean(axis=0)[None], ref_s[None]])
            return SinglePoints(energy=energy, forces=forces, stress=sig)

        per_row = [on(q) for q in range(n_rows)]  # row q's entry of per_row[q] is its own
        own = SinglePoints(
            energy=np.stack([per_row[r].energy[r] for r in range(n_rows)]),
            forces=[np.stack([per_row[r].forces[i][r] for r in range(n_rows)]) for i in range(n)],
            stress=np.stack([per_row[r].stress[r] for r in range(n_rows)]) if stress else None,
        )
        return own, per_row[k + 1]

    def evaluate_rows(
        self, items: Sequence[tuple[Atoms, int]], *, stress: bool = False
    ) -> list[RowResult]:
        """Each ``(structure, row)`` with that row's potential: the model rows from one batched
        call (each structure by all members, the row's member or the mean kept: on small graphs
        one call of K members costs less than K calls of one), the oracle's one at a time.
        """
        out: list[RowResult | None] = [None] * len(items)
        model_idx = [i for i, (_, row) in enumerate(items) if row != self.oracle_row]
        if model_idx:
            e, f, s = self._model([items[i][0] for i in model_idx], stress)
            for j, i in enumerate(model_idx):
                row = items[i][1]
                pick = slice(None) if row == self.k else slice(row, row + 1)
                out[i] = RowResult(
                    energy=float(e[pick, j].mean()),
                    forces=f[j][pick].mean(axis=0),
                    stress=None if s is None else s[pick, j].mean(axis=0),
                )
        for i, (atoms, row) in enumerate(items):
            if row == self.oracle_row:
                out[i] = self.oracle_single(atoms, stress=stress)
        return out  # type: ignore[return-value]
