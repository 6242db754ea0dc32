"""Walker-steps per second: chemgap's batched explorer vs ASE Langevin + MACECalculator.

16 ethanol walkers (9 atoms), a 4-member MACE ensemble trained here on GFN2-xTB labels
(tblite), the same number of Langevin steps two ways:

- ASE: ``ase.md.langevin.Langevin`` with ``mace.calculators.MACECalculator`` given the same 4
  model files (MACE's committee mode), one walker after another; timed first, before chemgap
  has started any thread or Ray worker in this process;
- chemgap: all walkers in one batched graph, all members per step, neighbour list reused, the
  symmetric contractions evaluated as sparse polynomials (chemgap.models.contraction); once
  in-process (1 walker group; members on 2 threads) and once as 2 walker groups on 2 Ray
  workers (1 thread each).

``--long-range coulomb|d3|coulomb+d3`` trains members with those terms
(:mod:`chemgap.models.longrange`: learned charges with a direct Coulomb sum for these molecules,
D3(BJ) through tad-dftd3); the ASE side then uses chemgap's ``ChemgapCalculator`` on the same
model directory (``MACECalculator`` cannot load such members). ``--skip-ase`` times chemgap only.

Usage: python benchmarks/explore_vs_ase.py [--walkers 16] [--steps 100] [--threads 2] [--tasks 2]
       [--long-range none] [--skip-ase]
The last line is the headline figure: ``speedup: X`` (the faster chemgap way vs ASE), or with
``--skip-ase`` ``chemgap walker-steps/s: X`` (the faster chemgap way).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def ethanol_data(n: int, seed: int) -> list:
    from ase.build import molecule
    from tblite.ase import TBLite

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        ref = atoms.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        atoms.info["REF_energy"] = ref.get_potential_energy()
        atoms.arrays["REF_forces"] = ref.get_forces()
        out.append(atoms)
    return out


def train_members(out_dir: Path, channels: int, long_range: str, device: str):
    """The benchmark's 4-member ensemble, trained into ``out_dir`` on 48 GFN2-xTB-labelled
    rattled ethanols (5 epochs) and moved to ``device``; prints the setup time.
    """
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.ensemble import train_ensemble

    t0 = time.perf_counter()
    data = ethanol_data(48, 0)
    model = ModelConfig(
        r_max=5.0,
        num_channels=channels,
        max_L=1,
        num_interactions=2,
        correlation=3,
        long_range=long_range,
        e0="average",  # a speed benchmark: E0 does not change the cost of a step
    )
    ens_cfg = EnsembleConfig(members=4, max_epochs=5, batch_size=8)
    ensemble = train_ensemble(data, model, ens_cfg, out_dir, seed=0)
    ensemble.to(device)
    print(f"setup (labels + 4 members, 5 epochs): {time.perf_counter() - t0:.1f} s")
    return ensemble


def model_line(ensemble, channels: int, long_range: str, threads: int, device: str) -> str:
    """The line describing the members, threads and device."""
    kind = "ScaleShiftMACE" if long_range == "none" else f"LongRangeMACE ({long_range})"
    return (
        f"model: {kind} {channels}x0e+{channels}x1o, L=1, 2 interactions, "
        f"correlation 3, r_max 5 Å, {ensemble.dtype}; torch threads {threads}; "
        f"device {device}"
    )


def ethanol_walkers(n: int) -> list:
    """``n`` ethanol molecules at the ASE reference geometry, centred with 6 Å of vacuum."""
    from ase.build import molecule

    walkers = [molecule("CH3CH2OH") for _ in range(n)]
    for w in walkers:
        w.center(vacuum=6.0)
    return walkers


def exploration_config(walkers: int, steps: int):
    """The exploration settings of the benchmark for chemgap: 300 K, 0.5 fs, friction 0.01/fs,
    trust levels wide open (no walker stops or restarts for its uncertainty).
    """
    from chemgap.campaigns.spec import ExplorationConfig

    return ExplorationConfig(
        walkers=walkers,
        steps=steps,
        temperatures_K=[300.0],
        timestep_fs=0.5,
        friction_per_fs=0.01,
        trust={"mode": "fixed", "lower": 1e3, "upper": 2e3},
    )


def ase_committee(model_dir: Path, long_range: str, device: str, dtype: str) -> tuple:
    """The ASE calculator of the 4 members in ``model_dir`` and its name: MACE's own
    ``MACECalculator`` committee for plain members, chemgap's ``ChemgapCalculator`` for members
    with long-range terms (which MACECalculator cannot load).
    """
    if long_range != "none":
        from chemgap.models.calculator import ChemgapCalculator

        return ChemgapCalculator(model_dir, device=device), "ChemgapCalculator"
    from mace.calculators import MACECalculator

    paths = sorted(str(p) for p in model_dir.glob("member_*.model"))
    calc = MACECalculator(model_paths=paths, device=device, default_dtype=dtype)
    return calc, "MACECalculator"


def walker_arguments(description: str) -> argparse.ArgumentParser:
    """The flags every exploration benchmark shares: walkers, steps, torch threads, channels."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--walkers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16)
    return parser


def timed_explore(warm, model, walkers: list, cfg, warmup_steps: int) -> tuple:
    """Chemgap's explorer in-process: ``warmup_steps`` untimed with ``warm``, then the timed
    run with ``model`` (seeded); prints and returns (result, walker-steps/s).
    """
    from chemgap.agent.explore import explore

    explore(warm, walkers, cfg, steps=warmup_steps)
    t = time.perf_counter()
    result = explore(model, walkers, cfg, rng=np.random.default_rng(1))
    rate = result.steps / (time.perf_counter() - t)
    print(
        f"chemgap batched, in-process: {result.steps} walker-steps, {result.rebuilds} graph "
        f"builds, {rate:.1f} walker-steps/s"
    )
    return result, rate


def main() -> None:
    parser = walker_arguments(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, default=2, help="Ray walker groups (0: skip)")
    parser.add_argument(
        "--long-range", default="none", choices=["none", "coulomb", "d3", "coulomb+d3"]
    )
    parser.add_argument("--skip-ase", action="store_true", help="time chemgap only")
    args = parser.parse_args()

    import torch
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="chemgap-bench-"))
    ensemble = train_members(tmp / "ens", args.channels, args.long_range, args.device)
    print(model_line(ensemble, args.channels, args.long_range, args.threads, args.device))

    # ASE first, so nothing chemgap starts in this process (threads, Ray) can slow it down:
    # one Langevin run per walker with a committee calculator on the same 4 members
    ase_rate = None
    if not args.skip_ase:
        calc, name = ase_committee(tmp / "ens", args.long_range, args.device, ensemble.dtype)
        warm = molecule("CH3CH2OH")
        warm.calc = calc
        Langevin(warm, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs).run(5)
        t = time.perf_counter()
        for k in range(args.walkers):
            atoms = molecule("CH3CH2OH")
            atoms.center(vacuum=6.0)
            MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(k))
            atoms.calc = calc
            Langevin(
                atoms,
                0.5 * units.fs,
                temperature_K=300,
                friction=0.01 / units.fs,
                rng=np.random.default_rng(k),
            ).run(args.steps)
        ase_rate = args.walkers * args.steps / (time.perf_counter() - t)
        print(f"ASE Langevin + {name} (4-model committee): {ase_rate:.1f} walker-steps/s")

    # chemgap: batched explorer (trust levels wide open so both do the same dynamics work)
    cfg = exploration_config(args.walkers, args.steps)
    walkers = ethanol_walkers(args.walkers)
    _, chemgap_rate = timed_explore(ensemble, ensemble, walkers, cfg, warmup_steps=5)
    ray_rate = None
    if args.tasks > 1:
        import ray

        from chemgap.agent.explore import explore_groups
        from chemgap.agent.runtime import RayExecutor

        ray.init(num_cpus=args.tasks, include_dashboard=False, log_to_driver=False)
        ex = RayExecutor()
        explore_groups(ensemble, walkers, cfg, n_tasks=args.tasks, steps=5, executor=ex)  # warm-up
        t = time.perf_counter()
        res = explore_groups(ensemble, walkers, cfg, n_tasks=args.tasks, seed=1, executor=ex)
        ray_rate = res.steps / (time.perf_counter() - t)
        ray.shutdown()
        print(
            f"chemgap batched, {args.tasks} walker groups on Ray: {ray_rate:.1f} walker-steps/s "
            "(each task loads the ensemble; load time included)"
        )

    best = max(ray_rate or 0.0, chemgap_rate)
    if ase_rate is None:
        print(f"chemgap walker-steps/s: {best:.1f}")
        return
    print(f"speedup in-process: {chemgap_rate / ase_rate:.1f}")
    print(f"speedup: {best / ase_rate:.1f}")


if __name__ == "__main__":
    main()
