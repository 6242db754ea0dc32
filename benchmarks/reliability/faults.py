"""A campaign against an oracle that fails on a set fraction of structures, in every way
reference codes fail: does it complete, and is every failure categorised?

The kill/resume campaign (EMT copper; here 5 iterations of 16 labels, the EOS probe every
iteration and a remediation experiment: about 100 oracle calls) runs
through the CLI with :class:`chemgap.oracle.testing.FaultyCalculator` as its oracle: at
``--rate`` (default 0.2) a structure meets one of seven faults (an exception, an SCF that does
not converge, a hang past the 5 s time limit, a NaN energy, infinite forces, the oracle process
killed, the Ray worker killed). Which structure meets which fault is fixed by its key, so the
category each row of data.db should carry is recomputed here, independently of the campaign.

    python benchmarks/reliability/faults.py --rate 0.2 --seed 0 [--iterations 5] [--batch 16]

The figure comes last: ``faults: rate R, N oracle calls, F failed, categorised F (100 %),
wrong category: 0, asked twice: 0, run: done``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from kill_resume import CLI, campaign_spec, experiment_done

from chemgap.agent.layout import RunLayout
from chemgap.oracle.results import FailureCategory
from chemgap.oracle.testing import FAULT_CATEGORY as CATEGORY
from chemgap.oracle.testing import FaultyCalculator


def statuses(db: Path) -> list[tuple[str, str, str]]:
    """(key, status, message) of every row of an ASE SQLite database."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = """SELECT k.value, t.value, s.data FROM systems s
               JOIN text_key_values k ON k.id = s.id AND k.key = 'key'
               JOIN text_key_values t ON t.id = s.id AND t.key = 'status'"""
        return [(k, t, str(d or "")) for k, t, d in con.execute(q)]
    finally:
        con.close()


def fault_campaign(workdir: Path, rate: float, seed: int, iterations: int, batch: int) -> dict:
    """Run the campaign with faults in ``workdir``; the figures as a dict."""
    journal, spec_path, run = workdir / "calls.txt", workdir / "spec.yaml", workdir / "run"
    spec = campaign_spec(journal, iterations)
    kwargs = {"rate": rate, "seed": seed, "journal": str(journal), "hang_s": 120}
    spec["oracle"]["params"]["kwargs"] = kwargs
    spec["oracle"]["timeout_s"] = 5.0
    spec["selection"]["batch_size"] = batch
    spec_path.write_text(yaml.safe_dump(spec))
    t0 = time.monotonic()
    with (workdir / "log.txt").open("w") as log:
        code = subprocess.run(
            [str(CLI), "run", str(spec_path), "--out", str(run), "--trust-code"],
            stdout=log, stderr=subprocess.STDOUT, timeout=7200,
        ).returncode  # fmt: skip
    judge = FaultyCalculator(rate=rate, seed=seed)
    rows = statuses(RunLayout(run).db) + statuses(RunLayout(run).remedies.labels_db)
    failed = [(k, s, m) for k, s, m in rows if s != "ok"]
    categories = {c.value for c in FailureCategory}
    wrong = [(k, s) for k, s, _ in rows if s != CATEGORY[judge.fault_for(k)]]
    keys = Counter(k for k, _, _ in rows)
    state = json.loads(RunLayout(run).state.read_text())
    return {
        "exit_code": code,
        "state": state["status"],
        "experiment_done": experiment_done(run),
        "oracle_calls": len(rows),
        "failed": len(failed),
        "by_category": dict(Counter(s for _, s, _ in failed)),
        "categorised": sum(s in categories and bool(m) for _, s, m in failed),
        "wrong_category": len(wrong),
        "asked_twice": sum(n > 1 for n in keys.values()),
        "faults_drawn": dict(Counter(judge.fault_for(k) or "none" for k in keys)),
        "seconds": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    """Parse the flags, run the campaign, print the figures (the summary line last)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="labels per iteration")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chemgap-faults-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        r = fault_campaign(workdir, args.rate, args.seed, args.iterations, args.batch)
    print(json.dumps(r, indent=2))
    share = 100 * r["categorised"] / r["failed"] if r["failed"] else 100.0
    print(
        f"faults: rate {args.rate:g}, {r['oracle_calls']} oracle calls, {r['failed']} failed, "
        f"categorised {r['categorised']} ({share:.0f} %), wrong category: {r['wrong_category']}, "
        f"asked twice: {r['asked_twice']}, run: {r['state']}"
        + ("" if r["experiment_done"] else " (experiment not done)")
        + ("" if r["exit_code"] == 0 else f", exit code {r['exit_code']}")
    )


if __name__ == "__main__":
    sys.exit(main())
