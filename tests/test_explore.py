"""The batched explorer: exact forces, energy conservation, failures, uncertainty stops, the
fan-out of walker groups over an executor, and explore-and-select.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Octahedron

from chemgap.agent.explore import BatchedForceField, explore, explore_groups, explore_task
from chemgap.agent.md import init_state
from chemgap.agent.trust import TrustLevels, trust_levels
from chemgap.campaigns.spec import ExplorationConfig, TrustConfig
from chemgap.models.config import EnsembleConfig, ModelConfig

SMALL = ModelConfig(
    r_max=4.0, num_channels=8, max_L=1, num_interactions=2, correlation=2, e0="average"
)


def labelled(atoms: Atoms) -> Atoms:
    ref = atoms.copy()
    ref.calc = EMT()
    atoms.info["REF_energy"] = ref.get_potential_energy()
    atoms.arrays["REF_forces"] = ref.get_forces()
    return atoms


def cu_cell(seed: int, rattle: float = 0.05) -> Atoms:
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(rattle, seed=seed)
    return atoms


def cu_cluster(seed: int, rattle: float = 0.05) -> Atoms:
    atoms = Octahedron("Cu", 3, cutoff=1)  # 19-atom truncated octahedron
    atoms.center(vacuum=6.0)
    atoms.pbc = False
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    from chemgap.models.ensemble import train_ensemble

    data = [labelled(cu_cell(i)) for i in range(16)] + [labelled(cu_cluster(i)) for i in range(8)]
    cfg = EnsembleConfig(members=3, max_epochs=20, batch_size=4, lr=1e-2, patience=50)
    out = tmp_path_factory.mktemp("explore_ens")
    return train_ensemble(data, SMALL, cfg, out, seed=0)


def test_batched_forces_equal_single_structure_forces(ensemble):
    walkers = [cu_cell(100), cu_cluster(101), bulk("Cu", cubic=True) * (2, 2, 1)]
    walkers[2].rattle(0.05, seed=102)
    state = init_state(walkers, [300.0] * 3, friction_per_fs=0.01, rng=np.random.default_rng(0))
    ff = BatchedForceField(ensemble, skin_A=0.6)
    energy, forces, std = ff.evaluate(state)
    for w, atoms in enumerate(walkers):
        single = ensemble.predict([atoms], calibrated=False)
        s = state.walker_slice(w)
        np.testing.assert_allclose(forces[s].numpy(), single.forces_mean, atol=1e-5)
        np.testing.assert_allclose(std[s], single.force_std_atom, atol=1e-5)
        assert energy[w] == pytest.approx(single.energy_mean[0], abs=1e-4)
    # move every atom by less than skin/2: the graph is reused and the forces stay exact
    rng = np.random.default_rng(1)
    step = rng.normal(size=state.positions.shape)
    step *= 0.25 / np.linalg.norm(step, axis=1, keepdims=True)
    state.positions += torch.from_numpy(step)
    _, moved_forces, _ = ff.evaluate(state)
    assert ff.rebuilds == 1
    for w, atoms in enumerate(walkers):
        moved = atoms.copy()
        moved.positions = state.positions[state.walker_slice(w)].numpy()
        single = ensemble.predict([moved], calibrated=False)
        np.testing.assert_allclose(
            moved_forces[state.walker_slice(w)].numpy(), single.forces_mean, atol=1e-5
        )


def test_nve_conserves_energy(ensemble):
    cfg = ExplorationConfig(
        steps=200,
        timestep_fs=1.0,
        friction_per_fs=0.0,
        temperatures_K=[300.0],
        trust=TrustConfig(mode="fixed", lower=5, upper=10),
    )
    log: list[np.ndarray] = []
    walkers = [cu_cell(200), cu_cluster(201)]
    result = explore(ensemble, walkers, cfg, energy_log=log, rng=np.random.default_rng(3))
    assert not result.failures
    e = np.array(log)  # (steps, W) total energy, eV
    n_atoms = np.array([len(a) for a in walkers])
    drift = np.abs(e - e[0]).max(axis=0) / n_atoms
    kinetic_scale = 1.5 * 8.617e-5 * 300  # 3/2 kT per atom, eV
    # stated drift: below 2 meV/atom over 200 fs at 1 fs (fp32 model), vs 39 meV/atom of kT
    assert (drift < 2e-3).all(), drift
    assert drift.max() < 0.06 * kinetic_scale


def test_explosion_is_recorded_not_raised(ensemble):
    squeezed = cu_cell(300)
    squeezed.positions[1] = squeezed.positions[0] + [0.6, 0.0, 0.0]  # 0.6 Å: far inside the core
    cfg = ExplorationConfig(steps=5, temperatures_K=[300.0])
    result = explore(ensemble, [squeezed, cu_cell(301)], cfg, rng=np.random.default_rng(0))
    assert result.failures, "the squeezed walker must fail"
    failure = result.failures[0]
    assert failure.walker == 0 and failure.reason == "atoms too close"
    assert 1 <= len(failure.frames) <= 5 and failure.frames[-1].info["walker"] == 0
    counts = result.counts
    assert counts[f"{squeezed.get_chemical_formula()} 300 K"]["failed"] == 5
    assert all(f.walker == 0 for f in result.failures)  # the healthy walker is unharmed


def test_uncertainty_stop_fires_out_of_domain(ensemble):
    holdout = [labelled(cu_cell(400 + i)) for i in range(6)]
    pred = ensemble.predict(holdout)
    levels = trust_levels(
        TrustConfig(mode="calibrated", quantile=0.95, upper_ratio=2.0),
        force_std_atom_cal=pred.force_std_atom_cal,
        numbers=pred.numbers,
        system_idx=pred.system_idx,
    )
    assert set(levels.lower) == {"Cu"} and levels.upper["Cu"] == 2 * levels.lower["Cu"]
    cfg = ExplorationConfig(steps=60, timestep_fs=2.0, friction_per_fs=0.05)
    walkers = [cu_cell(500 + i) for i in range(4)]
    temps = [100.0, 100.0, 4000.0, 4000.0]
    result = explore(
        ensemble,
        walkers,
        cfg,
        temperatures_K=temps,
        groups=["cold"] * 2 + ["hot"] * 2,
        levels=levels,
        rng=np.random.default_rng(5),
    )
    beyond = [c for c in result.candidates if c.info["trust"] == "beyond"]
    hot = [c for c in beyond if c.info["group"] == "hot"]
    assert hot, "hot walkers must leave the trusted domain"
    assert all(c.info["uncertainty"] > levels.upper["Cu"] for c in beyond)
    frac = result.fractions()
    assert frac["hot"]["candidate"] > frac["cold"]["candidate"]
    assert frac["cold"]["accurate"] > 0.8


def test_explore_cli_writes_selected_candidates(ensemble, tmp_path):
    from ase.io import read, write
    from click.testing import CliRunner

    from chemgap.agent.cli import main

    seeds = tmp_path / "seeds.xyz"
    write(seeds, [cu_cell(600), cu_cluster(601)])
    out = tmp_path / "cands.xyz"
    args = [
        "explore",
        str(ensemble.path),
        str(seeds),
        "-o",
        str(out),
        "--walkers",
        "4",
        "--steps",
        "15",
        "--temperature",
        "300",
        "--temperature",
        "3000",
        "--budget",
        "2",
        "--lower",
        "0.001",
        "--upper",
        "100",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "accurate" in result.output and "walker group" in result.output
    chosen = read(out, index=":")
    assert len(chosen) == 2
    assert all(a.info["source"] == "explore" and a.info["uncertainty"] > 0.001 for a in chosen)
    # bad input: one sentence, exit 2
    bad = CliRunner().invoke(main, ["explore", str(tmp_path), str(seeds), "-o", str(out)])
    assert bad.exit_code == 2 and "ensemble.json" in bad.output
    si = tmp_path / "si.xyz"
    write(si, bulk("Si", "diamond", a=5.43))
    bad = CliRunner().invoke(main, ["explore", str(ensemble.path), str(si), "-o", str(out)])
    assert bad.exit_code == 2 and "Si" in bad.output
    bad = CliRunner().invoke(main, [*args[:5], "--lower", "0.2", "--upper", "0.1"])
    assert bad.exit_code == 2 and "--lower/--upper: upper (0.1) must exceed lower" in bad.output


def test_explore_cli_holdout_warns_when_the_ensemble_is_uncalibrated(ensemble, tmp_path):
    """``--holdout`` with an ensemble that has no stored calibration: the trust levels come from
    the raw std, and the command says so in one line on stderr, with how to calibrate; with a
    calibrated copy of the same ensemble it says nothing.

    Broken variant caught: the silent fallback to the raw ensemble std (the code before the
    warning; verified to fail on it), and a warning printed whatever the calibration.
    """
    import shutil

    from ase.io import write
    from click.testing import CliRunner

    from chemgap.agent.cli import main
    from chemgap.models.ensemble import Ensemble

    assert ensemble.calibration is None
    seeds, holdout = tmp_path / "seeds.xyz", tmp_path / "holdout.xyz"
    write(seeds, [cu_cell(650)])
    held_out = [labelled(cu_cell(660 + i)) for i in range(4)]
    write(holdout, held_out)

    def run(model_dir):
        args = ["explore", str(model_dir), str(seeds), "-o", str(tmp_path / "out.xyz")]
        args += ["--holdout", str(holdout), "--steps", "3", "--budget", "1"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result

    raw = run(ensemble.path)
    lines = [line for line in raw.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 1, raw.stderr
    assert "no stored calibration" in lines[0] and "uncalibrated force std" in lines[0]
    assert "chemgap train --calibrate" in lines[0] and "campaign" in lines[0]

    calibrated = tmp_path / "calibrated"
    shutil.copytree(ensemble.path, calibrated)
    Ensemble.load(calibrated).calibrate(held_out)  # saved into calibrated/ensemble.json
    assert Ensemble.load(calibrated).calibration is not None
    quiet = run(calibrated)
    assert "warning" not in quiet.output and "calibrat" not in quiet.stderr


def test_restart_resumes_from_the_stored_frame_and_forces(ensemble):
    """At 0 K a BAOAB step from rest is x0 + dt²(1 + c1)/(4m) F(x0), c1 = exp(-γ dt).
    With an upper trust level of 0 every step is 'beyond' and restarts, so every candidate must
    be that same frame: a restart that used the forces of the rejected frame would drift.
    """
    from ase import units

    start = cu_cluster(700, rattle=0.1)
    cfg = ExplorationConfig(steps=4, timestep_fs=5.0, friction_per_fs=0.01)
    levels = TrustLevels(lower={}, upper={}, default_lower=0.0, default_upper=0.0)
    result = explore(ensemble, [start], cfg, temperatures_K=[0.0], levels=levels)
    assert [c.info["trust"] for c in result.candidates] == ["beyond"] * 4
    assert result.rebuilds == 1  # restored frames lie within the skin: one graph throughout
    f0 = ensemble.predict([start]).forces_mean
    dt = cfg.timestep_fs * units.fs
    c1 = np.exp(-cfg.friction_per_fs * cfg.timestep_fs)
    expected = start.positions + 0.25 * dt**2 * (1 + c1) * f0 / start.get_masses()[:, None]
    assert np.abs(expected - start.positions).max() > 1e-3  # the step moves atoms measurably
    for frame in result.candidates:
        assert np.abs(frame.positions - result.candidates[0].positions).max() < 1e-9
        assert np.abs(frame.positions - expected).max() < 1e-6


# --------------------------------------------------------------------------- fan-out
WIDE_OPEN = TrustLevels(lower={}, upper={}, default_lower=0.0, default_upper=100.0)


def fanout_walkers() -> tuple[list[Atoms], list[str]]:
    """Four walkers, each its own group, so a candidate's group names the walker it came from."""
    walkers = [cu_cell(800), cu_cluster(801), cu_cell(802), cu_cluster(803)]
    return walkers, [f"w{i}" for i in range(len(walkers))]


def assert_merged(result, groups: list[str], steps: int) -> None:
    """Every walker did ``steps`` steps, every frame a candidate (lower level 0), recorded at
    steps 1 and 11 (CANDIDATE_STRIDE 10), and walker indices refer to the full walker list.
    """
    assert result.steps == len(groups) * steps
    assert list(result.counts) == groups
    assert all(
        c == {"accurate": 0, "candidate": steps, "failed": 0} for c in result.counts.values()
    )
    assert not result.failures
    walkers = sorted(c.info["walker"] for c in result.candidates)
    assert walkers == sorted(list(range(len(groups))) * 2)
    assert all(c.info["group"] == groups[c.info["walker"]] for c in result.candidates)
    assert {c.info["step"] for c in result.candidates} == {1, 11}


class RecordingExecutor:
    """A parallel executor that runs its tasks in this process and remembers them."""

    parallel = True

    def __init__(self) -> None:
        self.tasks = []

    def run(self, tasks):
        from chemgap.common.tasks import InProcessExecutor

        self.tasks = list(tasks)
        yield from reversed(list(InProcessExecutor().run(tasks)))  # completion order: any

    def resources(self):
        return {"CPU": 2.0, "GPU": 0.0}

    def channel(self, callback):
        raise NotImplementedError


def test_explore_groups_makes_one_task_per_chunk_and_merges_them(ensemble, monkeypatch):
    walkers, groups = fanout_walkers()
    cfg = ExplorationConfig(steps=12, temperatures_K=[300.0])
    executor = RecordingExecutor()
    threads = torch.get_num_threads()
    try:
        result = explore_groups(
            ensemble,
            walkers,
            cfg,
            n_tasks=2,
            task_tag="iter 3",
            groups=groups,
            levels=WIDE_OPEN,
            seed=4,
            executor=executor,
        )
    finally:
        torch.set_num_threads(threads)  # explore_task pins its process to one thread
    names = [t.name for t in executor.tasks]
    assert names == ["explore walkers 1-2/4 · iter 3", "explore walkers 3-4/4 · iter 3"]
    assert all(t.fn is explore_task and t.num_cpus == 1 for t in executor.tasks)
    assert_merged(result, groups, 12)
    # an ensemble with no directory to load it from in a task: one in-process run
    monkeypatch.setattr(ensemble, "path", None)
    executor = RecordingExecutor()
    result = explore_groups(
        ensemble, walkers, cfg, n_tasks=2, groups=groups, levels=WIDE_OPEN, executor=executor
    )
    assert executor.tasks == [] and result.steps == 4 * 12


@pytest.mark.slow  # a Ray instance and two workers loading MACE: ~30 s
def test_explore_groups_on_ray(ensemble, ray_session):
    from chemgap.agent.runtime import RayExecutor

    walkers, groups = fanout_walkers()
    cfg = ExplorationConfig(steps=12, temperatures_K=[300.0])
    result = explore_groups(
        ensemble,
        walkers,
        cfg,
        n_tasks=2,
        groups=groups,
        levels=WIDE_OPEN,
        seed=4,
        executor=RayExecutor(),
    )
    assert_merged(result, groups, 12)


def test_explore_groups_without_executor_stays_in_process(ensemble, monkeypatch):
    """executor=None: one in-process explore, whatever n_tasks says and whether or not a Ray
    instance is up; ``import ray`` would fail here. A non-parallel executor gets no tasks.
    """
    from chemgap.common.tasks import InProcessExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    walkers, groups = fanout_walkers()
    cfg = ExplorationConfig(steps=12, temperatures_K=[300.0])
    kwargs = dict(n_tasks=2, groups=groups, levels=WIDE_OPEN, seed=4)
    result = explore_groups(ensemble, walkers, cfg, **kwargs)
    assert_merged(result, groups, 12)
    inline = explore(
        ensemble, walkers, cfg, groups=groups, levels=WIDE_OPEN, rng=np.random.default_rng(4)
    )
    same = explore_groups(ensemble, walkers, cfg, executor=InProcessExecutor(), **kwargs)
    for other in (inline, same):
        assert [c.info["walker"] for c in other.candidates] == [
            c.info["walker"] for c in result.candidates
        ]
        for a, b in zip(other.candidates, result.candidates, strict=True):
            np.testing.assert_array_equal(a.positions, b.positions)


# --------------------------------------------------------------------------- explore and select
def test_explore_and_select(ensemble):
    from chemgap.agent.explore import explore_and_select

    walkers = [cu_cell(900), cu_cluster(901), cu_cell(902)]
    cfg = ExplorationConfig(
        steps=12,
        temperatures_K=[300.0, 3000.0],
        trust=TrustConfig(mode="fixed", lower=1e-3, upper=100.0),
    )
    out = explore_and_select(ensemble, walkers, cfg, budget=2, seed=1)
    assert out.levels.default_lower == 1e-3 and out.levels.default_upper == 100.0
    assert len(out.result.candidates) >= 2 and len(out.selected) == 2
    assert all(a.info["md_failure"] is False for a in out.selected)
    assert all(any(a is c for c in out.result.candidates) for a in out.selected)
    assert out.failure_frames == [] and not out.result.failures
    # calibrated from a held-out set: per-element levels
    holdout = [labelled(cu_cell(910 + i)) for i in range(4)]
    out = explore_and_select(ensemble, walkers, cfg, budget=1, holdout=holdout, seed=1)
    assert set(out.levels.lower) == {"Cu"} and len(out.selected) <= 1
    # an element the ensemble never saw
    with pytest.raises(ValueError, match=r"element\(s\) Si are not in .*\(Cu\)"):
        explore_and_select(ensemble, [bulk("Si", "diamond", a=5.43)], cfg, budget=1)


def test_explore_and_select_keeps_failure_frames(ensemble):
    from chemgap.agent.explore import explore_and_select

    squeezed = cu_cell(920)
    squeezed.positions[1] = squeezed.positions[0] + [0.6, 0.0, 0.0]
    cfg = ExplorationConfig(steps=3, temperatures_K=[300.0])
    out = explore_and_select(ensemble, [squeezed], cfg, budget=4)
    assert len(out.failure_frames) == len(out.result.failures) == 3
    assert all(a.info["md_failure"] is True for a in out.failure_frames)


# --------------------------------------------------------------------------- NVE bookkeeping
class ScriptedForceField:
    """Stands in for BatchedForceField: zero forces, and per evaluation a scripted energy per
    atom (eV/atom) and per-atom force std (eV/Å) for each walker.
    """

    script: list[list[tuple[float, float]]] = []  # noqa: RUF012  per evaluation, per walker

    def __init__(self, ensemble, skin_A: float = 0.5):
        self.calls = 0
        self.rebuilds = 0

    def evaluate(self, state):
        row = self.script[self.calls]
        self.calls += 1
        n = np.bincount(state.system_idx, minlength=state.n_walkers)
        energy = np.array([e for e, _ in row]) * n
        std = np.concatenate([np.full(k, s) for k, (_, s) in zip(n, row, strict=True)])
        return energy, torch.zeros(len(state.positions), 3, dtype=torch.float64), std

    def min_distance_ratio(self, state):
        return np.full(state.n_walkers, np.inf)


def test_restart_resets_the_energy_reference_to_the_restart_frame(monkeypatch):
    """After a restart the explosion test measures the energy per atom from the frame the walker
    restarts from (its last accurate frame), not from its first start or the rejected frame.

    Walker 0's scripted energies, eV/atom (the limit is MAX_ENERGY_CHANGE_PER_ATOM = 5):
    start 0; step 0: 4.0, accurate (the restart frame); step 1: -3.0 with a force std above
    the upper level, so a restart to step 0's frame; step 2: 5.5 (1.5 off the restart frame):
    accurate; step 3: 12.0 (8 off): md_failure, restart to step 2's frame (5.5); step 4: 10.0
    (4.5 off): accurate; step 5: 11.0 (5.5 off): md_failure, a real drift still caught.
    Walker 1 never restarts: its reference stays its start energy 0 while it goes to 3.0 and
    then to -2.5 (5.5 off its last accurate frame, 2.5 off its start: accurate).

    Broken variants caught: (a) the old code, energy0 never reset on restart: spurious
    md_failures at steps 2 and 4 (verified to fail on it); (b) energy0 reset to the energy of
    the rejected frame (-3.0 at step 1, 12.0 at step 3): a spurious md_failure at step 2 and the
    real one at step 5 missed (verified with a patched restart); (c) a restart of walker 0 that
    resets walker 1's reference as well: a spurious md_failure of walker 1 at step 3 (verified
    with a patched restart).
    """
    from chemgap.agent import explore as explore_module

    monkeypatch.setattr(explore_module, "BatchedForceField", ScriptedForceField)
    quiet, loud = 0.0, 1.0  # force std, eV/Å; the levels below are 0.5 / 0.8
    walker0 = [0.0, 4.0, -3.0, 5.5, 12.0, 10.0, 11.0]
    stds = [quiet, quiet, loud, quiet, quiet, quiet, quiet]
    walker1 = [0.0, 3.0, 3.0, 3.0, -2.5, -2.5, -2.5]
    monkeypatch.setattr(
        ScriptedForceField,
        "script",
        [[(e, s), (e1, quiet)] for e, s, e1 in zip(walker0, stds, walker1, strict=True)],
    )
    levels = TrustLevels(lower={}, upper={}, default_lower=0.5, default_upper=0.8)
    cfg = ExplorationConfig(steps=6, temperatures_K=[300.0])
    result = explore(
        object(),  # the scripted force field never looks at the ensemble
        [cu_cell(1000), cu_cell(1001)],
        cfg,
        temperatures_K=[0.0, 0.0],
        groups=["restarting", "steady"],
        levels=levels,
    )
    assert [(f.walker, f.step, f.reason) for f in result.failures] == [
        (0, 4, "exploding energy or forces"),
        (0, 6, "exploding energy or forces"),
    ]
    assert [(c.info["walker"], c.info["step"], c.info["trust"]) for c in result.candidates] == [
        (0, 2, "beyond")
    ]
    assert result.counts == {
        "restarting": {"accurate": 3, "candidate": 1, "failed": 2},
        "steady": {"accurate": 6, "candidate": 0, "failed": 0},
    }
