"""The Ray runtime: start a local instance, connect to a running one, shut down, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from chemgap.agent.cli.common import handles_errors
from chemgap.agent.errors import BadInput


def run_python(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (Ray may already be up in this one); its last stdout
    line is JSON.
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_start_local_with_dashboard_and_shut_down():
    out = run_python("""
        import json, time, ray
        from chemgap.agent.errors import BadInput
        from chemgap.agent.runtime import ray_runtime
        t = time.time()
        try:
            with ray_runtime("127.0.0.1:1"):
                pass
        except BadInput as exc:
            bad = str(exc)
        bad_s = time.time() - t
        with ray_runtime(num_cpus=2) as info:
            inside = ray.is_initialized()
            square = ray.get(ray.remote(lambda x: x * x).options(name="square 1/1").remote(7))
        after = ray.is_initialized()
        try:
            with ray_runtime(num_cpus=1, dashboard=False):
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted_after = ray.is_initialized()
        print(json.dumps(dict(bad=bad, bad_s=bad_s, url=info.dashboard_url, cpus=info.num_cpus,
                              gpus=info.num_gpus, started=info.started, inside=inside,
                              square=square, after=after, interrupted_after=interrupted_after)))
    """)
    assert "no Ray cluster answers at '127.0.0.1:1'" in out["bad"]
    assert out["bad_s"] < 10  # fails fast instead of ray.init's minutes of retries
    assert out["url"].startswith("http://127.0.0.1:")
    assert out["cpus"] == 2 and out["gpus"] == 0 and out["started"]
    assert out["inside"] and out["square"] == 49
    assert not out["after"] and not out["interrupted_after"]


def test_connect_to_a_running_cluster_leaves_it_running(ray_session):
    ray = ray_session
    address = ray.get_runtime_context().gcs_address
    out = run_python(f"""
        import json, ray
        from chemgap.agent.runtime import ray_runtime
        with ray_runtime({address!r}) as info:
            value = ray.get(ray.remote(lambda: 41 + 1).remote())
        print(json.dumps(dict(started=info.started, cpus=info.num_cpus, value=value,
                              address=info.address)))
    """)
    assert out == {"started": False, "cpus": 2, "value": 42, "address": address}
    # the cluster we connected to is still up for everyone else
    assert ray.get(ray.remote(lambda: "alive").remote()) == "alive"


def test_existing_instance_is_reused(ray_session):
    from chemgap.agent.runtime import ray_runtime

    with ray_runtime() as info:
        assert not info.started and info.num_cpus == 2
    assert ray_session.is_initialized()


@pytest.mark.parametrize("address", ["localhost", "host:port", ":6379"])
def test_malformed_address(address):
    from chemgap.agent.runtime import probe_address

    with pytest.raises(BadInput, match="HOST:PORT"):
        probe_address(address)


def test_exit_codes():
    @click.command()
    @click.argument("what")
    @handles_errors
    def cmd(what: str) -> None:
        match what:
            case "bad":
                raise BadInput("exploration.steps: must be > 0 (got -1)")
            case "interrupt":
                raise KeyboardInterrupt
            case "crash":
                raise RuntimeError("the oracle's node died")

    runner = CliRunner()
    assert runner.invoke(cmd, ["ok"]).exit_code == 0
    bad = runner.invoke(cmd, ["bad"])
    assert bad.exit_code == 2 and "exploration.steps" in bad.output
    assert runner.invoke(cmd, ["interrupt"]).exit_code == 130
    crash = runner.invoke(cmd, ["crash"])
    assert crash.exit_code == 1 and "node died" in crash.output and "Traceback" not in crash.output
