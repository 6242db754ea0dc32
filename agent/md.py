"""Batched MD: the walker state and integrator steps as small functions over it.

The state holds W walkers (any sizes, compositions, periodic or not) as one batch, with a
``system_idx`` map from atoms to walkers (torch-sim ``state.py``). The steps are plain functions
in the style of torch-sim's ``integrators/md.py`` and compose into

- :func:`baoab_step`: Langevin dynamics (NVT) by the BAOAB splitting of B. Leimkuhler and
  C. Matthews, "Rational construction of stochastic numerical methods for molecular sampling",
  Appl. Math. Res. Express 2013, 34-56 (doi:10.1093/amrx/abs010);
- :func:`velocity_verlet_step`: velocity Verlet (NVE), W. C. Swope, H. C. Andersen,
  P. H. Berens and K. R. Wilson, J. Chem. Phys. 76, 637 (1982).

Units are ASE's: positions Å, velocities Å per ASE time unit (``ase.units.fs`` of them make one
fs), masses amu, forces eV/Å, energies eV, temperatures K. ``dt`` arguments are in ASE time
units (``dt_fs * ase.units.fs``); only :func:`run_md` takes femtoseconds. Steps update the state
in place (no copies in the hot loop) and return it, or what the force function returned.

A *force function* ``force_fn(state)`` returns a tuple whose item 1 is the (n_atoms, 3) float64
forces tensor, eV/Å; item 0 is by convention the (W,) potential energy per walker, eV, and any
further items (an uncertainty, say) ride along: the explorer's
``BatchedForceField.evaluate`` returns ``(energy, forces, force_std)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from ase import Atoms, units
from ase.data import atomic_masses

from chemgap.models.data import CHARGE_KEY

__all__ = [
    "ForceFn",
    "LangevinCoefficients",
    "WalkerState",
    "baoab_step",
    "init_state",
    "kinetic_energy",
    "langevin_coefficients",
    "maxwell_boltzmann",
    "momentum_step",
    "ou_step",
    "position_step",
    "run_md",
    "temperature",
    "velocity_verlet_step",
]

ForceFn = Callable[["WalkerState"], tuple[Any, ...]]
"""``force_fn(state) -> (energy (W,) eV, forces (n_atoms, 3) eV/Å, *extra)``."""


# --------------------------------------------------------------------------- batched state
@dataclass(kw_only=True)
class WalkerState:
    """W walkers as one batch (torch-sim ``SimState`` style; docs/architecture.md, Conventions).

    Attributes:
        positions: (n_atoms, 3) float64 Å, unwrapped (periodic images via the graph's shifts).
        velocities: (n_atoms, 3) float64 Å per ASE time unit (``ase.units.fs`` = 1 fs).
        masses: (n_atoms,) float64 amu.
        numbers: (n_atoms,) atomic numbers.
        system_idx: (n_atoms,) walker of each atom; a walker's atoms are contiguous.
        cells: (W, 3, 3) Å; pbc: (W, 3) bool.
        temperature_K: (W,) K; friction: (W,) per ASE time unit (0: NVE).
        step: (W,) steps done; energy0: (W,) eV/atom at the (re)start, for the explosion test.
        charge: (W,) float64 total charge of each walker, e (default: all 0, neutral); long-range
            members with learned charges constrain their charges to sum to it.
        slices: per walker, its atoms' slice (derived from ``system_idx``).
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
    charge: np.ndarray | None = None
    slices: list[slice] = field(default_factory=list)

    def __post_init__(self) -> None:
        bounds = np.concatenate([[0], np.cumsum(np.bincount(self.system_idx))])
        self.slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        w = len(self.cells)
        self.charge = (
            np.zeros(w) if self.charge is None else np.asarray(self.charge, dtype=np.float64)
        )
        if self.charge.shape != (w,):
            raise ValueError(f"walker charges: shape {self.charge.shape}, expected ({w},)")

    @property
    def n_walkers(self) -> int:
        """W, the number of walkers."""
        return len(self.cells)

    def walker_slice(self, w: int) -> slice:
        """The slice of walker ``w``'s atoms in the per-atom arrays."""
        return self.slices[w]

    def atoms(self, w: int) -> Atoms:
        """Walker ``w`` as ``Atoms`` (positions and velocities copied); a charged walker's
        total charge (e) in ``info["charge"]`` (an int when whole), a neutral one without it.
        """
        s = self.walker_slice(w)
        atoms = Atoms(
            self.numbers[s], self.positions[s].cpu().numpy(), cell=self.cells[w], pbc=self.pbc[w]
        )
        atoms.set_velocities(self.velocities[s].cpu().numpy())
        charge = float(self.charge[w])
        if charge != 0.0:
            atoms.info[CHARGE_KEY] = int(charge) if charge.is_integer() else charge
        return atoms


def maxwell_boltzmann(
    masses: np.ndarray, temperature_K: float, rng: np.random.Generator
) -> np.ndarray:
    """(n, 3) velocities, Å per ASE time unit, from the Maxwell–Boltzmann distribution at
    ``temperature_K`` for ``masses`` (n,) amu, with zero total momentum.
    """
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
    """One walker per structure, velocities drawn at its temperature (K); friction in 1/fs.

    A walker's total charge (e) is its structure's ``info["charge"]`` (absent: 0).
    """
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
        charge=np.array([float(a.info.get(CHARGE_KEY) or 0.0) for a in structures]),
    )


# --------------------------------------------------------------------------- observables
def kinetic_energy(state: WalkerState) -> np.ndarray:
    """(W,) kinetic energy per walker, eV: sum of ½ m v² over its atoms."""
    per_atom = 0.5 * state.masses * state.velocities.square().sum(1)
    return np.bincount(state.system_idx, per_atom.cpu().numpy(), minlength=state.n_walkers)


def temperature(state: WalkerState) -> np.ndarray:
    """(W,) instantaneous kinetic temperature per walker, K: 2 KE / (3 N kB), counting all 3N
    degrees of freedom (as ASE's ``Atoms.get_temperature`` does without constraints).
    """
    n_atoms = np.bincount(state.system_idx, minlength=state.n_walkers)
    return 2.0 * kinetic_energy(state) / (3.0 * n_atoms * units.kB)


# --------------------------------------------------------------------------- steps
def momentum_step(state: WalkerState, forces: torch.Tensor, dt: float) -> WalkerState:
    """B: v ← v + dt F / m, in place. ``forces`` (n_atoms, 3) eV/Å; ``dt`` ASE time units."""
    state.velocities.addcdiv_(forces, state.masses[:, None], value=dt)
    return state


def position_step(state: WalkerState, dt: float) -> WalkerState:
    """A: x ← x + dt v, in place; ``dt`` ASE time units."""
    state.positions.add_(state.velocities, alpha=dt)
    return state


@dataclass(frozen=True, kw_only=True)
class LangevinCoefficients:
    """The exact Ornstein–Uhlenbeck update over a time ``dt`` (Leimkuhler & Matthews 2013, eq.
    for the O step): v ← c1 v + c2 ξ, ξ ~ N(0, 1) per component.

    Attributes:
        c1: (n_atoms, 1) exp(-γ dt), dimensionless.
        c2: (n_atoms, 1) sqrt((1 - c1²) kB T / m), Å per ASE time unit, so that the stationary
            velocity variance per component is c2² / (1 - c1²) = kB T / m.
    """

    c1: torch.Tensor
    c2: torch.Tensor


def langevin_coefficients(state: WalkerState, dt: float) -> LangevinCoefficients:
    """:class:`LangevinCoefficients` for a full O step of ``dt`` (ASE time units) from each
    walker's ``friction`` (1/ASE time unit) and ``temperature_K``. Zero friction or 0 K gives
    c2 = 0 (no noise); zero friction gives c1 = 1 (no damping).
    """
    idx = torch.as_tensor(state.system_idx)
    gamma = torch.as_tensor(state.friction, dtype=torch.float64)[idx][:, None]
    kt = torch.as_tensor(units.kB * state.temperature_K, dtype=torch.float64)[idx][:, None]
    c1 = torch.exp(-gamma * dt)
    c2 = torch.sqrt((1.0 - c1**2) * kt / state.masses[:, None])
    dev = state.velocities.device
    return LangevinCoefficients(c1=c1.to(dev), c2=c2.to(dev))


def ou_step(
    state: WalkerState, c1: torch.Tensor, c2: torch.Tensor, generator: torch.Generator | None
) -> WalkerState:
    """O: v ← c1 v + c2 ξ, in place, with ξ (n_atoms, 3) standard normal from ``generator``
    (on the velocities' device; None: torch's global one); ``c1``, ``c2`` (n_atoms, 1) from
    :func:`langevin_coefficients`.
    """
    v = state.velocities
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    v.mul_(c1).addcmul_(c2, noise)
    return state


def baoab_step(
    state: WalkerState,
    forces: torch.Tensor,
    force_fn: ForceFn,
    dt: float,
    coeffs: LangevinCoefficients,
    generator: torch.Generator | None,
) -> tuple[Any, ...]:
    """One Langevin step by BAOAB (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34):
    B half kick, A half drift, O over the full ``dt``, A half drift, forces, B half kick.

    Args:
        state: advanced in place; ``state.step`` += 1.
        forces: (n_atoms, 3) eV/Å at the current positions (item 1 of the last ``force_fn``).
        force_fn: evaluated once, at the new positions.
        dt: ASE time units.
        coeffs: the O step's coefficients, from :func:`langevin_coefficients` for this ``dt``.
        generator: torch RNG of the noise (None: torch's global one).

    Returns:
        what ``force_fn`` returned at the new positions (its item 1 feeds the next step).
    """
    half = 0.5 * dt
    momentum_step(state, forces, half)
    position_step(state, half)
    ou_step(state, coeffs.c1, coeffs.c2, generator)
    position_step(state, half)
    out = force_fn(state)
    momentum_step(state, out[1], half)
    state.step += 1
    return out


def velocity_verlet_step(
    state: WalkerState, forces: torch.Tensor, force_fn: ForceFn, dt: float
) -> tuple[Any, ...]:
    """One NVE step by velocity Verlet (Swope et al., J. Chem. Phys. 76, 637 (1982)): B half
    kick, A full drift, forces, B half kick. Symplectic and time-reversible.

    Args and returns as :func:`baoab_step` (``forces`` (n_atoms, 3) eV/Å, ``dt`` ASE time
    units; the state is advanced in place and ``state.step`` += 1).
    """
    momentum_step(state, forces, 0.5 * dt)
    position_step(state, dt)
    out = force_fn(state)
    momentum_step(state, out[1], 0.5 * dt)
    state.step += 1
    return out


def run_md(
    state: WalkerState,
    force_fn: ForceFn,
    n_steps: int,
    dt_fs: float,
    *,
    ensemble: Literal["nvt", "nve"] = "nvt",
    generator: torch.Generator | None = None,
    callback: Callable[[WalkerState, tuple[Any, ...]], None] | None = None,
) -> tuple[Any, ...]:
    """``n_steps`` steps of ``dt_fs`` femtoseconds: BAOAB Langevin at each walker's
    ``temperature_K`` and ``friction`` (``"nvt"``), or velocity Verlet (``"nve"``).

    ``callback(state, out)`` runs after every step with what ``force_fn`` returned there.
    Returns the last ``force_fn`` output (the initial one for ``n_steps == 0``).
    """
    if ensemble not in ("nvt", "nve"):
        raise ValueError(f"run_md: ensemble must be 'nvt' or 'nve' (got {ensemble!r})")
    dt = dt_fs * units.fs
    coeffs = langevin_coefficients(state, dt) if ensemble == "nvt" else None
    out = force_fn(state)
    for _ in range(n_steps):
        if coeffs is None:
            out = velocity_verlet_step(state, out[1], force_fn, dt)
        else:
            out = baoab_step(state, out[1], force_fn, dt, coeffs, generator)
        if callback is not None:
            callback(state, out)
    return out
