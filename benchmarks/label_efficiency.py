"""Label efficiency: how many oracle calls does active learning save against random sampling?

The same campaign (default ``cu-defects``) is run to a fixed number of iterations with three
selection strategies, each over ``--seeds`` master seeds (the seed changes the initial labels,
the test set is drawn with it too, the walkers, the training):

- ``uncertainty`` and ``diverse``: the loop as it ships (candidates are frames above the
  calibrated trust level; query by committee, Seung et al. 1992);
- ``random``: the control. Every explored frame is a candidate (trust level ~0, walkers never
  stopped for being uncertain) and the batch is drawn uniformly from them: random frames of the
  same kind of trajectories, not random among the uncertain ones.

Probes are switched off so every label comes from the strategy under test (and the spec's
remediation experiment too). For each run the
learning curve is the out-of-distribution test force MAE after each iteration against the
oracle calls spent on training labels (the test set's calls excluded). The target error is
``--target`` eV/Å, or by default the mean final OOD error of the random runs; the calls a
strategy needs to reach it are read off its mean curve by linear interpolation (NaN when it
never does). ``label_efficiency`` = calls of the best active strategy / calls of random.

Published results disagree: query by committee matched random with 10 % of the data for ANI-1x
(Smith et al. 2018), a 2026 study found 5–13 % fewer labels than random; the goal here on
cu-defects is ≤ 0.5.

Usage: python benchmarks/label_efficiency.py [--campaign cu-defects] [--seeds 0,1,2]
       [--iterations 6] [--batch 4] [--members K] [--out runs/label_efficiency]
       [--target EV_PER_A]
Prints one line per run, the curves and the calls table, and ``label_efficiency: X`` last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from chemgap.agent.layout import RunLayout

STRATEGIES = ("uncertainty", "diverse", "random")
# every frame a candidate, no walker restarted for its uncertainty (eV/Å)
ALL_FRAMES = ["exploration.trust.mode=fixed", "exploration.trust.lower=1e-6",
              "exploration.trust.upper=1e3"]  # fmt: skip


def run_one(args: argparse.Namespace, strategy: str, seed: int) -> list[dict]:
    """One campaign (or its finished run directory); returns its history rows."""
    out = Path(args.out) / f"{strategy}-s{seed}"
    state = RunLayout(out).state
    if not (state.exists() and json.loads(state.read_text())["status"] == "done"):
        sets = [
            f"seed={seed}",
            f"selection.strategy={strategy}",
            f"selection.batch_size={args.batch}",
            f"budget.max_iterations={args.iterations}",
            "budget.max_oracle_calls=10000",
            "budget.wall_time_s=36000",
            "probes.names=[]",
            "remediation.remedies=[]",
            *(ALL_FRAMES if strategy == "random" else []),
            *([f"ensemble.members={args.members}"] if args.members else []),
        ]
        chemgap = str(Path(sys.executable).with_name("chemgap"))
        cmd = [chemgap, "resume" if out.exists() else "run"]
        cmd += [str(out)] if out.exists() else [args.campaign, "-o", str(out)]
        if not out.exists():
            cmd += [x for s in sets for x in ("--set", s)]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"{strategy} seed {seed}: {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(state.read_text())["history"]


def curve(history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(oracle calls on training labels, OOD test force MAE eV/Å) after each iteration."""
    calls = np.array([h["oracle_calls"] for h in history], dtype=float)
    err = np.array([h["test_force_mae_ood"] for h in history], dtype=float)
    return calls, err


def calls_to_reach(calls: np.ndarray, err: np.ndarray, target: float) -> float:
    """First crossing of ``target`` by the curve, linearly interpolated (NaN if never)."""
    if err[0] <= target:
        return float(calls[0])
    for k in range(1, len(err)):
        if err[k] <= target:
            f = (err[k - 1] - target) / (err[k - 1] - err[k])
            return float(calls[k - 1] + f * (calls[k] - calls[k - 1]))
    return float("nan")


def main() -> None:
    """Run the grid, print curves and the calls each strategy needs, the figure last."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--campaign", default="cu-defects")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--members", type=int, default=None, help="ensemble size (default: spec's)")
    p.add_argument("--out", default="runs/label_efficiency")
    p.add_argument("--target", type=float, default=None, help="OOD force MAE to reach, eV/Å")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    curves = {s: [curve(run_one(args, s, seed)) for seed in seeds] for s in STRATEGIES}
    mean = {}
    for s, runs in curves.items():
        n = min(len(c) for c, _ in runs)
        calls = np.mean([c[:n] for c, _ in runs], axis=0)
        err = np.array([e[:n] for _, e in runs])
        mean[s] = (calls, err.mean(axis=0))
        sd = err.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(n)
        print(f"\n{s}: oracle calls / OOD test force MAE meV/Å (mean ± sd over {len(runs)})")
        for k in range(n):
            print(f"  {calls[k]:5.0f}  {1000 * mean[s][1][k]:6.1f} ± {1000 * sd[k]:5.1f}")
    target = args.target if args.target is not None else float(mean["random"][1][-1])
    need = {s: calls_to_reach(*mean[s], target) for s in STRATEGIES}
    print(f"\ntarget: OOD test force MAE {1000 * target:.1f} meV/Å")
    for s in STRATEGIES:
        print(f"  {s:12s} {need[s]:6.1f} oracle calls")
    active = [need[s] for s in ("uncertainty", "diverse") if np.isfinite(need[s])]
    best = min(active) if active else float("nan")
    print(f"label_efficiency: {best / need['random']:.2f}")


if __name__ == "__main__":
    main()
