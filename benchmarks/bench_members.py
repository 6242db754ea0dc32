"""K ensemble members on C cores: one after another, against side by side on Ray with the
cores shared (every member at once, threads following the members still running), against
C at a time with the same share ("rounds"), against the former layout (C members at a time,
one thread each).

Data: 40 EMT-labelled 8-atom Cu cells (±2 % strain, 0.08 Å rattle); model as
bench_training.py (8x0e+8x1o, L=1, 2 interactions, r_max 5 Å, float32), batch 8, a fixed
number of epochs (no early stopping, no wall cap) so every layout does the same work.

- sequential: ``train_ensemble`` in this process, every member with all C threads;
- packed (chemgap's layout, ``models.ensemble.task_resources``): members that divide evenly
  over the cores run C at a time, others all at once asking Ray for C/K CPUs each; the threads
  of each member set epoch by epoch from the ensemble's ``Share``;
- rounds: C at a time whatever K, threads from the same ``Share``;
- former: Ray tasks of ``C // min(K, C)`` CPUs and as many threads, at most C at a time.

``--warm-workers N`` raises Ray's ``num_workers_soft_limit`` (idle workers kept; Ray's default
is the CPU count, so a K-th worker above it starts cold). Per-member timings (start and end,
relative to the start of the layout, and each epoch's thread count) show whether a core idles
while members remain. A 1-epoch warm-up (imports, TorchScript, Ray workers with mace loaded)
runs first, untimed.

Usage: python benchmarks/bench_members.py [--members 3] [--epochs 30] [--n 40]
       [--layouts sequential,packed,former,rounds] [--warm-workers 0]
The last line is the headline: ``K members: packed xA, ... over one after another``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from bench_training import make_data

warnings.filterwarnings("ignore")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class _Fixed:
    """The former layout's 'share': a fixed thread count, whoever runs."""

    def __init__(self, threads: int):
        self.cpus, self._threads = threads, threads

    def join(self, key: int) -> None:
        pass

    def leave(self, key: int) -> None:
        pass

    def running(self) -> int:
        return 1

    def threads(self) -> int:
        return self._threads


def _rounds_resources(n_tasks, ens_cfg, available):
    from chemgap.common.tasks import thread_share

    cpus = max(1, int(available.get("CPU", 1)))
    concurrent = max(1, min(n_tasks, cpus))
    return cpus / concurrent, 0.0, thread_share(cpus, concurrent)


def _former_resources(n_tasks, ens_cfg, available):
    cpus = max(1, int(available.get("CPU", 1)))
    threads = max(1, cpus // max(1, min(n_tasks, cpus)))
    return float(threads), 0.0, threads


def layout(name: str, data, members: int, epochs: int, out: Path) -> tuple[float, list]:
    """Wall seconds of one layout and each member's (start, end, threads by epoch)."""
    import chemgap.models.ensemble as ensemble_mod
    from chemgap.agent.runtime import RayExecutor
    from chemgap.models.config import EnsembleConfig, ModelConfig

    model = ModelConfig(
        r_max=5.0, num_channels=8, max_L=1, num_interactions=2, correlation=3, dtype="float32",
        e0="average",  # a speed benchmark: E0 does not change the cost of an epoch
    )  # fmt: skip
    cfg = EnsembleConfig(
        members=members, max_epochs=epochs, batch_size=8, lr=1e-2, patience=10_000,
        wall_time_s=1e9, valid_fraction=0.1,
    )  # fmt: skip
    executor = None
    if name != "sequential":
        executor = RayExecutor()
    original = ensemble_mod.task_resources
    if name == "former":
        ensemble_mod.task_resources = _former_resources
        executor.share = lambda cpus, running=1: _Fixed(max(1, cpus // min(members, cpus)))
    if name == "rounds":
        ensemble_mod.task_resources = _rounds_resources
    t0 = time.time()
    try:
        ensemble_mod.train_ensemble(data, model, cfg, out / name, seed=0, executor=executor)
    finally:
        ensemble_mod.task_resources = original
    wall = time.time() - t0
    timings = []
    for path in sorted((out / name).glob("member_*.json")):
        m = json.loads(path.read_text())["metrics"]
        start, end = m["ended_at"] - m["wall_s"] - t0, m["ended_at"] - t0
        timings.append((start, end, m["threads_by_epoch"]))
    return wall, timings


def main() -> None:
    """Parse the flags, time the three layouts, print the figures (the headline last)."""
    import ray
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--layouts", default="sequential,packed,former,rounds")
    p.add_argument(
        "--warm-workers",
        type=int,
        default=0,
        help="keep this many idle Ray workers (Ray's num_workers_soft_limit; default: the CPUs)",
    )
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    data = make_data(args.n, 0, repeat=(2, 1, 1))  # 8-atom cells
    print(f"{args.members} members, {args.epochs} epochs, {args.n} 8-atom Cu cells, {cpus} CPUs")
    system = {"num_workers_soft_limit": args.warm_workers} if args.warm_workers else {}
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _system_config=system)
    ray.get(ray.remote(lambda: 1).remote())  # the cluster is up before any clock starts
    walls = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # warm-up: imports, TorchScript, and K Ray workers with mace loaded, untimed
            for name in ("sequential", "packed"):
                layout(name, data[:8], args.members, 1, Path(tmp) / "warm")
            layouts = ["sequential", *(n for n in args.layouts.split(",") if n != "sequential")]
            for name in layouts:
                wall, timings = layout(name, data, args.members, args.epochs, Path(tmp))
                walls[name] = wall
                print(f"{name}: {wall:.1f} s")
                for k, (start, end, threads) in enumerate(timings):
                    counts = sorted(set(threads))
                    print(f"  member {k}: {start:6.1f} -> {end:6.1f} s, threads {counts}")
    finally:
        ray.shutdown()
    seq = walls.pop("sequential")
    ratios = ", ".join(f"{name} x{seq / wall:.2f}" for name, wall in walls.items())
    print(f"{args.members} members: {ratios} over one after another")


if __name__ == "__main__":
    main()
