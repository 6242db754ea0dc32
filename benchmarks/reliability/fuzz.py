"""Reliability under bad input: the two fuzzers with many examples, every case counted.

The promise measured: bad input gets one sentence and exit code 2, never a traceback, and
nothing is written. ``tests/test_fuzz_specs.py`` (mutated campaign specs through ``validate``
and ``run``) and ``tests/test_fuzz_structures.py`` (corrupted structure files through
``predict``, ``label``, ``train``, ``explore``, ``diagnose`` and ``probe``) run under pytest
with ``CHEMGAP_FUZZ_KEEP_GOING=1``: a broken promise is recorded, not raised, so every case is
counted.

Run from the repository root:
    python benchmarks/reliability/fuzz.py [--specs 1000] [--structures 300] [--seed N]

A case is one command run on one fuzzed file. The last line is the headline figure:
``fuzz: N cases, exit 2: X % of refusals, tracebacks: T``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZERS = {"specs": "tests/test_fuzz_specs.py", "structures": "tests/test_fuzz_structures.py"}


def run_fuzzer(test_file: str, examples: int, seed: int | None, tally: Path) -> float:
    """Run one fuzz test file under pytest; its wall time, s."""
    env = dict(os.environ)
    env.update(
        CHEMGAP_FUZZ_EXAMPLES=str(examples),
        CHEMGAP_FUZZ_TALLY=str(tally),
        CHEMGAP_FUZZ_KEEP_GOING="1",
    )
    if seed is not None:
        env["CHEMGAP_FUZZ_SEED"] = str(seed)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"pytest on {test_file} exited {proc.returncode}")
    return seconds


def summarise(rows: list[dict]) -> dict:
    """Counts of one fuzzer's tally rows."""
    refused = [r for r in rows if r["exit_code"] != 0]
    named = [r["named"] for r in rows if r.get("named") is not None]
    return {
        "files": len({r["input"] for r in rows}),
        "cases": len(rows),
        "refused": len(refused),
        "exit2": sum(r["exit_code"] == 2 for r in refused),
        "tracebacks": sum(r["crashed"] for r in rows),
        "broken": sum(bool(r["broken"]) for r in rows),
        "named": (sum(named), len(named)),
        "by_command": Counter((r["command"], r["exit_code"]) for r in rows),
        "broken_kinds": Counter(r["case"] for r in rows if r["broken"]),
        "causes": Counter(_cause(r) for r in rows if r["crashed"]),
    }


def _cause(row: dict) -> str:
    """The exception a crashed case raised (``raised MarkupError: ...``), or its exit code."""
    for text in row["broken"]:
        if text.startswith("raised "):
            return text.removeprefix("raised ").partition(":")[0]
    return f"exit {row['exit_code']}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "–"


def report(name: str, s: dict, seconds: float) -> None:
    """One line per fuzzer, then its commands' exit codes and any broken promise."""
    line = (
        f"{name}: {s['files']} files, {s['cases']} cases in {seconds:.0f} s; refused "
        f"{s['refused']} (exit 2: {_percent(s['exit2'], s['refused'])}); tracebacks "
        f"{s['tracebacks']}; broken promises {s['broken']}"
    )
    named, of = s["named"]
    if of:
        line += f"; refusal names the changed field: {_percent(named, of)} of {of}"
    print(line)
    by_command = sorted(s["by_command"].items())
    codes = ", ".join(f"{cmd} exit {code}: {n}" for (cmd, code), n in by_command)
    print(f"  {codes}")
    if s["broken_kinds"]:
        print(f"  broken by input kind: {dict(s['broken_kinds'])}")
    if s["causes"]:
        print(f"  tracebacks by cause: {dict(s['causes'])}")


def main() -> None:
    """Run both fuzzers and print their figures, the headline last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=1000, help="fuzzed specs")
    parser.add_argument("--structures", type=int, default=300, help="fuzzed structure files")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: fixed)")
    parser.add_argument(
        "--tally", type=Path, default=None, help="keep every case as JSON lines in this folder"
    )
    args = parser.parse_args()
    counts = {"specs": args.specs, "structures": args.structures}
    total = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.tally or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, test_file in FUZZERS.items():
            tally = folder / f"{name}.jsonl"
            tally.write_text("")
            seconds = run_fuzzer(test_file, counts[name], args.seed, tally)
            rows = [json.loads(line) for line in tally.read_text().splitlines()]
            s = summarise([r for r in rows if r["fuzzer"] == name])
            report(name, s, seconds)
            total.update({k: s[k] for k in ("cases", "refused", "exit2", "tracebacks", "broken")})
    print(
        f"fuzz: {total['cases']} cases, exit 2: {_percent(total['exit2'], total['refused'])} of "
        f"refusals, tracebacks: {total['tracebacks']}"
    )


if __name__ == "__main__":
    main()
