"""Batched multi-walker Langevin MD driven by the ensemble; frames outside the trust window flagged.

All W walkers (any sizes, compositions, periodic or not) form one disjoint graph; every step
evaluates all K ensemble members on it once, the ensemble-mean force drives BAOAB Langevin
dynamics (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34; the steps are
:mod:`chemgap.agent.md`'s) with a temperature and friction per walker, and the per-atom force
spread is the uncertainty, judged against the trust window of :mod:`chemgap.agent.trust`. The
graph is built with a cutoff of ``r_max + skin`` and reused while no atom has moved more than
``skin / 2`` since it was built: MACE's polynomial envelope is exactly zero beyond ``r_max``, so
the extra edges change nothing and the forces equal those of a fresh graph.

Long-range members (:class:`chemgap.models.longrange.LongRangeMACE`) run unchanged on the same
graph: each walker's total charge (``info["charge"]`` of its start structure, default 0; see
:class:`chemgap.agent.md.WalkerState`) goes onto the graph, so learned charges sum to it, and the
members' charges of the step a frame comes from are written onto candidate and md_failure
frames (``pred_charges``, ``pred_charges_std``: per-atom mean and spread over the members, e).

Per-walker stops: a frame above the upper trust level is recorded as a candidate and the walker
restarts from its last accurate frame; an unphysical geometry, NaN or exploding energy is an
``md_failure`` (kept with its last frames: a model that blows up is itself a finding) followed by
the same restart; every walker stops at the step cap. The last accurate frame is stored with its
ensemble forces and energy, so a restart costs no evaluation, the energy-drift reference becomes
that frame's energy, and the graph is kept when the restored frame lies within the skin of where
it was built.

:func:`explore_groups` splits the walkers into tasks on an executor
(:mod:`chemgap.common.tasks`) when that pays; :func:`explore_and_select` adds the trust levels
and the selection of a labelling batch (what ``chemgap explore`` does).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.data import covalent_radii

from chemgap.agent.md import (
    WalkerState,
    baoab_step,
    init_state,
    kinetic_energy,
    langevin_coefficients,
    maxwell_boltzmann,
)
from chemgap.agent.selection import Candidates, select
from chemgap.agent.trust import TrustLevels, trust_levels
from chemgap.campaigns.spec import ExplorationConfig, TrustMode
from chemgap.common.tasks import Executor, Task

__all__ = [
    "BatchedForceField",
    "ExplorationResult",
    "ExploreSelection",
    "MDFailure",
    "StepCheck",
    "explore",
    "explore_and_select",
    "explore_groups",
    "explore_task",
    "walker_defaults",
]

log = logging.getLogger(__name__)

# a walker whose energy per atom leaves that of the frame it (re)started from by more than
# this, eV/atom, has exploded
MAX_ENERGY_CHANGE_PER_ATOM = 5.0
MAX_FORCE = 100.0  # eV/Å; beyond it the dynamics is meaningless
LAST_FRAMES = 5  # frames kept with an md_failure
CANDIDATE_STRIDE = 10  # steps between two candidate frames of the same walker


# --------------------------------------------------------------------------- forces
class BatchedForceField:
    """All ensemble members on the walkers' graph, with neighbour-list reuse.

    ``evaluate(state)`` returns the ensemble-mean energy per walker (W,) eV, mean forces
    (n_atoms, 3) eV/Å and the per-atom force std (n_atoms,) eV/Å (sqrt of the summed
    per-component variance over members, as DP-GEN's ``max_devi_f`` uses). The graph carries
    each walker's total charge (``state.charge``, e); members with learned charges leave theirs,
    (K, n_atoms) e, in ``charges`` after each evaluation (None for members without).
    """

    def __init__(self, ensemble: Any, skin_A: float = 0.5):
        self.ensemble = ensemble
        self.skin = float(skin_A)
        self.dtype = getattr(torch, ensemble.dtype)
        self._batch = None
        self._ref: torch.Tensor | None = None
        self._edges: tuple[torch.Tensor, ...] | None = None
        self.rebuilds = 0
        self.charges: torch.Tensor | None = None

    def _graph(self, state: WalkerState):
        from chemgap.models.data import CHARGE_KEY, make_batch

        moved = (
            None
            if self._ref is None or self._batch is None or len(self._ref) != len(state.positions)
            else (state.positions - self._ref).norm(dim=1).max().item()
        )
        if moved is None or moved > 0.5 * self.skin:
            atoms = [
                Atoms(
                    state.numbers[s],
                    state.positions[s].numpy(),
                    cell=state.cells[w],
                    pbc=state.pbc[w],
                    info={CHARGE_KEY: float(state.charge[w])},
                )
                for w in range(state.n_walkers)
                for s in [state.walker_slice(w)]
            ]
            e = self.ensemble
            self._batch = make_batch(atoms, e.z_table, e.r_max + self.skin, e.dtype, e.device)
            self._ref = state.positions.clone()
            self.rebuilds += 1
            ei = self._batch.data["edge_index"].cpu()
            rc = torch.as_tensor(covalent_radii[state.numbers], dtype=torch.float64)
            self._edges = (
                ei[0],
                ei[1],
                self._batch.data["shifts"].cpu().double(),
                rc[ei[0]] + rc[ei[1]],
                torch.as_tensor(state.system_idx)[ei[0]],
            )
        return self._batch

    def min_distance_ratio(self, state: WalkerState) -> np.ndarray:
        """(W,) smallest d_ij / (r_cov,i + r_cov,j) over the current graph's edges of each
        walker (inf for a walker without edges).
        """
        self._graph(state)
        i, j, shifts, rc_sum, walker = self._edges
        d = (state.positions[j] - state.positions[i] + shifts).norm(dim=1)
        out = torch.full((state.n_walkers,), torch.inf, dtype=torch.float64)
        return out.scatter_reduce_(0, walker, d / rc_sum, "amin").numpy()

    def evaluate(self, state: WalkerState) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """(W,) mean energy, eV; (n_atoms, 3) mean forces, eV/Å (float64, CPU); (n_atoms,) force
        std, eV/Å: a force function for :mod:`chemgap.agent.md`'s steps. The members' charges,
        if any, are kept in ``charges``.
        """
        batch = self._graph(state)
        batch.data["positions"] = state.positions.to(device=self.ensemble.device, dtype=self.dtype)
        out = self.ensemble.evaluate(batch)
        self.charges = getattr(out, "charges", None)
        energy = out.energy.double().mean(0).cpu().numpy()
        forces = out.forces.double()
        std = forces.var(dim=0, unbiased=False).sum(-1).sqrt().cpu().numpy()
        return energy, forces.mean(0).cpu(), std


# --------------------------------------------------------------------------- results
@dataclass(kw_only=True)
class MDFailure:
    """A walker the model drove into an unphysical state."""

    walker: int
    step: int
    reason: str
    frames: list[Atoms]


@dataclass(kw_only=True)
class ExplorationResult:
    """What one exploration found.

    Attributes:
        candidates: frames above the lower trust level, with ``uncertainty`` (max calibrated
            per-atom force std, eV/Å), ``walker``, ``group``, ``temperature_K``, ``step`` and
            ``trust`` ('candidate' or 'beyond') in ``info``; a charged walker's total charge in
            ``info["charge"]``; with members that learn charges, their per-atom mean and std
            over the members (e) in ``arrays["pred_charges"]`` / ``arrays["pred_charges_std"]``.
        failures: md_failures with their last frames (annotated the same way).
        visited: every walker's frame every ``CANDIDATE_STRIDE`` steps that is not an
            md_failure, whatever its uncertainty (annotated the same way, ``trust`` 'accurate',
            'candidate' or 'beyond'): a uniform sample of the trajectories, from which the
            campaign draws its holdout and calibration labels (the distribution the model is
            used on, not the top of a selection).
        counts: per walker group, frames ``{"accurate": n, "candidate": n, "failed": n}``.
        rebuilds: neighbour-graph builds; steps: walker-steps done.
    """

    candidates: list[Atoms] = field(default_factory=list)
    failures: list[MDFailure] = field(default_factory=list)
    visited: list[Atoms] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rebuilds: int = 0
    steps: int = 0

    def fractions(self) -> dict[str, dict[str, float]]:
        """Per walker group, the fraction of its frames that were accurate, candidate, failed."""
        out = {}
        for group, c in self.counts.items():
            total = max(sum(c.values()), 1)
            out[group] = {k: v / total for k, v in c.items()}
        return out

    def merge(self, other: ExplorationResult) -> None:
        """Add ``other``'s frames, counts, builds and steps to this result (in place)."""
        self.candidates += other.candidates
        self.failures += other.failures
        self.visited += other.visited
        for g, c in other.counts.items():
            mine = self.counts.setdefault(g, {"accurate": 0, "candidate": 0, "failed": 0})
            for k, v in c.items():
                mine[k] += v
        self.rebuilds += other.rebuilds
        self.steps += other.steps


# --------------------------------------------------------------------------- the explorer
def walker_defaults(
    structures: Sequence[Atoms],
    cfg: ExplorationConfig,
    temperatures_K: Sequence[float] | None,
    groups: Sequence[str] | None,
) -> tuple[list[float], list[str]]:
    """Per-walker temperatures (``cfg.temperatures_K`` cycled) and group labels
    (``"<formula> <T> K"``) where the caller gives none.
    """
    temps = (
        list(temperatures_K)
        if temperatures_K is not None
        else [cfg.temperatures_K[i % len(cfg.temperatures_K)] for i in range(len(structures))]
    )
    if groups is None:
        groups = [
            f"{a.get_chemical_formula()} {t:g} K" for a, t in zip(structures, temps, strict=True)
        ]
    return temps, list(groups)


@dataclass(kw_only=True)
class StepCheck:
    """Per-walker verdict on one MD step; every array (W,).

    Attributes:
        over_lower, over_upper: some atom's calibrated force std exceeds its lower / upper level.
        max_std: largest calibrated per-atom force std, eV/Å.
        nonfinite: energy or forces not finite; too_close: a distance below
            ``min_distance_factor`` x the covalent-radius sum; exploding: a force above
            ``MAX_FORCE`` or the energy per atom off that of the walker's (re)start frame by
            ``MAX_ENERGY_CHANGE_PER_ATOM``.
        bad: any of the three (derived).
    """

    over_lower: np.ndarray
    over_upper: np.ndarray
    max_std: np.ndarray
    nonfinite: np.ndarray
    too_close: np.ndarray
    exploding: np.ndarray
    bad: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bad = self.nonfinite | self.too_close | self.exploding

    def reason(self, i: int) -> str:
        """Why walker ``i`` failed (the first of the three tests it fails)."""
        if self.nonfinite[i]:
            return "non-finite energy or forces"
        return "atoms too close" if self.too_close[i] else "exploding energy or forces"


class _Exploration:
    """The bookkeeping of one :func:`explore` run around the MD state: trust checks, frames,
    failures, the last accurate frame of each walker and restarts to it.
    """

    def __init__(
        self,
        ensemble: Any,
        structures: list[Atoms],
        cfg: ExplorationConfig,
        temps: list[float],
        groups: list[str],
        levels: TrustLevels,
        rng: np.random.Generator,
    ):
        self.cfg, self.temps, self.groups, self.rng = cfg, temps, groups, rng
        self.state = init_state(structures, temps, friction_per_fs=cfg.friction_per_fs, rng=rng)
        self.ff = BatchedForceField(ensemble, cfg.neighbour_skin_A)
        numbers = self.state.numbers
        cal = getattr(ensemble, "calibration", None)
        self.scale = cal.force_scales_for(numbers) if cal is not None else np.ones(len(numbers))
        self.lo_atom, self.hi_atom = levels.per_atom(numbers)
        w = self.state.n_walkers
        self.n_atoms = np.bincount(self.state.system_idx, minlength=w)
        self.result = ExplorationResult(
            counts={g: {"accurate": 0, "candidate": 0, "failed": 0} for g in groups}
        )
        # the last LAST_FRAMES steps, all walkers at once: (loop step, state.step, positions,
        # the members' (K, n_atoms) charges there or None)
        self.recent: deque[tuple[int, np.ndarray, torch.Tensor, torch.Tensor | None]] = deque(
            maxlen=LAST_FRAMES
        )
        self.failed_at = np.full(w, -1)  # loop step of each walker's last md_failure
        self.last_candidate = np.full(w, -CANDIDATE_STRIDE)

    def start(self) -> torch.Tensor:
        """First evaluation: the reference energies and the first accurate frames; returns the
        (n_atoms, 3) forces, eV/Å.
        """
        energy, forces, _ = self.ff.evaluate(self.state)
        self.state.energy0 = energy / self.n_atoms
        # the last accurate frame of each walker with its forces and (W,) energy per atom, eV:
        # a restart needs no evaluation and takes that frame's energy as its new reference
        self.safe_positions = self.state.positions.clone()
        self.safe_forces = forces.clone()
        self.safe_energy = self.state.energy0.copy()
        return forces

    def check(self, energy: np.ndarray, forces: torch.Tensor, std: np.ndarray) -> StepCheck:
        """The trust window and the md_failure tests on the step just done."""
        state, w = self.state, self.state.n_walkers
        idx = state.system_idx
        std_cal = std * self.scale
        over_lo = np.zeros(w, dtype=bool)
        over_hi = np.zeros(w, dtype=bool)
        np.logical_or.at(over_lo, idx, std_cal > self.lo_atom)
        np.logical_or.at(over_hi, idx, std_cal > self.hi_atom)
        max_std = np.zeros(w)
        np.maximum.at(max_std, idx, std_cal)
        fmax = np.zeros(w)
        np.maximum.at(fmax, idx, forces.norm(dim=1).numpy())
        de = np.abs(energy / self.n_atoms - state.energy0)
        return StepCheck(
            over_lower=over_lo,
            over_upper=over_hi,
            max_std=max_std,
            nonfinite=~np.isfinite(energy) | ~np.isfinite(fmax),
            too_close=self.ff.min_distance_ratio(state) < self.cfg.min_distance_factor,
            exploding=(fmax > MAX_FORCE) | (de > MAX_ENERGY_CHANGE_PER_ATOM),
        )

    def frame(
        self,
        i: int,
        unc: float,
        positions: torch.Tensor | None = None,
        at_step: int | None = None,
        charges: torch.Tensor | None = None,
    ) -> Atoms:
        """Walker ``i`` now (or at ``positions`` of step ``at_step``, where the members' charges
        were ``charges`` (K, n_atoms) e) with its provenance and the members' charges.
        """
        atoms = self.state.atoms(i)
        if positions is None:
            charges = getattr(self.ff, "charges", None)
        else:
            atoms.positions = positions.numpy()
        if charges is not None:
            q = charges[:, self.state.walker_slice(i)].double().cpu()
            atoms.arrays["pred_charges"] = q.mean(0).numpy()
            atoms.arrays["pred_charges_std"] = q.std(0, unbiased=False).numpy()
        atoms.info.update(
            walker=i,
            group=self.groups[i],
            temperature_K=float(self.temps[i]),
            step=int(self.state.step[i] if at_step is None else at_step),
            uncertainty=float(unc),
            source="explore",
        )
        return atoms

    def restart(self, i: int, forces: torch.Tensor) -> None:
        """Walker ``i`` back to its last accurate frame, its stored forces written into
        ``forces`` in place, fresh velocities; the graph is rebuilt by the usual skin test if
        the frame is far from where it was built.

        The walker's reference energy for the explosion test (``state.energy0``, eV/atom)
        becomes that frame's energy: the drift is measured from where the walker starts again,
        not from where it first started or from the frame it was stopped at.
        """
        s = self.state.walker_slice(i)
        self.state.positions[s] = self.safe_positions[s]
        forces[s] = self.safe_forces[s]
        self.state.energy0[i] = self.safe_energy[i]
        v = maxwell_boltzmann(self.state.masses[s].numpy(), self.temps[i], self.rng)
        self.state.velocities[s] = torch.from_numpy(v)

    def fail(self, i: int, step: int, reason: str, unc: float) -> None:
        """Record walker ``i``'s md_failure at loop step ``step`` with its frames since its
        previous failure (at most LAST_FRAMES).
        """
        s = self.state.walker_slice(i)
        frames = [
            self.frame(i, unc, positions[s], int(at[i]), charges)
            for k, at, positions, charges in self.recent
            if k > self.failed_at[i]
        ]
        self.failed_at[i] = step
        at = int(self.state.step[i])
        self.result.failures.append(MDFailure(walker=i, step=at, reason=reason, frames=frames))
        self.result.counts[self.groups[i]]["failed"] += 1
        log.info("walker %d (%s): md_failure at step %d: %s", i, self.groups[i], at, reason)

    def candidate(self, i: int, step: int, unc: float, trust: str) -> None:
        frame = self.frame(i, unc)
        frame.info["trust"] = trust
        self.result.candidates.append(frame)
        self.last_candidate[i] = step

    def visit(self, i: int, step: int, check: StepCheck, forces: torch.Tensor, stop: bool) -> bool:
        """Classify walker ``i`` after loop step ``step``: md_failure, beyond the upper level
        (restart if ``stop``), candidate, or accurate (returns True).
        """
        counts = self.result.counts[self.groups[i]]
        unc = check.max_std[i]
        if step % CANDIDATE_STRIDE == 0 and not check.bad[i]:
            frame = self.frame(i, unc)
            frame.info["trust"] = (
                "beyond"
                if check.over_upper[i]
                else "candidate"
                if check.over_lower[i]
                else "accurate"
            )
            self.result.visited.append(frame)
        if check.bad[i]:
            self.fail(i, step, check.reason(i), unc)
            self.restart(i, forces)
        elif check.over_upper[i] and stop:
            self.candidate(i, step, unc, "beyond")
            counts["candidate"] += 1
            self.restart(i, forces)
        elif check.over_lower[i]:
            counts["candidate"] += 1
            if step - self.last_candidate[i] >= CANDIDATE_STRIDE:
                self.candidate(i, step, unc, "candidate")
        else:
            counts["accurate"] += 1
            return True
        return False

    def review(
        self, step: int, energy: np.ndarray, forces: torch.Tensor, std: np.ndarray, stop: bool
    ) -> None:
        """Judge loop step ``step`` for every walker; failed and untrusted walkers restart
        (``forces`` is updated in place), accurate ones become their last accurate frame.
        """
        state = self.state
        charges = getattr(self.ff, "charges", None)  # stand-in force fields may have none
        self.recent.append((step, state.step.copy(), state.positions.clone(), charges))
        check = self.check(energy, forces, std)
        accurate = np.array(
            [self.visit(i, step, check, forces, stop) for i in range(state.n_walkers)]
        )
        keep = torch.from_numpy(accurate[state.system_idx])[:, None]
        torch.where(keep, state.positions, self.safe_positions, out=self.safe_positions)
        torch.where(keep, forces, self.safe_forces, out=self.safe_forces)
        self.safe_energy = np.where(accurate, energy / self.n_atoms, self.safe_energy)


def explore(
    ensemble: Any,
    structures: Sequence[Atoms],
    cfg: ExplorationConfig,
    *,
    temperatures_K: Sequence[float] | None = None,
    groups: Sequence[str] | None = None,
    levels: TrustLevels | None = None,
    rng: np.random.Generator | None = None,
    steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_on_uncertainty: bool = True,
    energy_log: list[np.ndarray] | None = None,
) -> ExplorationResult:
    """Run one batched MD exploration; every walker does ``steps`` steps (default ``cfg.steps``).

    Args:
        ensemble: a :class:`chemgap.models.ensemble.Ensemble` (its calibration scales the std).
        structures: one start structure per walker.
        cfg: timestep, friction, neighbour skin, min_distance_factor and the default trust
            levels and temperatures.
        temperatures_K: per walker (default: ``cfg.temperatures_K`` cycled over the walkers).
        groups: per-walker group label for the accurate/candidate/failed table (default:
            ``"<formula> <T> K"``).
        levels: trust levels (default: ``cfg.trust`` fixed levels).
        rng: velocities, restarts and the seed of the Langevin noise (default: seed 0).
        steps: MD steps per walker (default ``cfg.steps``).
        progress: called as ``progress(step, total_steps)``.
        stop_on_uncertainty: restart a walker above the upper level (False: only record).
        energy_log: if given, the total energy (W,) eV of every step is appended (NVE tests).
    """
    rng = rng or np.random.default_rng(0)
    structures = list(structures)
    if not structures:
        raise ValueError("explore: no walker structures")
    temps, groups = walker_defaults(structures, cfg, temperatures_K, groups)
    run = _Exploration(
        ensemble, structures, cfg, temps, groups, levels or trust_levels(cfg.trust), rng
    )
    state, w = run.state, len(structures)
    n_steps = int(steps if steps is not None else cfg.steps)
    dt = cfg.timestep_fs * units.fs
    coeffs = langevin_coefficients(state, dt)
    noise = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
    forces = run.start()
    for step in range(n_steps):
        energy, forces, std = baoab_step(state, forces, run.ff.evaluate, dt, coeffs, noise)
        run.result.steps += w
        if energy_log is not None:
            energy_log.append(energy + kinetic_energy(state))
        run.review(step, energy, forces, std, stop_on_uncertainty)
        if progress is not None:
            progress(step + 1, n_steps)
    run.result.rebuilds = run.ff.rebuilds
    return run.result


# --------------------------------------------------------------------------- fan-out
def explore_task(
    model_dir: str, structures: list[Atoms], cfg_json: str, kwargs: dict
) -> ExplorationResult:
    """One walker group as a task: load the ensemble from disk (one torch thread), explore,
    return the result (walker indices local to ``structures``).
    """
    from chemgap.models.ensemble import Ensemble

    torch.set_num_threads(1)
    ensemble = Ensemble.load(model_dir)
    cfg = ExplorationConfig.model_validate_json(cfg_json)
    return explore(ensemble, structures, cfg, **kwargs)


def _merge_chunks(chunks: list[np.ndarray], parts: list[ExplorationResult]) -> ExplorationResult:
    """One result from per-chunk results, walker indices mapped back to the full list."""
    merged = ExplorationResult(counts={})
    for idx, part in zip(chunks, parts, strict=True):
        for frame in (*part.candidates, *part.visited):
            frame.info["walker"] = int(idx[frame.info["walker"]])
        for failure in part.failures:
            failure.walker = int(idx[failure.walker])
            for frame in failure.frames:
                frame.info["walker"] = failure.walker
        merged.merge(part)
    return merged


def explore_groups(
    ensemble: Any,
    structures: Sequence[Atoms],
    cfg: ExplorationConfig,
    *,
    n_tasks: int = 1,
    task_tag: str = "",
    temperatures_K: Sequence[float] | None = None,
    groups: Sequence[str] | None = None,
    levels: TrustLevels | None = None,
    seed: int = 0,
    steps: int | None = None,
    executor: Executor | None = None,
) -> ExplorationResult:
    """Explore with the walkers split into ``n_tasks`` chunks, one :func:`explore_task` each
    (named ``explore walkers a-b/W · <tag>``, one CPU), on ``executor``.

    One in-process :func:`explore` over all walkers (rng seeded with ``seed``) instead when
    ``executor`` is None or not parallel, when there is one chunk, or when the ensemble has no
    ``path`` to load it from in a task. Chunk ``k`` is seeded with ``[seed, k]``. Walker indices
    in the result refer to ``structures``; counts, candidates and failures come in chunk order.
    """
    structures = list(structures)
    w = len(structures)
    temps, groups = walker_defaults(structures, cfg, temperatures_K, groups)
    chunks = [c for c in np.array_split(np.arange(w), max(1, min(n_tasks, w))) if len(c)]
    path = getattr(ensemble, "path", None)
    if executor is None or not executor.parallel or len(chunks) <= 1 or path is None:
        rng = np.random.default_rng(seed)
        return explore(
            ensemble,
            structures,
            cfg,
            temperatures_K=temps,
            groups=groups,
            levels=levels,
            rng=rng,
            steps=steps,
        )
    tasks = []
    for k, idx in enumerate(chunks):
        kwargs = dict(
            temperatures_K=[temps[i] for i in idx],
            groups=[groups[i] for i in idx],
            levels=levels,
            rng=np.random.default_rng([seed, k]),
            steps=steps,
        )
        name = f"explore walkers {idx[0] + 1}-{idx[-1] + 1}/{w}" + (
            f" · {task_tag}" if task_tag else ""
        )
        args = (str(path), [structures[i] for i in idx], cfg.model_dump_json(), kwargs)
        tasks.append(Task(fn=explore_task, args=args, name=name, num_cpus=1))
    parts: list[ExplorationResult | None] = [None] * len(tasks)
    for done in executor.run(tasks):
        parts[done.index] = done.result()
    return _merge_chunks(chunks, parts)


# --------------------------------------------------------------------------- explore and select
@dataclass(kw_only=True)
class ExploreSelection:
    """An exploration and the labelling batch chosen from it.

    Attributes:
        result: the exploration.
        selected: the chosen candidates (``info['md_failure'] = False``), in the order picked.
        failure_frames: the last frame of each md_failure (``info['md_failure'] = True``).
        levels: the trust levels used.
    """

    result: ExplorationResult
    selected: list[Atoms]
    failure_frames: list[Atoms]
    levels: TrustLevels


def _select(
    ensemble: Any, candidates: list[Atoms], budget: int, strategy: str, seed: int
) -> list[Atoms]:
    """Up to ``budget`` of ``candidates`` by ``strategy`` on the ensemble's descriptors."""
    if not candidates:
        return []
    sel = select(
        Candidates(
            uncertainty=[c.info["uncertainty"] for c in candidates],
            descriptors=ensemble.descriptors(candidates),
            elements=[frozenset(c.get_chemical_symbols()) for c in candidates],
        ),
        budget=budget,
        strategy=strategy,
        rng=np.random.default_rng(seed),
    )
    return [candidates[i] for i in sel.indices]


def explore_and_select(
    ensemble: Any,
    structures: Sequence[Atoms],
    cfg: ExplorationConfig,
    *,
    budget: int,
    strategy: str = "diverse",
    holdout: Sequence[Atoms] | None = None,
    seed: int = 0,
    n_tasks: int = 1,
    executor: Executor | None = None,
) -> ExploreSelection:
    """Explore from ``structures`` (one walker each) and select up to ``budget`` candidates.

    Trust levels: with ``holdout`` (in-distribution structures), calibrated per element from
    the ensemble's calibrated force std on them (``cfg.trust``'s quantile and upper ratio,
    whatever ``cfg.trust.mode`` says); without, ``cfg.trust``'s fixed levels. The walkers run
    by :func:`explore_groups` (``seed``, ``n_tasks``, ``executor``); the batch is chosen by
    :func:`chemgap.agent.selection.select` with ``strategy`` on the ensemble's descriptors,
    rng seeded with ``seed``.

    Raises:
        ValueError: a structure holds an element the ensemble was not trained on.
    """
    structures = list(structures)
    missing = {s for a in structures for s in a.get_chemical_symbols()} - set(ensemble.elements)
    if missing:
        raise ValueError(
            f"element(s) {', '.join(sorted(missing))} are not in the ensemble's elements "
            f"({', '.join(ensemble.elements)})"
        )
    if holdout is not None:
        ref = ensemble.predict(list(holdout))
        levels = trust_levels(
            cfg.trust.model_copy(update={"mode": TrustMode.CALIBRATED}),
            force_std_atom_cal=ref.force_std_atom_cal,
            numbers=ref.numbers,
            system_idx=ref.system_idx,
        )
    else:
        levels = trust_levels(cfg.trust)  # without data: the fixed levels
    result = explore_groups(
        ensemble, structures, cfg, n_tasks=n_tasks, levels=levels, seed=seed, executor=executor
    )
    selected = _select(ensemble, result.candidates, budget, strategy, seed)
    for atoms in selected:
        atoms.info["md_failure"] = False
    failure_frames = [f.frames[-1] for f in result.failures]
    for atoms in failure_frames:
        atoms.info["md_failure"] = True
    return ExploreSelection(
        result=result, selected=selected, failure_frames=failure_frames, levels=levels
    )
