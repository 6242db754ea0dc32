"""Physics of the MD steps in chemgap.agent.md on analytic force fields (no model, < 10 s).

- velocity Verlet: energy conservation without drift, and time reversibility (Lennard-Jones
  argon clusters);
- BAOAB Langevin: equipartition on many independent harmonic oscillators, with a negative
  control showing that a wrong noise amplitude fails the same test;
- BAOAB at 0 K without friction is velocity Verlet; the observables agree with ASE's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.cluster import Icosahedron

from chemgap.agent.md import (
    LangevinCoefficients,
    WalkerState,
    baoab_step,
    init_state,
    kinetic_energy,
    langevin_coefficients,
    maxwell_boltzmann,
    run_md,
    temperature,
    velocity_verlet_step,
)

EPS_AR, SIGMA_AR = 0.0104, 3.40  # Lennard-Jones argon: eV, Å


def clone(state: WalkerState) -> WalkerState:
    return dataclasses.replace(
        state,
        positions=state.positions.clone(),
        velocities=state.velocities.clone(),
        step=state.step.copy(),
    )


def lennard_jones(state: WalkerState) -> tuple[np.ndarray, torch.Tensor]:
    """(W,) energy, eV, and (n_atoms, 3) forces, eV/Å: all pairs within each walker."""
    idx = torch.as_tensor(state.system_idx)
    r = state.positions[None, :, :] - state.positions[:, None, :]  # r[i, j] = x_j - x_i
    d2 = r.square().sum(-1)
    pair = (idx[:, None] == idx[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
    d2 = torch.where(pair, d2, torch.inf)
    s6 = (SIGMA_AR**2 / d2) ** 3
    e_atom = 0.5 * (4 * EPS_AR * (s6**2 - s6)).sum(1)
    forces = ((4 * EPS_AR * (6 * s6 - 12 * s6**2) / d2)[:, :, None] * r).sum(1)
    energy = np.bincount(state.system_idx, e_atom.numpy(), minlength=state.n_walkers)
    return energy, forces


def argon_clusters(seed: int, temperature_K: float = 20.0) -> WalkerState:
    """Three 13-atom LJ argon icosahedra, rattled, velocities at ``temperature_K``."""
    nn = 2 ** (1 / 6) * SIGMA_AR  # LJ pair minimum
    clusters = []
    for k in range(3):
        atoms = Icosahedron("Ar", 2, latticeconstant=nn * np.sqrt(2))
        atoms.rattle(0.05, seed=seed + k)
        clusters.append(atoms)
    return init_state(
        clusters, [temperature_K] * 3, friction_per_fs=0.0, rng=np.random.default_rng(seed)
    )


def total_energy(state: WalkerState, out: tuple) -> np.ndarray:
    return out[0] + kinetic_energy(state)


# --------------------------------------------------------------------------- NVE
def test_velocity_verlet_conserves_energy_without_drift():
    """LJ Ar13 clusters near 15 K, dt 5 fs, 20 ps: the total energy fluctuates by < 0.1 % of
    the mean kinetic energy (measured 0.025 %) and its drift between the first and last 2.5 ps
    stays < 0.05 % (measured < 0.005 %): the shadow Hamiltonian of a symplectic integrator.
    """
    state = argon_clusters(0)
    dt = 5.0 * units.fs
    out = lennard_jones(state)
    e = [total_energy(state, out)]
    kin = [kinetic_energy(state)]
    for _ in range(4000):
        out = velocity_verlet_step(state, out[1], lennard_jones, dt)
        e.append(total_energy(state, out))
        kin.append(kinetic_energy(state))
    e, kin = np.array(e), np.array(kin)  # (steps + 1, W), eV
    assert (state.step == 4000).all()
    scale = kin.mean(0)  # ~ 3/2 N kB T per walker
    fluctuation = np.abs(e - e[0]).max(0) / scale
    drift = np.abs(e[-500:].mean(0) - e[:500].mean(0)) / scale
    assert (fluctuation < 1e-3).all(), fluctuation
    assert (drift < 5e-4).all(), drift


def test_velocity_verlet_is_time_reversible():
    """Forward 400 steps, flip the velocities, 400 more: back at the start up to float64
    round-off (measured 2e-15 Å; 2 ps of a cold cluster amplifies it little).
    """
    state = argon_clusters(1)
    x0, v0 = state.positions.clone(), state.velocities.clone()
    dt = 5.0 * units.fs
    out = lennard_jones(state)
    for _ in range(400):
        out = velocity_verlet_step(state, out[1], lennard_jones, dt)
    assert (state.positions - x0).abs().max() > 0.1  # it went somewhere
    state.velocities.neg_()
    for _ in range(400):
        out = velocity_verlet_step(state, out[1], lennard_jones, dt)
    assert torch.allclose(state.positions, x0, rtol=0, atol=1e-10)
    assert torch.allclose(-state.velocities, v0, rtol=0, atol=1e-12)


def test_baoab_without_friction_at_0K_is_velocity_verlet():
    """c1 = 1 and c2 = 0: the O step is the identity, and B A O A B is B A A B = velocity
    Verlet up to the round-off of two half drifts instead of one full one.
    """
    verlet = argon_clusters(2)
    verlet.temperature_K[:] = 0.0
    baoab = clone(verlet)
    dt = 5.0 * units.fs
    coeffs = langevin_coefficients(baoab, dt)
    assert (coeffs.c1 == 1).all() and (coeffs.c2 == 0).all()
    gen = torch.Generator().manual_seed(0)
    out_v = out_b = lennard_jones(verlet)
    for _ in range(300):
        out_v = velocity_verlet_step(verlet, out_v[1], lennard_jones, dt)
        out_b = baoab_step(baoab, out_b[1], lennard_jones, dt, coeffs, gen)
    assert (verlet.positions - argon_clusters(2).positions).abs().max() > 0.05
    assert torch.allclose(baoab.positions, verlet.positions, rtol=0, atol=1e-11)  # 1e-14 seen
    assert torch.allclose(baoab.velocities, verlet.velocities, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(baoab.step, verlet.step)


# --------------------------------------------------------------------------- NVT
K_SPRING = 1.0  # eV/Å², each atom tethered to its own site: independent 3-D oscillators
TEMPS = [100.0, 300.0, 600.0, 1000.0]


def tethered_argon(rng: np.random.Generator, per_walker: int = 250) -> tuple[WalkerState, ...]:
    """Four walkers of ``per_walker`` independent Ar oscillators (k = 1 eV/Å², ω dt = 0.078 at
    5 fs), at TEMPS; positions and velocities drawn from the canonical distribution.
    """
    walkers = [Atoms("Ar" * per_walker, positions=np.zeros((per_walker, 3))) for _ in TEMPS]
    state = init_state(walkers, TEMPS, friction_per_fs=0.02, rng=rng)
    sites = state.positions.clone()
    kt = torch.as_tensor(units.kB * state.temperature_K[state.system_idx])[:, None]
    state.positions += torch.as_tensor(rng.normal(size=(len(sites), 3))) * (kt / K_SPRING).sqrt()
    return state, sites


def averages(
    state: WalkerState, sites: torch.Tensor, coeffs: LangevinCoefficients, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom time averages (n_atoms,) of kinetic and potential energy, eV, over 3000
    BAOAB steps of 5 fs after 300 of burn-in.
    """

    def tether(s: WalkerState) -> tuple[None, torch.Tensor]:
        return None, -K_SPRING * (s.positions - sites)

    dt = 5.0 * units.fs
    gen = torch.Generator().manual_seed(seed)
    forces = tether(state)[1]
    kin = torch.zeros(len(sites), dtype=torch.float64)
    pot = torch.zeros_like(kin)
    n = 3000
    for k in range(300 + n):
        forces = baoab_step(state, forces, tether, dt, coeffs, gen)[1]
        if k >= 300:
            kin += 0.5 * state.masses * state.velocities.square().sum(1)
            pot += 0.5 * K_SPRING * (state.positions - sites).square().sum(1)
    return (kin / n).numpy(), (pot / n).numpy()


def deviation_in_se(values: np.ndarray, system_idx: np.ndarray, expected: np.ndarray):
    """Per walker: (mean - expected) / standard error, and the relative standard error. The
    oscillators are independent, so the per-atom time averages are independent samples and
    their spread gives the standard error directly (no autocorrelation analysis needed).
    """
    out, rel = [], []
    for w, e in enumerate(expected):
        a = values[system_idx == w]
        se = a.std(ddof=1) / np.sqrt(len(a))
        out.append((a.mean() - e) / se)
        rel.append(se / e)
    return np.array(out), np.array(rel)


def test_baoab_langevin_equipartition():
    """⟨KE⟩ per atom = 3/2 kB T at each walker's temperature, within 4 standard errors.

    For a harmonic oscillator BAOAB samples positions exactly and velocities with variance
    (kB T / m)(1 - (ω dt)² / 4) at the end of a step (Leimkuhler & Matthews 2013; here ω dt =
    0.078, a 0.15 % correction, about 0.5 standard errors, included in the expectation).
    ⟨PE⟩ = 3/2 kB T holds exactly. The standard error is 0.3 % of the mean per walker (250
    oscillators x 3000 steps), so 4 standard errors resolve ⟨KE⟩ to 1.2 % and the noise
    amplitude c2 to 0.6 %: c2 off by a factor s scales ⟨KE⟩ by about s². c2 √2 too large
    doubles ⟨KE⟩, a deviation of ~165 standard errors (measured); the negative control below
    runs exactly that and must fail (a c2 only 3 % too large still shows as ~20).
    """
    rng = np.random.default_rng(7)
    state, sites = tethered_argon(rng)
    omega_dt = np.sqrt(K_SPRING / state.masses[0].item()) * 5.0 * units.fs
    kt = units.kB * np.asarray(TEMPS)
    coeffs = langevin_coefficients(state, 5.0 * units.fs)
    kin, pot = averages(state, sites, coeffs, seed=8)
    dev, rel = deviation_in_se(kin, state.system_idx, 1.5 * kt * (1 - omega_dt**2 / 4))
    assert (np.abs(dev) < 4).all(), dev
    assert (rel < 0.005).all(), rel  # the test is sharp: SE below 0.5 % of ⟨KE⟩
    dev_pot, _ = deviation_in_se(pot, state.system_idx, 1.5 * kt)  # configurations: exact
    assert (np.abs(dev_pot) < 4).all(), dev_pot

    # negative control: the same run with the noise amplitude √2 too large fails by far
    state, sites = tethered_argon(np.random.default_rng(7))
    wrong = LangevinCoefficients(c1=coeffs.c1, c2=coeffs.c2 * np.sqrt(2))
    kin, _ = averages(state, sites, wrong, seed=8)
    dev, _ = deviation_in_se(kin, state.system_idx, 1.5 * kt * (1 - omega_dt**2 / 4))
    assert (dev > 50).all(), dev


def test_langevin_coefficients_per_walker():
    structures = [Atoms("Ar2", positions=[[0, 0, 0], [3, 0, 0]]), Atoms("He", positions=[[0] * 3])]
    state = init_state(structures, [300.0, 50.0], friction_per_fs=0.1, rng=np.random.default_rng())
    state.friction[1] = 0.0
    dt = 2.0 * units.fs
    c = langevin_coefficients(state, dt)
    assert c.c1.shape == c.c2.shape == (3, 1)
    c1 = np.exp(-0.1 * 2.0)  # γ dt with γ in 1/fs and dt in fs
    assert c.c1[0, 0].item() == pytest.approx(c1, rel=1e-12)
    m_ar = state.masses[0].item()
    assert c.c2[0, 0].item() == pytest.approx(np.sqrt((1 - c1**2) * units.kB * 300 / m_ar))
    assert c.c1[2, 0].item() == 1.0 and c.c2[2, 0].item() == 0.0  # no friction: no noise


# --------------------------------------------------------------------------- helpers
def test_kinetic_energy_and_temperature_agree_with_ase():
    state = argon_clusters(3, temperature_K=50.0)
    ke, t = kinetic_energy(state), temperature(state)
    assert ke.shape == t.shape == (3,)
    for w in range(3):
        atoms = state.atoms(w)
        assert ke[w] == pytest.approx(atoms.get_kinetic_energy(), rel=1e-12)
        assert t[w] == pytest.approx(atoms.get_temperature(), rel=1e-12)


def test_walker_state_carries_each_walkers_total_charge():
    """``init_state`` reads ``info["charge"]`` (absent: 0); ``atoms(w)`` writes a charged
    walker's charge back (an int when whole) and none for a neutral one; a state built without
    charges is neutral; a wrong shape is refused.
    """
    cation = Atoms("Na2Cl", positions=[[0, 0, 0], [2.6, 0, 0], [5.2, 0, 0]])
    cation.info["charge"] = 1
    anion = Atoms("Cl", positions=[[0, 0, 0]], info={"charge": -0.5})
    neutral = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]])
    state = init_state(
        [cation, neutral, anion], [300.0] * 3, friction_per_fs=0.0, rng=np.random.default_rng(0)
    )
    assert state.charge.tolist() == [1.0, 0.0, -0.5]
    assert state.atoms(0).info["charge"] == 1 and isinstance(state.atoms(0).info["charge"], int)
    assert "charge" not in state.atoms(1).info
    assert state.atoms(2).info["charge"] == -0.5
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.init}
    del fields["charge"], fields["slices"]
    assert WalkerState(**fields).charge.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="walker charges"):
        WalkerState(**fields, charge=np.zeros(2))


def test_maxwell_boltzmann_has_zero_momentum_and_the_right_spread():
    masses = np.full(20000, 39.948)
    v = maxwell_boltzmann(masses, 300.0, np.random.default_rng(0))
    assert np.abs((masses[:, None] * v).sum(0)).max() < 1e-9
    assert (0.5 * masses[:, None] * v**2).sum() / (1.5 * len(masses) * units.kB) == (
        pytest.approx(300.0, rel=0.02)
    )


def test_run_md_nve_and_nvt():
    state = argon_clusters(4)
    seen = []
    out = run_md(
        state, lennard_jones, 50, 5.0, ensemble="nve", callback=lambda s, o: seen.append(o[0])
    )
    assert len(seen) == 50 and (state.step == 50).all()
    np.testing.assert_array_equal(out[0], seen[-1])
    # nvt: reproducible with a seeded generator, and the thermostat acts
    a, b = argon_clusters(5), argon_clusters(5)
    for s in (a, b):
        s.friction[:] = 0.05 / units.fs
        run_md(s, lennard_jones, 50, 5.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.velocities, b.velocities)
    with pytest.raises(ValueError, match="nvt"):
        run_md(a, lennard_jones, 1, 5.0, ensemble="npt")
