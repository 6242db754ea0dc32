"""Reliability: a campaign against an oracle that fails 20 % of the time, and one whose Ray
workers are killed mid-task, both end ``done`` with every failure categorised in data.db.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from test_campaign import rows, tiny_spec

from chemgap.agent.loop import run_campaign
from chemgap.agent.runtime import RayExecutor
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import parse_spec
from chemgap.oracle.results import FailureCategory
from chemgap.oracle.testing import FAULT_CATEGORY as CATEGORY
from chemgap.oracle.testing import FAULTS, FaultyCalculator

FAULTY = "chemgap.oracle.testing:FaultyCalculator"


def faulty_oracle(journal: Path, **kwargs) -> dict:
    return {
        "name": "ase",
        "params": {
            "calculator": FAULTY,
            "kwargs": {"journal": str(journal), "hang_s": 120, **kwargs},
        },
        "timeout_s": 4.0,
    }


def messages(db: Path) -> dict[str, str]:
    """Structure key -> stored failure message."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = """SELECT k.value, s.data FROM systems s
               JOIN text_key_values k ON k.id = s.id AND k.key = 'key'"""
        return {key: str(data) for key, data in con.execute(q)}
    finally:
        con.close()


@pytest.mark.slow
def test_campaign_with_20_percent_oracle_faults_completes_and_categorises_each(
    tmp_path, ray_session
):
    """20 % of structures meet one of the seven faults (exception, SCF, hang past the time
    limit, NaN, inf, the oracle process killed, the Ray worker killed). The campaign ends
    ``done``; every row of data.db carries exactly the category its fault maps to (recomputed
    from the structure's key, independently of the campaign); no structure is asked about
    twice; every failure has a message.

    Broken variants caught: a fault that aborts the campaign (a NaN raised, a dead worker not
    turned into a result); a hang that blocks past the time limit; a failure stored as ``ok``
    or under the wrong category; a failed structure selected and labelled again.
    """
    journal = tmp_path / "calls.txt"
    kwargs = {"rate": 0.2, "seed": 4}
    spec = parse_spec(tiny_spec(faulty_oracle(journal, **kwargs), max_iterations=2))
    store = RunStore.create(tmp_path / "run", spec)
    assert run_campaign(store, num_cpus=2, executor=RayExecutor()) == "iteration cap (2)"
    assert RunStore.open(tmp_path / "run").state.status == "done"

    found = rows(tmp_path / "run" / "data.db")
    keys = [key for _, key, _ in found]
    assert len(keys) == len(set(keys))  # nobody asked twice
    judge = FaultyCalculator(**kwargs)
    expected = {key: CATEGORY[judge.fault_for(key)] for key in keys}
    assert {key: status for _, key, status in found} == expected
    failed = Counter(status for status in expected.values() if status != "ok")
    assert sum(failed.values()) >= 3 and len(failed) >= 2, failed
    assert set(failed) <= {c.value for c in FailureCategory}
    text = messages(tmp_path / "run" / "data.db")
    assert all(text[key] not in ("", "{}") for key, s in expected.items() if s != "ok")
    # labels: every structure asked for, and the only calls beyond one per structure are the
    # labelling task's rerun after its worker was killed
    lines = journal.read_text().splitlines()
    started = Counter(line.split()[1] for line in lines if line.startswith("start"))
    assert set(started) == set(keys)
    assert all(n == 1 or judge.fault_for(k) == "worker" for k, n in started.items())


def _killer(kinds: tuple[str, ...], killed: dict[str, int], stop: threading.Event) -> None:
    """Kill (SIGKILL) the Ray worker running the first task of each kind, once per kind, as
    the OOM killer or a pre-empted machine would.
    """
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            for kind in kinds:
                if kind not in killed and title.startswith(f"ray::{kind}"):
                    time.sleep(0.5)  # mid-task, not at its start
                    try:
                        proc.kill()
                        killed[kind] = proc.info["pid"]
                    except psutil.NoSuchProcess:
                        pass
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_ray_workers_are_retried_and_the_campaign_completes(tmp_path, ray_session):
    """The worker of a labelling task, of a training member and of an exploration group is
    killed mid-task: Ray reruns each, and the campaign ends ``done`` with every label ``ok``.

    Broken variants caught: a task without retries (the campaign fails on WorkerCrashedError),
    a killed label recorded as a failure although its rerun succeeded.
    """
    journal = tmp_path / "calls.txt"
    oracle = faulty_oracle(journal, rate=0.0, delay_s=1.0)
    spec = parse_spec(tiny_spec(oracle, max_iterations=1))
    store = RunStore.create(tmp_path / "run", spec)
    killed: dict[str, int] = {}
    stop = threading.Event()
    kinds = ("label", "train member", "explore walkers")
    thread = threading.Thread(target=_killer, args=(kinds, killed, stop), daemon=True)
    thread.start()
    try:
        assert run_campaign(store, num_cpus=2, executor=RayExecutor()) == "iteration cap (1)"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert set(killed) == set(kinds), killed
    statuses = Counter(status for _, _, status in rows(tmp_path / "run" / "data.db"))
    # initial labels, test set, the isolated atom, and the batch its selection says it chose
    chosen = json.loads((tmp_path / "run" / "iterations" / "001" / "selection.json").read_text())
    assert 1 <= chosen["selected"] <= 4
    assert statuses == {"ok": 8 + 4 + 1 + chosen["selected"]}, statuses


def test_fault_names_cover_the_categories():
    assert set(CATEGORY) - {None} == set(FAULTS)
    assert set(CATEGORY.values()) - {"ok"} <= {c.value for c in FailureCategory}


def _harness():
    """benchmarks/reliability/kill_resume.py, the harness ``make reliability`` runs."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "reliability" / "kill_resume.py"
    spec = importlib.util.spec_from_file_location("kill_resume", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_three_kills_lose_nothing_and_ask_the_oracle_once(tmp_path):
    """The CLI campaign killed (-9, whole process group) while labelling its initial set, while
    labelling a batch and during its remediation experiment, resumed each time: it ends
    ``done`` with its experiment; no label lost or stored twice; the oracle's own journal shows
    no structure asked twice beyond the labels in flight at a kill; state.json, ``chemgap
    status`` and data.db were sound after every kill.

    Broken variants caught: a resume that relabels stored structures or restarts the
    experiment's labelling; a label written twice; a state file torn by the kill.
    """
    harness = _harness()
    targets = [(0, "initial"), (1, "label"), (1, "remedy")]
    out = harness.kill_and_resume(tmp_path, kills=3, seed=0, iterations=1, targets=targets)
    assert out["kills"] == 3, out
    assert out["state_errors"] == [], out
    assert out["lost"] == 0 and out["duplicated"] == 0, out
    assert out["never_called_but_stored"] == 0, out
    # only labels in flight when a kill landed (at most a batch of 4 each) are asked again
    assert 0 <= out["wasted_oracle_calls"] <= 4 * out["kills"], out
    assert out["labels"] >= 8 + 4 + 4 + 2 * 4, out  # initial, test, one batch, two arms
    assert {step for step in out["kills_by_step"]} >= {"initial", "label"}, out
