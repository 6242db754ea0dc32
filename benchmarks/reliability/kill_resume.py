"""Kill -9 a campaign at random moments in every step, resume it each time, and count what
was lost, duplicated or asked of the oracle twice.

A small EMT copper campaign (3 iterations, the EOS probe every iteration, a remediation
experiment after the loop) runs through the CLI as a user would (``chemgap run``, then
``chemgap resume``), in its own process group. Before each kill a target is drawn: one slot of
the campaign's steps in order (the initial labelling, then train, calibrate, explore, probe,
select, label, evaluate of each iteration, then the remediation experiment), the slots sampled
without replacement and in order so the kills spread over every step. The harness waits until
the run is in that step (from ``state.json``), waits a random fraction of the step's typical
duration (or until the step ends), and SIGKILLs the whole process group (driver, Ray, oracle
processes). After every kill it checks that ``state.json`` parses, ``chemgap status`` calls
the run ``interrupted`` (``done`` when only its experiment was running) and data.db passes
SQLite's integrity check; it snapshots the stored labels, then resumes. At the end the run is
resumed to ``done`` and compared with the oracle's own journal (kept by
:class:`chemgap.oracle.testing.FaultyCalculator`, outside any database):

- lost: labels stored before some kill that are missing at the end, plus selected structures
  never labelled;
- duplicated: rows of a structure stored twice (data.db and the experiment's labels.db);
- wasted oracle calls: labelling calls beyond one per stored structure (labels in flight at a
  kill, asked again after it);
- state errors: an unreadable state.json, a failing ``chemgap status``, a corrupt data.db, or a
  run that does not end ``done`` with its experiment.

    python benchmarks/reliability/kill_resume.py --kills 20 --seed 0

The figure comes last: ``kills: N, lost: a, duplicated: b, wasted oracle calls: c, state
errors: d``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from chemgap.agent.layout import RunLayout

STEPS = ("train", "calibrate", "explore", "probe", "select", "label", "evaluate")
FAULTY = "chemgap.oracle.testing:FaultyCalculator"
CLI = Path(sys.executable).parent / "chemgap"  # the installed command, as a user runs it


def campaign_spec(journal: Path, iterations: int = 3) -> dict:
    """The campaign killed: EMT Cu, 4-atom bulk cells and 7-atom vacancy cells, small members,
    the oracle a journalled EMT taking 0.3 s a call (rate 0: no injected faults).
    """
    return {
        "name": "kill-resume",
        "seed": 1,
        "system": {
            "seeds": [
                {"kind": "bulk", "formula": "Cu", "crystal": "fcc", "a": 3.6, "cubic": True,
                 "count": 8, "rattle_A": 0.05},
                {"kind": "vacancy", "formula": "Cu", "crystal": "fcc", "a": 3.6, "cubic": True,
                 "supercell": [2, 1, 1], "count": 2, "rattle_A": 0.03, "initial": False},
            ],
            "initial_labels": 8,
            "holdout_fraction": 0.25,
            "calibration_fraction": 0.25,
        },
        "oracle": {
            "name": "ase",
            "params": {
                "calculator": FAULTY,
                "kwargs": {"rate": 0.0, "journal": str(journal), "delay_s": 0.3},
            },
        },
        "model": {"r_max": 4.0, "num_channels": 8, "max_L": 1, "num_interactions": 2,
                  "correlation": 2},
        "ensemble": {"members": 2, "max_epochs": 6, "batch_size": 4, "wall_time_s": 30},
        "exploration": {
            "walkers": 4, "steps": 40, "temperatures_K": [300, 900], "timestep_fs": 2.0,
            "trust": {"mode": "fixed", "lower": 0.001, "upper": 50.0},
        },
        "selection": {"strategy": "diverse", "batch_size": 4},
        "budget": {"max_iterations": iterations, "max_oracle_calls": 200},
        "test_set": {"per_kind": 4, "method": "rattle", "rattle_A": 0.04},
        "probes": {"names": ["eos"], "every": 1},
        "remediation": {
            "remedies": ["uncertainty"], "budget": 4, "repeats": 1, "members": 1,
            "max_epochs": 4,
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- where a run is
def read_state(run: Path) -> dict | None:
    """state.json, or None before it exists; raises on a corrupt one."""
    path = RunLayout(run).state
    return json.loads(path.read_text()) if path.exists() else None


def phase(run: Path) -> tuple[int, str]:
    """(iteration, step in progress) of ``run``: step ``initial``, one of :data:`STEPS`,
    ``remedy`` (the loop is done, the experiment is not) or ``finished``.
    """
    state = read_state(run)
    if state is None:
        return 0, "starting"  # the run directory is not complete yet
    if state["status"] == "done":
        return state["iteration"], "finished" if experiment_done(run) else "remedy"
    step, it = state["step"], state["iteration"]
    if step == "init":
        return 0, "initial"
    if step in ("initial_labels", "evaluate"):
        return it + 1, "train"
    return it, STEPS[STEPS.index(step) + 1]


def experiment_done(run: Path) -> bool:
    """Whether the remediation experiment wrote its results."""
    return RunLayout(run).remedies.results.exists()


def slots(iterations: int) -> list[tuple[int, str]]:
    """Every (iteration, step) a campaign of ``iterations`` passes through, in order."""
    out = [(0, "initial")]
    out += [(it, step) for it in range(1, iterations + 1) for step in STEPS]
    return [*out, (iterations, "remedy")]


def order(slot: tuple[int, str]) -> tuple[int, int]:
    """Sort key of a slot in campaign order."""
    it, step = slot
    rank = {"starting": -2, "initial": -1, "remedy": len(STEPS), "finished": len(STEPS) + 1}
    return (it, rank.get(step, STEPS.index(step) if step in STEPS else 0))


def typical_seconds(run: Path, step: str) -> float:
    """Median wall time of ``step`` in the run's finished iterations (1 s when unknown)."""
    try:
        timings = (read_state(run) or {}).get("timings", {})
    except (json.JSONDecodeError, OSError):
        return 1.0
    seen = [t[step] for t in timings.values() if step in t]
    return float(statistics.median(seen)) if seen else 1.0


# --------------------------------------------------------------------------- what a run holds
def db_keys(path: Path) -> list[str]:
    """Structure keys of every non-pending row of an ASE SQLite database (read-only)."""
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20)
    try:
        q = """SELECT k.value FROM text_key_values k
               LEFT JOIN text_key_values s ON s.id = k.id AND s.key = 'status'
               WHERE k.key = 'key' AND COALESCE(s.value, 'ok') != 'pending'"""
        return [row[0] for row in con.execute(q)]
    finally:
        con.close()


def integrity_ok(path: Path) -> bool:
    """SQLite's own check of a database file (True when there is none yet)."""
    if not path.exists():
        return True
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError:
        return False
    finally:
        con.close()


def selected_keys(run: Path) -> set[str]:
    """Keys of the structures each finished selection step chose."""
    import ase.io

    from chemgap.agent.store import structure_key

    out = set()
    for path in (it.selection for it in RunLayout(run).iterations()):
        if path.exists() and path.stat().st_size:
            out |= {structure_key(a) for a in ase.io.read(path, index=":")}
    return out


def journal_calls(path: Path) -> tuple[Counter, int]:
    """(labelling calls per structure key, direct calls: probe reference evaluations)."""
    labels: Counter = Counter()
    direct = 0
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "start":
                if parts[-1] == "child":
                    labels[parts[1]] += 1
                else:
                    direct += 1
    return labels, direct


# --------------------------------------------------------------------------- the harness
@dataclass
class Tally:
    """What the kills did."""

    kills: list[tuple[int, str]] = field(default_factory=list)  # where each landed
    seen: set[str] = field(default_factory=set)  # keys stored at some point
    state_errors: list[str] = field(default_factory=list)


def _command(run: Path, spec: Path, first: bool) -> list[str]:
    cli = [str(CLI)]
    if first:
        return [*cli, "run", str(spec), "--out", str(run), "--trust-code"]
    return [*cli, "resume", str(run), "--trust-code"]


def _start(run: Path, spec: Path, first: bool, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with log.open("a") as out:
        out.write(f"\n==== {'run' if first else 'resume'} at {time.strftime('%X')}\n")
        out.flush()
        return subprocess.Popen(
            _command(run, spec, first), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip


def _wait_for(run: Path, target: tuple[int, str], proc: subprocess.Popen, limit: float) -> bool:
    """Poll until ``run`` is in ``target`` or past it; False when the process ended first."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if order(phase(run)) >= order(target):
                return True
        except (json.JSONDecodeError, OSError, ValueError):
            pass  # between writes: read again
        time.sleep(0.03)
    return proc.poll() is None


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _check_after_kill(run: Path, tally: Tally) -> None:
    """state.json parses, ``chemgap status`` answers, data.db is whole; snapshot the labels."""
    try:
        read_state(run)
    except (json.JSONDecodeError, OSError) as exc:
        tally.state_errors.append(f"state.json unreadable: {exc}")
    status = subprocess.run(
        [str(CLI), "status", "--json", str(run)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if status.returncode != 0 and RunLayout(run).state.exists():
        tally.state_errors.append(f"chemgap status failed: {status.stderr.strip()[-200:]}")
    elif status.returncode == 0:
        said = json.loads(status.stdout)["state"]
        if said != ("done" if phase(run)[1] == "remedy" else "interrupted"):
            tally.state_errors.append(f"chemgap status says {said!r} after a kill")
    for db in (RunLayout(run).db, RunLayout(run).remedies.labels_db):
        if not integrity_ok(db):
            tally.state_errors.append(f"{db.name} failed its integrity check")
        tally.seen |= set(db_keys(db))


def next_target(
    remaining: list[tuple[int, str]], wanted: int, rng: np.random.Generator
) -> tuple[tuple[int, str] | None, list[tuple[int, str]]]:
    """The next slot to kill in, and the slots after it: selection sampling (Knuth's Algorithm
    S) of ``wanted`` slots from ``remaining`` in order, so the kills spread over the run and
    slots a kill overshot are made up for by the ones left.
    """
    for i, slot in enumerate(remaining):
        if rng.random() * (len(remaining) - i) < wanted:
            return slot, remaining[i + 1 :]
    return None, []


def _kill_within(run: Path, target: tuple[int, str], proc: subprocess.Popen, wait: float) -> None:
    """Kill ``proc`` after ``wait`` seconds, or as soon as the run leaves ``target``."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if order(phase(run)) > order(target):
                break
        except (json.JSONDecodeError, OSError, ValueError):
            pass
        time.sleep(0.02)
    _kill(proc)


def kill_and_resume(
    workdir: Path,
    kills: int,
    seed: int,
    iterations: int = 3,
    targets: list[tuple[int, str]] | None = None,
) -> dict:
    """Run the campaign in ``workdir``, killing it ``kills`` times; the figures as a dict.

    Each kill targets a slot (an iteration's step) drawn in order from the slots the run has
    not passed; it lands a random fraction of the step's typical duration into the step, or
    at the start of the next one when the step ends first. ``targets``: the slots to kill in,
    instead of drawn ones.
    """
    rng = np.random.default_rng(seed)
    journal, spec, run, log = (workdir / n for n in ("calls.txt", "spec.yaml", "run", "log.txt"))
    spec.write_text(yaml.safe_dump(campaign_spec(journal, iterations)))
    remaining = list(targets) if targets is not None else slots(iterations)
    tally = Tally()
    t0 = time.monotonic()
    while len(tally.kills) < kills and remaining:
        now = phase(run)
        remaining = [slot for slot in remaining if order(slot) >= order(now)]
        if targets is not None:
            target, remaining = (remaining[0], remaining[1:]) if remaining else (None, [])
        else:
            target, remaining = next_target(remaining, kills - len(tally.kills), rng)
        if target is None:
            break
        proc = _start(run, spec, not RunLayout(run).state.exists(), log)
        if not _wait_for(run, target, proc, limit=600):
            break  # the run finished before reaching the target
        _kill_within(run, target, proc, rng.uniform(0.0, typical_seconds(run, target[1])))
        landed = phase(run)
        tally.kills.append(landed)
        print(f"kill {len(tally.kills):2d}: {landed[1]} of iteration {landed[0]}", flush=True)
        _check_after_kill(run, tally)
    # to the end, without kills
    for _ in range(3):
        if phase(run)[1] == "finished":
            break
        _start(run, spec, not RunLayout(run).state.exists(), log).wait(timeout=3600)
    return figures(run, journal, tally, time.monotonic() - t0)


def figures(run: Path, journal: Path, tally: Tally, seconds: float) -> dict:
    """Compare the stored labels with the oracle's journal and the snapshots."""
    loop, experiment = db_keys(RunLayout(run).db), db_keys(RunLayout(run).remedies.labels_db)
    stored = set(loop) | set(experiment)
    duplicated = (len(loop) - len(set(loop))) + (len(experiment) - len(set(experiment)))
    lost = (tally.seen - stored) | (selected_keys(run) - set(loop))
    calls, direct = journal_calls(journal)
    errors = list(tally.state_errors)
    it, where = phase(run)
    if where != "finished":
        errors.append(f"the run did not finish: {where} of iteration {it}")
    for db in (RunLayout(run).db, RunLayout(run).remedies.labels_db):
        if not integrity_ok(db):
            errors.append(f"{db.name} failed its integrity check at the end")
    return {
        "kills": len(tally.kills),
        "kills_by_step": dict(Counter(step for _, step in tally.kills)),
        "lost": len(lost),
        "duplicated": duplicated,
        "wasted_oracle_calls": sum(calls.values()) - len(stored & set(calls)),
        "never_called_but_stored": len(stored - set(calls)),
        "labels": len(stored),
        "probe_oracle_evaluations": direct,
        "state_errors": errors,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    """Parse the flags, run the harness, print the figures (the summary line last)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chemgap-kills-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = kill_and_resume(workdir, args.kills, args.seed, args.iterations)
    print(json.dumps(result, indent=2))
    print(
        f"kills: {result['kills']}, lost: {result['lost']}, duplicated: {result['duplicated']}, "
        f"wasted oracle calls: {result['wasted_oracle_calls']}, "
        f"state errors: {len(result['state_errors'])}"
    )


if __name__ == "__main__":
    main()
