"""Where a campaign's wall time goes: ``chemgap run`` (default: the default campaign,
cu-defects) timed as a user runs it, broken down into the loop's steps, the remediation
experiment, and the orchestration overhead around them.

The command runs in a subprocess, as a user would start it; its wall time is split with what
the run directory records:

- per step (train, calibrate, explore, probe, select, label, evaluate, diagnose), summed over
  iterations: ``state.json``'s ``timings`` (the campaign's own clock around each step, Ray
  task submission, worker start-up and result transfer inside the steps included);
- the experiment: ``remedies/results.json``'s ``wall_s`` (with the summed cell-seconds its
  cells spent training and labelling, which run side by side);
- overhead, everything else: start-up before the run directory exists (imports, spec
  validation: ``state.json``'s ``created`` against the start of the command); bookkeeping
  between the steps (state writes, cluster records: the campaign's elapsed time minus its
  steps); and the rest (Ray start-up and shutdown, experiment set-up, the report, the closing
  summary).

Usage: python benchmarks/campaign_profile.py [--campaign cu-defects] [--set PATH=VALUE ...]
The last line is the headline: ``overhead: X % of the wall time``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chemgap.agent.layout import RunLayout

STEPS = ("train", "calibrate", "explore", "probe", "select", "label", "evaluate", "diagnose")


def run_campaign(campaign: str, sets: list[str], out: Path) -> tuple[float, float, str]:
    """``chemgap run`` in a subprocess; (start, end) Unix times and its output's tail."""
    command = [sys.executable, "-m", "chemgap.agent.cli.main", "run", campaign, "--out", str(out)]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "100"}
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"chemgap run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return start, end, proc.stdout[-1500:]


def breakdown(out: Path, start: float, end: float) -> dict:
    """Seconds per part of the run (see the module docstring) from its run directory."""
    state = json.loads(RunLayout(out).state.read_text())
    steps = dict.fromkeys(STEPS, 0.0)
    for per_step in state["timings"].values():
        for step, seconds in per_step.items():
            name = "label" if step == "initial_labels" else step
            steps[name] = steps.get(name, 0.0) + float(seconds)
    experiment, cells = 0.0, {"train": 0.0, "label": 0.0}
    results = RunLayout(out).remedies.results
    if results.exists():
        experiment = float(json.loads(results.read_text()).get("wall_s", 0.0))
        for cell in RunLayout(out).remedies.cells_dir.glob("*.json"):
            payload = json.loads(cell.read_text())
            cells["train"] += float(payload.get("train_s", 0.0))
            cells["label"] += float(payload.get("oracle_s", 0.0))
    wall = end - start
    loop = float(state["elapsed_s"])
    before = float(state["created"]) - start
    between = loop - sum(steps.values())
    rest = wall - before - loop - experiment
    return {
        "wall": wall,
        "loop": loop,
        "iterations": int(state["iteration"]),
        "steps": steps,
        "experiment": experiment,
        "cells": cells,
        "overhead": {"start-up": before, "between steps": between, "rest": rest},
        "stop_reason": state.get("stop_reason"),
    }


def print_profile(campaign: str, b: dict) -> None:
    """The table (seconds and share of the wall time), the overhead figure last."""
    wall = b["wall"]

    def row(name: str, seconds: float) -> None:
        print(f"  {name:<44s} {seconds:8.1f} s {100 * seconds / wall:6.1f} %")

    print(
        f"chemgap run {campaign}: {wall:.1f} s wall; loop {b['loop']:.1f} s over "
        f"{b['iterations']} iteration(s) ({b['stop_reason']}); experiment "
        f"{b['experiment']:.1f} s"
    )
    for step, seconds in b["steps"].items():
        row(step, seconds)
    row(
        f"experiment (cells: train {b['cells']['train']:.0f}, label "
        f"{b['cells']['label']:.0f} cell-s)",
        b["experiment"],
    )
    overhead = b["overhead"]
    row("start-up (imports, spec, run directory)", overhead["start-up"])
    row("between steps (state writes, records)", overhead["between steps"])
    row("Ray start/stop, experiment set-up, report", overhead["rest"])
    total = sum(overhead.values())
    print(f"overhead: {100 * total / wall:.1f} % of the wall time ({total:.1f} s of {wall:.1f} s)")


def main() -> None:
    """Parse the flags, run the campaign, print where its time went."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--campaign", default="cu-defects")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        start, end, tail = run_campaign(args.campaign, args.sets, out)
        print(tail.rstrip())
        print_profile(args.campaign, breakdown(out, start, end))


if __name__ == "__main__":
    main()
