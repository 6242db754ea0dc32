"""A newcomer's first ``chemgap train``: 40 EMT-labelled 8-atom Cu cells, ``--members 3``,
every other setting at its default (the budget scaled to the data), timed as a user runs it.

The cells are made and labelled here (±2 % strain, 0.08 Å rattle, EMT; as
bench_training.py), written to an extxyz file, and ``chemgap train`` runs on it in a
subprocess (a fresh local Ray instance, as from a shell). The command's closing lines (the
scaled budget, what stopped each member) are printed, then the wall time.

Usage: python benchmarks/first_train.py [--members 3] [--n 40] [-- EXTRA chemgap train ARGS]
The last line is the headline: ``chemgap train: M:SS wall``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
from bench_training import make_data


def main() -> None:
    """Make the data, run ``chemgap train`` on it, print its summary and the wall time."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("extra", nargs="*", help="more chemgap train arguments (after --)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cells.xyz"
        ase.io.write(data, make_data(args.n, 0, repeat=(2, 1, 1)), format="extxyz")
        command = [
            sys.executable, "-m", "chemgap.agent.cli.main", "train", str(data),
            "-o", str(Path(tmp) / "model"), "--members", str(args.members),
            "--oracle", "emt", *args.extra,
        ]  # fmt: skip
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "100"}
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"chemgap train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if "━" not in line))
    minutes, seconds = divmod(round(wall), 60)
    print(f"chemgap train: {minutes}:{seconds:02d} wall ({wall:.1f} s)")


if __name__ == "__main__":
    main()
