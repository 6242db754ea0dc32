"""A real two-node Ray cluster on this machine, started as a user starts one on two machines
(``ray start --head``, then ``ray start --address`` with its own raylet and resources):
``chemgap run --address`` spreads labelling and training over both nodes, and losing the
second node mid-run still ends ``done``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from test_campaign import tiny_spec

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    # the token the head node writes (~/.ray/auth_token) is what a second machine would copy
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _stop(marker: str) -> None:
    """SIGKILL every process of the cluster (their command lines name its temp folder)."""
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@pytest.fixture
def two_nodes():
    """(address, the second node's node-manager port): a head node with 1 CPU and a second
    node with 1 CPU and a resource of its own, each with its own raylet.
    """
    temp = tempfile.mkdtemp(prefix="cg2n-", dir="/tmp")  # short: Ray's socket paths are
    port, second = free_port(), free_port()
    start = [str(BIN / "ray"), "start", "--num-cpus=1", "--disable-usage-stats"]
    try:
        head = [f"--port={port}", f"--temp-dir={temp}", "--head", "--include-dashboard=false"]
        subprocess.run(start + head, env=ray_env(), check=True, capture_output=True, timeout=180)
        worker = [
            f"--address=127.0.0.1:{port}",
            f"--node-manager-port={second}",
            '--resources={"second_node": 1}',
        ]
        subprocess.run(start + worker, env=ray_env(), check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", second
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _finished_iteration(state: Path) -> int:
    """The last iteration whose evaluate step is done (0 before the first)."""
    try:
        data = json.loads(state.read_text())
    except json.JSONDecodeError:
        return 0
    return data["iteration"] if data["step"] == "evaluate" else data["iteration"] - 1


def _kill_node(node_manager_port: int) -> int:
    """SIGKILL the second node's raylet and everything it started; returns how many died."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "raylet" in cmd and f"--node_manager_port={node_manager_port}" in cmd:
            victims += [proc, *proc.children(recursive=True)]
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(victims)


@pytest.mark.slow
def test_a_campaign_spreads_over_two_nodes_and_survives_losing_one(tmp_path, two_nodes):
    """Iteration 1's labels and training members run on both nodes (node ids recorded by the
    tasks themselves in RUN/cluster.json); the second node is then killed (its raylet and
    workers, SIGKILL); the run still ends ``done``, iteration 2 on the head node alone, and the
    lost node is recorded as such.

    Broken variants caught: every task on one node (no scale-out); a run that fails when a
    node holding a task or the progress channel disappears.
    """
    address, second_port = two_nodes
    journal = tmp_path / "calls.txt"
    oracle = {
        "name": "ase",
        "params": {
            "calculator": "chemgap.oracle.testing:FaultyCalculator",
            "kwargs": {"rate": 0.0, "journal": str(journal), "delay_s": 0.5},
        },
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(oracle, max_iterations=2)))
    run = tmp_path / "run"
    cluster = run / "cluster.json"
    cmd = [str(BIN / "chemgap"), "run", str(spec), "--out", str(run), "--address", address]
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(
        [*cmd, "--trust-code"], stdout=log, stderr=subprocess.STDOUT, env=ray_env()
    )
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            state = run / "state.json"
            if state.exists() and _finished_iteration(state) >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
        assert _kill_node(second_port) >= 1
        assert proc.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and state["iteration"] == 2
    record = json.loads(cluster.read_text())
    assert len(record["nodes"]) == 2
    first = record["tasks"]["1"]
    assert len(first) == 2, first  # iteration 1 used both nodes ...
    for kind in ("label", "train member"):
        assert all(kinds.get(kind) for kinds in first.values()), (kind, first)  # ... for both
    assert sum(not n["alive"] for n in record["nodes"].values()) == 1  # the node lost
    alive = next(k for k, n in record["nodes"].items() if n["alive"])
    assert set(record["tasks"]["2"]) == {alive}  # iteration 2 ran on what was left
