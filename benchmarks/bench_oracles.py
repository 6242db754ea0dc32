"""Oracle throughput: labels per second for each backend on a small system, the per-call
overhead of the killable child process, and the speed-up of 2 Ray workers over 1 for xtb.

Run from the repository root:  python benchmarks/bench_oracles.py
The last line is the headline figure (``xtb speedup 2 workers: 1.8x``).
"""

from __future__ import annotations

import os
import platform
import time
import warnings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.simplefilter("ignore")

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

from chemgap.oracle import OracleConfig, label_batch, label_one  # noqa: E402


def rattled(atoms: Atoms, n: int, stdev: float = 0.03) -> list[Atoms]:
    out = []
    for seed in range(n):
        copy = atoms.copy()
        copy.rattle(stdev, seed=seed)
        out.append(copy)
    return out


CASES: list[tuple[str, OracleConfig, Atoms, int]] = [
    ("emt Cu32", OracleConfig(name="emt"), bulk("Cu", cubic=True).repeat(2), 100),
    ("emt+d3 Cu32", OracleConfig(name="emt", d3=True), bulk("Cu", cubic=True).repeat(2), 50),
    ("sw Si64", OracleConfig(name="sw"), bulk("Si", "diamond", 5.431, cubic=True).repeat(2), 50),
    (
        "tersoff Si64",
        OracleConfig(name="tersoff"),
        bulk("Si", "diamond", 5.432, cubic=True).repeat(2),
        50,
    ),
    ("xtb GFN2 ethanol", OracleConfig(name="xtb"), molecule("CH3CH2OH"), 50),
    (
        "xtb GFN1 Si8 (periodic)",
        OracleConfig(name="xtb", params={"method": "GFN1-xTB"}),
        bulk("Si", "diamond", 5.431, cubic=True),
        3,
    ),
    (
        "pyscf PBE/def2-SVP water",
        OracleConfig(name="pyscf", params={"xc": "PBE", "basis": "def2-SVP"}),
        molecule("H2O"),
        3,
    ),
    (
        "ase (EMT by import path) Cu32",
        OracleConfig(name="ase", params={"calculator": "ase.calculators.emt:EMT"}),
        bulk("Cu", cubic=True).repeat(2),
        200,
    ),
]


def rate(structures: list[Atoms], config: OracleConfig, isolate: bool, rounds: int = 3) -> float:
    """Labels per second, best of ``rounds`` passes (other jobs share this machine)."""
    label_one(structures[0], config, isolate=isolate)  # warm-up: imports, child start
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for atoms in structures:
            result = label_one(atoms, config, isolate=isolate)
            if not result.ok:
                raise RuntimeError(f"{config.name}: {result.status}: {result.message}")
        best = max(best, len(structures) / (time.perf_counter() - start))
    return best


def ray_rate(structures: list[Atoms], config: OracleConfig, num_cpus: int) -> tuple[float, float]:
    """Labels per wall second, and concurrency (summed oracle seconds / wall seconds)."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        # Warm-up: start the workers and their oracle child processes.
        label_batch(structures[: 2 * num_cpus], config)
        best = (0.0, 0.0)
        for _ in range(2):  # best of two passes: other jobs share this machine
            summary = label_batch(structures, config)
            if summary.n_ok != len(structures):
                raise RuntimeError(summary.describe())
            concurrency = summary.oracle_seconds / summary.wall_seconds
            best = max(best, (summary.labels_per_second, concurrency))
        return best
    finally:
        ray.shutdown()


def main() -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print("labels per second, one process (in-process | in the killable child process):")
    for label, config, atoms, n in CASES:
        structures = rattled(atoms, n)
        local = rate(structures, config, isolate=False)
        isolated = rate(structures, config, isolate=True)
        print(f"  {label:32s} {local:9.1f} | {isolated:9.1f}   ({len(atoms)} atoms)")
    from ase.cluster import Icosahedron

    tiny = rattled(Icosahedron("Cu", 2), 200)  # 13-atom cluster: ~1 ms calls, overhead shows
    local = rate(tiny, OracleConfig(name="emt"), isolate=False, rounds=5)
    isolated = rate(tiny, OracleConfig(name="emt"), isolate=True, rounds=5)
    overhead_ms = 1e3 * (1 / isolated - 1 / local)
    print(
        f"EMT Cu13 cluster: {1e3 / local:.2f} ms/label in-process, "
        f"{1e3 / isolated:.2f} ms/label in the child process: overhead {overhead_ms:.2f} ms/call"
    )
    emt = rattled(bulk("Cu", cubic=True).repeat(2), 100)

    c60 = rattled(molecule("C60"), 16, stdev=0.02)
    config = OracleConfig(name="xtb")
    one, c1 = ray_rate(c60, config, num_cpus=1)
    two, c2 = ray_rate(c60, config, num_cpus=2)
    emt_ray, _ = ray_rate(emt, OracleConfig(name="emt"), num_cpus=2)
    print(f"emt Cu32 as Ray tasks, 2 workers: {emt_ray:.1f} labels/s")
    print(
        f"xtb GFN2 C60 ({len(c60)} structures) as Ray tasks: 1 worker {one:.2f} labels/s "
        f"(concurrency {c1:.2f}), 2 workers {two:.2f} labels/s (concurrency {c2:.2f})"
    )
    print(f"xtb speedup 2 workers: {two / one:.2f}x")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
