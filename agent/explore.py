"""Batched multi-walker Langevin MD driven by the ensemble; frames outside the trust window flagged.

All W walkers (any sizes, compositions, periodic or not) form one disjoint graph; every step
evaluates all K ensemble members on it once, the ensemble-mean force drives BAOAB Langevin
dynamics (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34) with a temperature and
friction per walker, and the per-atom force spread is the uncertainty. The graph is built with a
cutoff of ``r_max + skin`` and reused while no atom has moved more than ``skin / 2`` since it was
built: MACE's polynomial envelope is exactly zero beyond ``r_max``, so the extra edges change
nothing and the forces equal those of a fresh graph.

Per-walker stops: a frame above the upper trust level is recorded as a candidate and the walker
restarts from its last accurate frame; an unphysical geometry, NaN or exploding energy is an
``md_failure`` (kept with its last frames: a model that blows up is itself a finding) followed by
the same restart; every walker stops at the step cap. The last accurate frame is stored with its
ensemble forces, so a restart costs no evaluation, and the graph is kept when the restored frame
lies within the skin of where it was built.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.data import atomic_masses, chemical_symbols, covalent_radii

from chemgap.campaigns.spec import ExplorationConfig, TrustConfig, TrustMode

log = logging.getLogger(__name__)

# a walker whose energy per atom leaves its start by more than this, eV/atom, has exploded
MAX_ENERGY_CHANGE_PER_ATOM = 5.0
MAX_FORCE = 100.0  # eV/Å; beyond it the dynamics is meaningless
LAST_FRAMES = 5  # frames kept with an md_failure
CANDIDATE_STRIDE = 10  # steps between two candidate frames of the same walker


# --------------------------------------------------------------------------- trust window
@dataclass(kw_only=True)
class TrustLevels:
    """Per-element trust levels on the calibrated per-atom force std, eV/Å."""

    lower: dict[str, float]
    upper: dict[str, float]
    default_lower: float
    default_upper: float

    def per_atom(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n_atoms,) lower and upper levels for atoms with ``numbers``."""
        sym = [chemical_symbols[int(z)] for z in numbers]
        lo = np.array([self.lower.get(s, self.default_lower) for s in sym])
        hi = np.array([self.upper.get(s, self.default_upper) for s in sym])
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "default_lower": self.default_lower,
            "default_upper": self.default_upper,
        }


def trust_levels(
    cfg: TrustConfig,
    *,
    force_std_atom_cal: np.ndarray | None = None,
    numbers: np.ndarray | None = None,
    system_idx: np.ndarray | None = None,
) -> TrustLevels:
    """Trust levels from the spec: fixed numbers, or calibrated from held-out data.

    In calibrated mode, for each element: ``lower`` = the ``cfg.quantile`` of the per-structure
    maximum calibrated force std of that element's atoms on held-out in-distribution data (so
    that fraction of in-distribution frames counts as accurate), ``upper = cfg.upper_ratio x
    lower``. Elements with fewer than 3 held-out structures use the pooled level.

    Args:
        force_std_atom_cal: (n_atoms,) calibrated per-atom force std on the held-out set, eV/Å.
        numbers: (n_atoms,) atomic numbers; system_idx: (n_atoms,) structure of each atom.
    """
    if cfg.mode == TrustMode.FIXED or force_std_atom_cal is None:
        return TrustLevels(lower={}, upper={}, default_lower=cfg.lower, default_upper=cfg.upper)
    std = np.asarray(force_std_atom_cal, dtype=float)
    n_struct = int(system_idx.max()) + 1
    pooled = np.zeros(n_struct)
    np.maximum.at(pooled, system_idx, std)
    default = float(np.quantile(pooled, cfg.quantile))
    lower, upper = {}, {}
    for z in np.unique(numbers):
        mask = numbers == z
        per = np.full(n_struct, -np.inf)
        np.maximum.at(per, system_idx[mask], std[mask])
        per = per[np.isfinite(per)]
        if len(per) >= 3:
            sym = chemical_symbols[int(z)]
            lower[sym] = float(np.quantile(per, cfg.quantile))
            upper[sym] = cfg.upper_ratio * lower[sym]
    return TrustLevels(
        lower=lower, upper=upper, default_lower=default, default_upper=cfg.upper_ratio * default
    )


# --------------------------------------------------------------------------- batched state
@dataclass(kw_only=True)
class WalkerState:
    """W walkers as one batch (torch-sim ``SimState`` style; DESIGN.md style rule 3).

    Attributes:
        positions: (n_atoms, 3) Å, unwrapped (periodic images via the graph's shifts).
        velocities: (n_atoms, 3) Å per ASE time unit (``ase.units.fs`` = 1 fs).
        masses: (n_atoms,) amu.
        numbers: (n_atoms,) atomic numbers.
        system_idx: (n_atoms,) walker of each atom.
        cells: (W, 3, 3) Å; pbc: (W, 3) bool.
        temperature_K: (W,) K; friction: (W,) per ASE time unit (0: NVE).
        step: (W,) steps done; energy0: (W,) eV/atom at the (re)start, for the explosion test.
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    masses: torch.Tensor
    numbers: np.ndarray
    system_idx: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    temperature_K: np.ndarray
    friction: np.ndarray
    step: np.ndarray
    energy0: np.ndarray
    slices: list[slice] = field(default_factory=list)

    def __post_init__(self) -> None:
        bounds = np.concatenate([[0], np.cumsum(np.bincount(self.system_idx))])
        self.slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    @property
    def n_walkers(self) -> int:
        return len(self.cells)

    def walker_slice(self, w: int) -> slice:
        return self.slices[w]

    def atoms(self, w: int) -> Atoms:
        s = self.walker_slice(w)
        atoms = Atoms(
            self.numbers[s], self.positions[s].cpu().numpy(), cell=self.cells[w], pbc=self.pbc[w]
        )
        atoms.set_velocities(self.velocities[s].cpu().numpy())
        return atoms


def maxwell_boltzmann(
    masses: np.ndarray, temperature_K: float, rng: np.random.Generator
) -> np.ndarray:
    """(n, 3) velocities from the Maxwell–Boltzmann distribution, zero total momentum."""
    sigma = np.sqrt(units.kB * temperature_K / masses)[:, None]
    v = rng.normal(size=(len(masses), 3)) * sigma
    if len(masses) > 1:
        v -= (masses[:, None] * v).sum(0) / masses.sum()
    return v


def init_state(
    structures: Sequence[Atoms],
    temperatures_K: Sequence[float],
    *,
    friction_per_fs: float,
    rng: np.random.Generator,
) -> WalkerState:
    """One walker per structure, velocities drawn at its temperature."""
    if len(structures) != len(temperatures_K):
        raise ValueError("one temperature per walker structure is needed")
    masses = np.concatenate([atomic_masses[a.numbers] for a in structures])
    vel = np.concatenate(
        [
            maxwell_boltzmann(atomic_masses[a.numbers], t, rng)
            for a, t in zip(structures, temperatures_K, strict=True)
        ]
    )
    w = len(structures)
    return WalkerState(
        positions=torch.tensor(
            np.concatenate([a.positions for a in structures]), dtype=torch.float64
        ),
        velocities=torch.tensor(vel, dtype=torch.float64),
        masses=torch.tensor(masses, dtype=torch.float64),
        numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
        system_idx=np.repeat(np.arange(w), [len(a) for a in structures]),
        cells=np.stack([np.asarray(a.cell) for a in structures]),
        pbc=np.stack([a.pbc for a in structures]),
        temperature_K=np.asarray(temperatures_K, dtype=float),
        friction=np.full(w, friction_per_fs / units.fs),
        step=np.zeros(w, dtype=np.int64),
        energy0=np.full(w, np.nan),
    )


# --------------------------------------------------------------------------- forces
class BatchedForceField:
    """All ensemble members on the walkers' graph, with neighbour-list reuse.

    ``evaluate(state)`` returns the ensemble-mean energy per walker (W,) eV, mean forces
    (n_atoms, 3) eV/Å and the per-atom force std (n_atoms,) eV/Å (sqrt of the summed
    per-component variance over members, as DP-GEN's ``max_devi_f`` uses).
    """

    def __init__(self, ensemble: Any, skin_A: float = 0.5):
        self.ensemble = ensemble
        self.skin = float(skin_A)
        self.dtype = getattr(torch, ensemble.dtype)
        self._batch = None
        self._ref: torch.Tensor | None = None
        self._edges: tuple[torch.Tensor, ...] | None = None
        self.rebuilds = 0

    def _graph(self, state: WalkerState):
        from chemgap.models.data import make_batch

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
        walker (inf for a walker without edges)."""
        self._graph(state)
        i, j, shifts, rc_sum, walker = self._edges
        d = (state.positions[j] - state.positions[i] + shifts).norm(dim=1)
        out = torch.full((state.n_walkers,), torch.inf, dtype=torch.float64)
        return out.scatter_reduce_(0, walker, d / rc_sum, "amin").numpy()

    def evaluate(self, state: WalkerState) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        batch = self._graph(state)
        batch.data["positions"] = state.positions.to(device=self.ensemble.device, dtype=self.dtype)
        out = self.ensemble.evaluate(batch)
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
            ``trust`` ('candidate' or 'beyond') in ``info``.
        failures: md_failures with their last frames.
        counts: per walker group, frames ``{"accurate": n, "candidate": n, "failed": n}``.
        rebuilds: neighbour-graph builds; steps: walker-steps done.
    """

    candidates: list[Atoms] = field(default_factory=list)
    failures: list[MDFailure] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rebuilds: int = 0
    steps: int = 0

    def fractions(self) -> dict[str, dict[str, float]]:
        out = {}
        for group, c in self.counts.items():
            total = max(sum(c.values()), 1)
            out[group] = {k: v / total for k, v in c.items()}
        return out

    def merge(self, other: ExplorationResult) -> None:
        self.candidates += other.candidates
        self.failures += other.failures
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
    (``"<formula> <T> K"``) where the caller gives none."""
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
        temperatures_K: per walker (default: ``cfg.temperatures_K`` cycled over the walkers).
        groups: per-walker group label for the accurate/candidate/failed table (default:
            ``"<formula> <T> K"``).
        levels: trust levels (default: ``cfg.trust`` fixed levels).
        progress: called as ``progress(step, total_steps)``.
        stop_on_uncertainty: restart a walker above the upper level (False: only record).
        energy_log: if given, the total energy (W,) eV of every step is appended (NVE tests).
    """
    rng = rng or np.random.default_rng(0)
    structures = list(structures)
    w = len(structures)
    if w == 0:
        raise ValueError("explore: no walker structures")
    temps, groups = walker_defaults(structures, cfg, temperatures_K, groups)
    levels = levels or trust_levels(cfg.trust)
    n_steps = int(steps if steps is not None else cfg.steps)
    state = init_state(structures, temps, friction_per_fs=cfg.friction_per_fs, rng=rng)
    ff = BatchedForceField(ensemble, cfg.neighbour_skin_A)
    cal = getattr(ensemble, "calibration", None)
    scale = cal.force_scales_for(state.numbers) if cal is not None else np.ones(len(state.numbers))
    lo_atom, hi_atom = levels.per_atom(state.numbers)
    result = ExplorationResult(
        counts={g: {"accurate": 0, "candidate": 0, "failed": 0} for g in groups}
    )
    dt = cfg.timestep_fs * units.fs
    m = state.masses[:, None]
    gamma = torch.tensor(state.friction[state.system_idx], dtype=torch.float64)[:, None]
    kt = torch.tensor(units.kB * state.temperature_K[state.system_idx], dtype=torch.float64)
    c1 = torch.exp(-gamma * dt)
    c2 = torch.sqrt(1 - c1**2) * torch.sqrt(kt[:, None] / m)
    torch_rng = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
    n_atoms = np.bincount(state.system_idx, minlength=w)
    recent: list[deque[tuple[int, torch.Tensor]]] = [deque(maxlen=LAST_FRAMES) for _ in range(w)]
    last_candidate = np.full(w, -CANDIDATE_STRIDE)

    energy, forces, std = ff.evaluate(state)
    state.energy0 = energy / n_atoms
    # the last accurate frame of each walker with its forces, so a restart needs no evaluation
    safe = [(state.positions[s].clone(), forces[s].clone()) for s in state.slices]

    def restart(i: int) -> None:
        """Back to the walker's last accurate frame (and its forces), fresh velocities; the
        graph is rebuilt by the usual skin test if the frame is far from where it was built."""
        s = state.walker_slice(i)
        pos, f = safe[i]
        state.positions[s] = pos
        forces[s] = f
        v = maxwell_boltzmann(state.masses[s].numpy(), temps[i], rng)
        state.velocities[s] = torch.from_numpy(v)

    for step in range(n_steps):
        # BAOAB: half kick, half drift, Ornstein-Uhlenbeck, half drift, forces, half kick
        state.velocities += 0.5 * dt * forces / m
        state.positions += 0.5 * dt * state.velocities
        noise = torch.randn(state.velocities.shape, generator=torch_rng, dtype=torch.float64)
        state.velocities = c1 * state.velocities + c2 * noise
        state.positions += 0.5 * dt * state.velocities
        energy, forces, std = ff.evaluate(state)
        state.velocities += 0.5 * dt * forces / m
        state.step += 1
        result.steps += w
        if energy_log is not None:
            kin = 0.5 * (state.masses[:, None] * state.velocities**2).sum(1).numpy()
            energy_log.append(energy + np.bincount(state.system_idx, kin, minlength=w))

        std_cal = std * scale
        over_lo = np.zeros(w, dtype=bool)
        over_hi = np.zeros(w, dtype=bool)
        np.logical_or.at(over_lo, state.system_idx, std_cal > lo_atom)
        np.logical_or.at(over_hi, state.system_idx, std_cal > hi_atom)
        max_std = np.zeros(w)
        np.maximum.at(max_std, state.system_idx, std_cal)
        fmax = np.zeros(w)
        np.maximum.at(fmax, state.system_idx, forces.norm(dim=1).numpy())
        ratio = ff.min_distance_ratio(state)
        bad = (
            ~np.isfinite(energy)
            | ~np.isfinite(fmax)
            | (fmax > MAX_FORCE)
            | (np.abs(energy / n_atoms - state.energy0) > MAX_ENERGY_CHANGE_PER_ATOM)
            | (ratio < cfg.min_distance_factor)
        )

        def frame(
            i: int,
            positions: torch.Tensor | None = None,
            at_step: int | None = None,
            unc: np.ndarray = max_std,
        ) -> Atoms:
            atoms = state.atoms(i)
            if positions is not None:
                atoms.positions = positions.numpy()
            atoms.info.update(
                walker=i,
                group=groups[i],
                temperature_K=float(temps[i]),
                step=int(state.step[i] if at_step is None else at_step),
                uncertainty=float(unc[i]),
                source="explore",
            )
            return atoms

        for i in range(w):
            counts = result.counts[groups[i]]
            s = state.slices[i]
            if bad[i]:
                reason = (
                    "non-finite energy or forces"
                    if not np.isfinite(energy[i] + fmax[i])
                    else "atoms too close"
                    if ratio[i] < cfg.min_distance_factor
                    else "exploding energy or forces"
                )
                recent[i].append((int(state.step[i]), state.positions[s].clone()))
                frames = [frame(i, p, k) for k, p in recent[i]]
                result.failures.append(
                    MDFailure(walker=i, step=int(state.step[i]), reason=reason, frames=frames)
                )
                counts["failed"] += 1
                log.info(
                    "walker %d (%s): md_failure at step %d: %s", i, groups[i], state.step[i], reason
                )
                recent[i].clear()
                restart(i)
                continue
            recent[i].append((int(state.step[i]), state.positions[s].clone()))
            if over_hi[i] and stop_on_uncertainty:
                result.candidates.append(frame(i))
                result.candidates[-1].info["trust"] = "beyond"
                last_candidate[i] = step
                counts["candidate"] += 1
                restart(i)
            elif over_lo[i]:
                counts["candidate"] += 1
                if step - last_candidate[i] >= CANDIDATE_STRIDE:
                    result.candidates.append(frame(i))
                    result.candidates[-1].info["trust"] = "candidate"
                    last_candidate[i] = step
            else:
                counts["accurate"] += 1
                safe[i] = (state.positions[s].clone(), forces[s].clone())
        if progress is not None:
            progress(step + 1, n_steps)
    result.rebuilds = ff.rebuilds
    return result


def _explore_task(
    model_dir: str, structures: list[Atoms], cfg_json: str, kwargs: dict
) -> ExplorationResult:
    """One walker group in a Ray task: load the ensemble from disk, explore, return results."""
    import torch

    from chemgap.models.ensemble import Ensemble

    torch.set_num_threads(1)
    ensemble = Ensemble.load(model_dir)
    cfg = ExplorationConfig.model_validate_json(cfg_json)
    return explore(ensemble, structures, cfg, **kwargs)


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
) -> ExplorationResult:
    """Explore with the walkers split into ``n_tasks`` groups run as Ray tasks (named
    ``explore walkers a-b/W · <tag>``) when Ray is up and ``n_tasks > 1``; in-process otherwise.

    Each task loads the ensemble from ``ensemble.path`` and batches its own walkers. Walker
    indices in the result refer to ``structures``.
    """
    structures = list(structures)
    w = len(structures)
    temps, groups = walker_defaults(structures, cfg, temperatures_K, groups)
    import ray

    chunks = [c for c in np.array_split(np.arange(w), max(1, min(n_tasks, w))) if len(c)]
    if len(chunks) == 1 or not ray.is_initialized() or getattr(ensemble, "path", None) is None:
        return explore(
            ensemble,
            structures,
            cfg,
            temperatures_K=temps,
            groups=groups,
            levels=levels,
            rng=np.random.default_rng(seed),
            steps=steps,
        )
    remote = ray.remote(num_cpus=1)(_explore_task)
    refs = []
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
        refs.append(
            remote.options(name=name).remote(
                str(ensemble.path), [structures[i] for i in idx], cfg.model_dump_json(), kwargs
            )
        )
    merged = ExplorationResult(counts={})
    for idx, part in zip(chunks, ray.get(refs), strict=True):
        for frame in part.candidates:
            frame.info["walker"] = int(idx[frame.info["walker"]])
        for failure in part.failures:
            failure.walker = int(idx[failure.walker])
            for frame in failure.frames:
                frame.info["walker"] = failure.walker
        merged.merge(part)
    return merged
