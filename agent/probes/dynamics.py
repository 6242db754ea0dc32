"""MD for the probes: every row runs the same trajectories, with common random numbers.

For each start structure and temperature (a *group*) every requested row (members, mean,
oracle) gets a walker. Rows share the initial Maxwell–Boltzmann velocities and, in NVT, the
Langevin noise (each row's state has its own ``torch.Generator`` with the same seed and the
same shapes): differences between rows are differences of their potentials, not of their luck
(common random numbers), and the oracle wrapped as a model retraces the oracle exactly.

The integrators are composed from :mod:`chemgap.agent.md`'s steps — BAOAB Langevin
(Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34: B ½, A ½, O, A ½, forces, B ½) and
velocity Verlet (Swope et al., J. Chem. Phys. 76, 637 (1982)) — with one batched model
evaluation per step for all model rows (a neighbour graph with a skin, rebuilt when an atom has
moved half of it, as the explorer does) and the oracle one walker at a time.

A walker *explodes* (MLIPAudit's ``find_explosion_frame``, instadeepai/mlipaudit
``src/mlipaudit/utils/stability.py``: temperature above T + 10 000 K, or ×100 between two
checks; plus the explorer's limits: non-finite values, |F| > 100 eV/Å, energy per atom off its
start by 5 eV, atoms closer than 0.5 × their covalent-radius sum) and is frozen at its last
good frame; an atom with no neighbour within 2 × the covalent-radius sum *detaches* (MLIPAudit's
hydrogen-loss check, generalised), which is recorded while the walker runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms, units
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from chemgap.agent.explore import MAX_ENERGY_CHANGE_PER_ATOM, MAX_FORCE
from chemgap.agent.md import (
    WalkerState,
    init_state,
    kinetic_energy,
    langevin_coefficients,
    momentum_step,
    ou_step,
    position_step,
    temperature,
)

from .potentials import Potentials

log = logging.getLogger(__name__)

__all__ = ["Run", "paired_md"]

SKIN_A = 0.5
CHECK_EVERY = 10  # steps between failure checks
MIN_DISTANCE_FACTOR = 0.5  # overlap below this × covalent-radius sum
DETACH_FACTOR = 2.0  # detached beyond this × covalent-radius sum
HOT_K = 10_000.0  # MLIPAudit: exploded above T + 10 000 K
JUMP = 100.0  # MLIPAudit: exploded when T rises ×100 between frames


@dataclass(kw_only=True)
class Run:
    """One walker: a start structure and temperature (``group``) driven by one ``row``.

    Attributes:
        group, row: which walker.
        temperature_K: target (NVT) or initial (NVE) temperature, K.
        n_atoms: atoms of the walker.
        potential: (steps + 1,) eV, potential energy after each step (NaN once frozen).
        kinetic: (steps + 1,) eV, kinetic energy after each step (NaN once frozen).
        exploded: step of the check that found an explosion, or None.
        detached: step of the first check that found a detached atom, or None.
        reason: what failed ('' when nothing did).
        last_good: the last frame that passed a check (the frame before a failure).
        frames: frames sampled every ``sample_every`` steps after ``equilibration``.
    """

    group: int
    row: int
    temperature_K: float
    n_atoms: int
    potential: np.ndarray
    kinetic: np.ndarray
    exploded: int | None = None
    detached: int | None = None
    reason: str = ""
    last_good: Atoms | None = None
    frames: list[Atoms] = field(default_factory=list)


class _ModelForces:
    """Forces on the model rows' walkers: one graph for all of them, reused within a skin."""

    def __init__(self, pot: Potentials, rows: list[int]):
        self.pot, self.rows = pot, rows
        self.model = pot.model
        self.graph_free = bool(getattr(self.model, "graph_free", False))
        self._batch = None
        self._ref: torch.Tensor | None = None

    def _graph(self, states: list[WalkerState], positions: torch.Tensor):
        moved = None if self._ref is None else (positions - self._ref).norm(dim=1).max().item()
        if self._batch is not None and moved is not None and moved <= 0.5 * SKIN_A:
            return self._batch
        structures = [s.atoms(w) for s in states for w in range(s.n_walkers)]
        m = self.model
        if self.graph_free:
            self._batch = m.make_batch(structures)
        else:
            from chemgap.models.data import make_batch

            self._batch = make_batch(structures, m.z_table, m.r_max + SKIN_A, m.dtype, m.device)
            self._ref = positions.clone()
        return self._batch

    def __call__(self, states: list[WalkerState]) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Per state: (W,) energies (eV) and (n_atoms, 3) forces (eV/Å, float64)."""
        positions = torch.cat([s.positions for s in states])
        batch = self._graph(states, positions)
        dtype = getattr(torch, self.model.dtype)
        batch.data["positions"] = positions.to(device=self.model.device, dtype=dtype)
        out = self.model.evaluate(batch)
        e, f = out.energy.double().cpu(), out.forces.double().cpu()
        results, w0, a0 = [], 0, 0
        for row, s in zip(self.rows, states, strict=True):
            w1, a1 = w0 + s.n_walkers, a0 + len(s.positions)
            pick = slice(None) if row == self.pot.k else slice(row, row + 1)
            results.append((e[pick, w0:w1].mean(0).numpy(), f[pick, a0:a1].mean(0)))
            w0, a0 = w1, a1
        return results


def _oracle_forces(pot: Potentials, state: WalkerState) -> tuple[np.ndarray, torch.Tensor]:
    energies, forces = [], []
    for w in range(state.n_walkers):
        res = pot.oracle_single(state.atoms(w))
        energies.append(res.energy)
        forces.append(res.forces)
    return np.array(energies), torch.tensor(np.concatenate(forces), dtype=torch.float64)


def _geometry_problem(atoms: Atoms) -> tuple[str, str]:
    """('overlap' | '', 'detached' | '') for one frame."""
    if len(atoms) < 2:
        return "", ""
    rc = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, DETACH_FACTOR * rc)
    overlap = bool(len(d) and (d / (rc[i] + rc[j])).min() < MIN_DISTANCE_FACTOR)
    detached = len(np.unique(i)) < len(atoms)
    return ("overlap" if overlap else ""), ("detached" if detached else "")


class _Engine:
    """The lockstep integrator over one state per row."""

    def __init__(self, pot: Potentials, rows: list[int], template: WalkerState, seed: int):
        self.pot, self.rows = pot, rows
        self.states = [_clone(template) for _ in rows]
        self.gens = [torch.Generator().manual_seed(seed) for _ in rows]
        self.model_idx = [i for i, r in enumerate(rows) if r != pot.oracle_row]
        self.model = _ModelForces(pot, [rows[i] for i in self.model_idx])
        self.frozen = [np.zeros(template.n_walkers, dtype=bool) for _ in rows]
        self.good: list[list[Atoms]] = [
            [s.atoms(w) for w in range(s.n_walkers)] for s in self.states
        ]

    def forces(self) -> list[tuple[np.ndarray, torch.Tensor]]:
        out: list = [None] * len(self.rows)
        if self.model_idx:
            for i, res in zip(
                self.model_idx, self.model([self.states[i] for i in self.model_idx]), strict=True
            ):
                out[i] = res
        for i, r in enumerate(self.rows):
            if r == self.pot.oracle_row:
                out[i] = _oracle_forces(self.pot, self.states[i])
        return out

    def restore_frozen(self) -> None:
        """Hold exploded walkers at their last good frame, at rest."""
        for i, s in enumerate(self.states):
            for w in np.flatnonzero(self.frozen[i]):
                sl = s.walker_slice(int(w))
                s.positions[sl] = torch.tensor(self.good[i][w].positions, dtype=torch.float64)
                s.velocities[sl] = 0.0


def _clone(s: WalkerState) -> WalkerState:
    return WalkerState(
        positions=s.positions.clone(),
        velocities=s.velocities.clone(),
        masses=s.masses.clone(),
        numbers=s.numbers.copy(),
        system_idx=s.system_idx.copy(),
        cells=s.cells.copy(),
        pbc=s.pbc.copy(),
        temperature_K=s.temperature_K.copy(),
        friction=s.friction.copy(),
        step=s.step.copy(),
        energy0=s.energy0.copy(),
    )


def _check(engine: _Engine, runs: list[list[Run]], out: list, step: int, temps: list[np.ndarray]):
    """Failure checks of every running walker after ``step``; updates runs and frozen flags."""
    for i, s in enumerate(engine.states):
        t_now = temperature(s)
        energy, forces = out[i]
        for w in range(s.n_walkers):
            run = runs[i][w]
            if engine.frozen[i][w]:
                continue
            sl = s.walker_slice(w)
            atoms = s.atoms(w)
            reason = _explosion(run, energy[w], forces[sl], t_now[w], temps[i][w], atoms)
            if reason:
                run.exploded, run.reason = step, reason
                engine.frozen[i][w] = True
                continue
            if run.detached is None and _geometry_problem(atoms)[1]:
                run.detached, run.reason = step, "an atom detached"
            engine.good[i][w] = atoms
            run.last_good = atoms
        temps[i] = np.where(engine.frozen[i], temps[i], t_now)


def _explosion(
    run: Run, energy: float, forces: torch.Tensor, t_now: float, t_prev: float, atoms: Atoms
) -> str:
    """Why this frame counts as an explosion ('' when it does not)."""
    e0 = run.potential[0]
    if not np.isfinite(energy) or not torch.isfinite(forces).all() or not np.isfinite(t_now):
        return "non-finite energy or forces"
    if abs(energy - e0) / run.n_atoms > MAX_ENERGY_CHANGE_PER_ATOM:
        return f"energy changed by more than {MAX_ENERGY_CHANGE_PER_ATOM:g} eV/atom"
    if float(forces.norm(dim=1).max()) > MAX_FORCE:
        return f"a force above {MAX_FORCE:g} eV/Å"
    if t_now > run.temperature_K + HOT_K or (t_prev > 1.0 and t_now > JUMP * t_prev):
        return f"temperature jumped to {t_now:.0f} K"
    if _geometry_problem(atoms)[0]:
        return f"atoms closer than {MIN_DISTANCE_FACTOR:g} × their covalent radii"
    return ""


def paired_md(
    pot: Potentials,
    starts: Sequence[Atoms],
    temperatures_K: Sequence[float],
    rows: Sequence[int],
    *,
    steps: int,
    timestep_fs: float,
    friction_per_fs: float | None,
    seed: int,
    sample_every: int = 0,
    equilibration: int = 0,
) -> list[Run]:
    """MD of every (start, temperature) group with every row of ``rows``, in lockstep.

    Args:
        pot: the rows.
        starts: start structures.
        temperatures_K: each start runs at each temperature (groups: start-major).
        rows: which rows run (members, ``pot.model_row``, ``pot.oracle_row``).
        steps: MD steps.
        timestep_fs: fs.
        friction_per_fs: Langevin friction (1/fs) for NVT; None for NVE (velocity Verlet).
        seed: velocities and noise (the same for every row).
        sample_every: keep a frame every this many steps after ``equilibration`` (0: none).
        equilibration: steps before frames are kept.

    Returns:
        One :class:`Run` per group and row, group-major.
    """
    groups = [(a, t) for a in starts for t in temperatures_K]
    rows = list(rows)
    template = init_state(
        [a for a, _ in groups],
        [t for _, t in groups],
        friction_per_fs=friction_per_fs or 0.0,
        rng=np.random.default_rng(seed),
    )
    engine = _Engine(pot, rows, template, seed)
    dt = timestep_fs * units.fs
    coeffs = [langevin_coefficients(s, dt) for s in engine.states] if friction_per_fs else None
    out = engine.forces()
    runs = [
        [
            Run(
                group=w,
                row=r,
                temperature_K=float(groups[w][1]),
                n_atoms=len(groups[w][0]),
                potential=np.full(steps + 1, np.nan),
                kinetic=np.full(steps + 1, np.nan),
                last_good=engine.good[i][w],
            )
            for w in range(template.n_walkers)
        ]
        for i, r in enumerate(rows)
    ]
    _record(engine, runs, out, 0, sample_every, equilibration)
    temps = [temperature(s) for s in engine.states]
    for step in range(1, steps + 1):
        out = _step(engine, out, dt, coeffs)
        _record(engine, runs, out, step, sample_every, equilibration)
        if step % CHECK_EVERY == 0 or step == steps:
            _check(engine, runs, out, step, temps)
        if all(f.all() for f in engine.frozen):
            break
    return [runs[i][w] for w in range(template.n_walkers) for i in range(len(rows))]


def _step(engine: _Engine, out: list, dt: float, coeffs: list | None) -> list:
    """One BAOAB (``coeffs`` given) or velocity-Verlet step of every row's state."""
    half = 0.5 * dt
    for i, s in enumerate(engine.states):
        momentum_step(s, out[i][1], half)
        if coeffs is None:
            position_step(s, dt)
        else:
            position_step(s, half)
            ou_step(s, coeffs[i].c1, coeffs[i].c2, engine.gens[i])
            position_step(s, half)
    engine.restore_frozen()
    out = engine.forces()
    for i, s in enumerate(engine.states):
        momentum_step(s, out[i][1], half)
        s.step += 1
    engine.restore_frozen()
    return out


def _record(
    engine: _Engine, runs: list[list[Run]], out: list, step: int, every: int, equil: int
) -> None:
    sample = every > 0 and step >= equil and (step - equil) % every == 0
    for i, s in enumerate(engine.states):
        ke = kinetic_energy(s)
        for w in range(s.n_walkers):
            if engine.frozen[i][w]:
                continue
            runs[i][w].potential[step] = out[i][0][w]
            runs[i][w].kinetic[step] = ke[w]
            if sample:
                runs[i][w].frames.append(s.atoms(w))
