"""Training throughput of one chemgap MACE member vs mace-torch's ``mace_run_train``, and the
wall time of a 4-member ensemble on Ray vs 4 members one after another.

Same data (EMT-labelled 32-atom Cu cells, extxyz), same model (ScaleShiftMACE, 8x0e+8x1o, L=1,
2 interactions, correlation 3, r_max 5 Å, radial MLP [64,64,64], 16x0e readout MLP, float32),
batch size 8, E epochs, EMA, AMSGrad Adam, validation every epoch on a 10% split.
Structures/s = training structures x epochs / time of the epoch loop (start-up excluded: for
mace_run_train from its "Started training" log line to its last epoch log line).

Usage:  python benchmarks/bench_training.py [--n 120] [--epochs 4] [--ens-epochs 3]
Prints figures; the last line is the headline.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_data(n: int, seed: int, repeat: tuple[int, int, int] = (2, 2, 2)):
    """``n`` EMT-labelled cubic Cu cells repeated ``repeat`` (32 atoms by default), ±2 %
    strain, 0.08 Å rattle.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat(repeat)
        a.set_cell(a.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        a.rattle(0.08, seed=int(rng.integers(2**31)))
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = None
        a.info["REF_energy"] = float(e)
        a.arrays["REF_forces"] = np.array(f)
        out.append(a)
    return out


def configs(epochs: int, members: int = 1):
    from chemgap.models.config import EnsembleConfig, ModelConfig

    model = ModelConfig(
        r_max=5.0, num_channels=8, max_L=1, num_interactions=2, correlation=3, dtype="float32",
        e0="average",  # a speed benchmark: E0 does not change the cost of an epoch
    )  # fmt: skip
    ens = EnsembleConfig(
        members=members,
        max_epochs=epochs,
        batch_size=8,
        lr=1e-2,
        ema_decay=0.99,
        valid_fraction=0.1,
        patience=1000,
        wall_time_s=1e9,
    )
    return model, ens


def bench_ours(data, epochs: int, threads: int) -> dict:
    from chemgap.models.train import train_member

    model, ens = configs(epochs)
    t0 = time.perf_counter()
    res = train_member(data, model, ens, seed=0, threads=threads)
    wall = time.perf_counter() - t0
    m = res.metrics[0]
    return {"wall_s": wall, "train_s": m["train_s"], "sps": m["structures_per_s"], "m": m}


_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


def _stamp(line: str) -> float | None:
    m = _TS.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if m else None


def bench_mace(path: Path, workdir: Path, epochs: int, n_train: int, threads: int) -> dict:
    exe = Path(sys.executable).with_name("mace_run_train")
    cmd = [
        str(exe), "--name", "bench", "--work_dir", str(workdir), "--train_file", str(path),
        "--valid_fraction", "0.1", "--energy_key", "REF_energy", "--forces_key", "REF_forces",
        "--E0s", "average", "--model", "ScaleShiftMACE", "--hidden_irreps", "8x0e+8x1o",
        "--num_interactions", "2", "--correlation", "3", "--r_max", "5.0",
        "--MLP_irreps", "16x0e", "--radial_MLP", "[64, 64, 64]", "--batch_size", "8",
        "--valid_batch_size", "8", "--max_num_epochs", str(epochs), "--loss", "weighted",
        "--energy_weight", "1", "--forces_weight", "10", "--ema", "--ema_decay", "0.99",
        "--amsgrad", "--lr", "0.01", "--default_dtype", "float32", "--device", "cpu",
        "--seed", "0", "--eval_interval", "1", "--num_workers", "0", "--patience", "1000",
        "--scaling", "rms_forces_scaling", "--plot", "False",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mace_run_train failed:\n{proc.stderr[-3000:]}")
    logs = sorted((workdir / "logs").glob("*.log"))
    lines = logs[-1].read_text().splitlines() if logs else proc.stderr.splitlines()
    start = next((_stamp(x) for x in lines if "Started training" in x), None)
    epoch_lines = [x for x in lines if re.search(r"Epoch \d+", x) and _stamp(x)]
    end = _stamp(epoch_lines[-1]) if epoch_lines else None
    train_s = (end - start) if start and end else float("nan")
    return {"wall_s": wall, "train_s": train_s, "sps": n_train * epochs / train_s, "cmd": cmd}


def bench_ensemble(data, epochs: int, members: int, out: Path) -> dict:
    import ray

    from chemgap.agent.runtime import RayExecutor
    from chemgap.models.ensemble import train_ensemble

    model, ens = configs(epochs, members)
    t0 = time.perf_counter()
    train_ensemble(data, model, ens, out / "seq", seed=0)
    seq = time.perf_counter() - t0
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        ray.get(ray.remote(lambda: 1).remote())  # cluster up before the clock starts
        t0 = time.perf_counter()
        train_ensemble(data, model, ens, out / "ray", seed=0, executor=RayExecutor())
        par = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"sequential_s": seq, "ray_s": par}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="structures (32-atom Cu cells)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--ens-epochs", type=int, default=3)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-ensemble", action="store_true")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data = make_data(args.n, 0)
    n_train = len(data) - max(1, round(0.1 * len(data)))
    cuda = torch.cuda.is_available()
    print(f"machine: {os.cpu_count()} CPUs, CUDA {cuda}, torch {torch.__version__}")
    print(f"data: {len(data)} Cu cells x 32 atoms ({n_train} train), epochs {args.epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import ase.io

        ase.io.write(tmp / "train.xyz", data, format="extxyz")
        ours = bench_ours(data, args.epochs, args.threads)
        print(
            f"chemgap train_member: {ours['sps']:.1f} structures/s "
            f"(epoch loop {ours['train_s']:.1f} s, wall {ours['wall_s']:.1f} s)"
        )
        mace = bench_mace(tmp / "train.xyz", tmp / "mace", args.epochs, n_train, args.threads)
        print(
            f"mace_run_train:       {mace['sps']:.1f} structures/s "
            f"(epoch loop {mace['train_s']:.1f} s, wall {mace['wall_s']:.1f} s)"
        )
        ens = None
        if not args.skip_ensemble:
            ens = bench_ensemble(data, args.ens_epochs, args.members, tmp)
            print(
                f"{args.members}-member ensemble, {args.ens_epochs} epochs: one after another "
                f"{ens['sequential_s']:.1f} s, Ray tasks {ens['ray_s']:.1f} s "
                f"(x{ens['sequential_s'] / ens['ray_s']:.2f})"
            )
    ratio = ours["sps"] / mace["sps"]
    line = f"headline: chemgap/mace_run_train throughput ratio {ratio:.2f}"
    if ens:
        line += f"; {args.members}-member Ray speed-up x{ens['sequential_s'] / ens['ray_s']:.2f}"
    print(line)


if __name__ == "__main__":
    main()
