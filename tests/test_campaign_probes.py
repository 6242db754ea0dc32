"""Probes inside the campaign: run every N iterations or at the end, recorded per iteration and
at the run's root, failures shown as findings, probe-sourced structures labelled first, a probe
that raises never aborting the run, and convergence that waits for the probes.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_campaign import tiny_spec

from chemgap.agent.cli import main
from chemgap.agent.loop import Campaign, run_campaign
from chemgap.agent.probes import PROBES
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import SpecError, parse_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def probe_spec(**probes) -> dict:
    """The tiny Cu campaign with fast probes: eos, vacancy (2×2×2 of the 4-atom cell), dimer."""
    spec = tiny_spec()
    spec["probes"] = {
        "names": ["eos", "vacancy", "dimer"],
        "candidates_per_probe": 1,
        "eos": {"points": 5},
        "vacancy": {"sizes": [2], "relax": {"max_steps": 60}},
        **probes,
    }
    return spec


@pytest.mark.slow
def test_probes_every_iteration_are_recorded_and_label_their_structures(tmp_path, monkeypatch):
    """Probes every iteration (``every: 1``) with the vacancy probe made to raise: both iterations
    have ``probes/probes.json`` (the run's root the last), the history rows say which probes
    failed, the vacancy's error is recorded and the run still ends by its iteration cap; the
    probes' structures are in ``data.db`` with ``source=probe`` and their probe, at most half of
    each batch, and the selection says why it took them; none is a structure the oracle
    refuses (the dimer's repulsive wall is dropped before selection); the probe step's wall
    time is in the timings; ``status`` and ``inspect`` show the probes.

    Broken variants caught: probe candidates ignored by the selection (no ``source=probe``
    rows), a raising probe aborting the campaign, failures missing from the history or status,
    probe structures sent to the oracle however close their atoms (a failed label).
    """

    def broken(ctx):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(PROBES["vacancy"], "run", broken)
    store = RunStore.create(tmp_path / "run", parse_spec(probe_spec(every=1)))
    events: list[tuple[str, dict]] = []
    reason = run_campaign(store, report=lambda e, p: events.append((e, p)), num_cpus=1)
    assert reason == "iteration cap (2)"

    store = RunStore.open(store.root)
    history = store.state.history
    for it, row in zip((1, 2), history, strict=True):
        payload = json.loads((store.root / f"iterations/00{it}/probes/probes.json").read_text())
        assert [p["name"] for p in payload["probes"]] == ["eos", "vacancy", "dimer"]
        assert payload["meta"]["iteration"] == it and payload["meta"]["oracle_calls"] > 0
        vacancy = payload["probes"][1]
        assert vacancy["error"] == "RuntimeError: planted failure" and vacancy["passed"] is None
        assert row["probes_run"] == 3
        assert row["probes_failed"] == payload["failed"] and "vacancy" in row["probes_failed"]
        assert row["probes_passed"] is False
        assert store.state.timings[str(it)]["probe"] > 0
        selection = json.loads((store.root / f"iterations/00{it}/selection.json").read_text())
        n_probe = selection["reasons"].count("probe")
        assert 1 <= n_probe <= selection["batch"] // 2
        assert selection["probe_candidates"] >= n_probe
    root = json.loads((store.root / "probes.json").read_text())
    assert root["meta"]["iteration"] == 2

    probed = store.structures(source="probe")
    assert probed and {a.info["probe"] for a in probed} <= {"eos", "dimer"}
    assert all(a.info["status"] == "ok" for a in probed)
    assert all(a.info["probe_reason"] in ("error", "disagreement") for a in probed)
    assert {a.info["iteration"] for a in probed} == {1, 2}
    assert all(a.info["uncertainty"] > 0 for a in probed)
    assert ("step", {"iteration": 1, "step": "probe", "n": 3}) in events

    info = json.loads(CliRunner().invoke(main, ["status", "--json", str(store.root)]).output)
    assert info["probes"]["iteration"] == 2 and "vacancy" in info["probes"]["failed"]
    out = CliRunner().invoke(main, ["status", str(store.root)], terminal_width=80).output
    assert "of 3 failed (iteration 2)" in out and "vacancy" in out
    out = CliRunner().invoke(main, ["inspect", str(store.root)], terminal_width=80).output
    assert "physical-behaviour probes (iteration 2)" in out and "planted failure" in out


@pytest.mark.slow
def test_probes_at_the_end_only_judge_the_final_model(tmp_path):
    """``every: 0``: no probe runs during the loop (no probe-sourced labels); the last
    iteration's evaluate runs them on the final model, its row and the root file say so.
    """
    spec = probe_spec(every=0, names=["eos"])
    spec["budget"]["max_iterations"] = 1
    store = RunStore.create(tmp_path / "run", parse_spec(spec))
    assert run_campaign(store, num_cpus=1) == "iteration cap (1)"
    store = RunStore.open(store.root)
    (row,) = store.state.history
    assert row["probes_run"] == 1
    assert (store.root / "iterations/001/probes/probes.json").exists()
    assert json.loads((store.root / "probes.json").read_text())["meta"]["iteration"] == 1
    assert not store.structures(source="probe")
    assert store.state.timings["1"]["probe"] > 0


def test_convergence_on_probes_needs_probes_in_the_loop():
    """``budget.convergence.probes`` without probes that run during the loop is refused."""
    spec = tiny_spec()
    spec["budget"]["convergence"] = {"probes": True}
    with pytest.raises(SpecError, match=r"convergence\.probes needs probes"):
        parse_spec(spec)
    spec["probes"] = {"names": ["eos"], "every": 0}
    with pytest.raises(SpecError, match=r"probes.every ≥ 1 \(got 0\)"):
        parse_spec(spec)
    spec["probes"]["every"] = 2
    assert parse_spec(spec).budget.convergence.probes


def test_convergence_waits_for_the_last_probes_to_pass(tmp_path):
    """Converged errors and fractions stop the run only once the last probe run passed."""
    spec = tiny_spec()
    spec["budget"].update(max_iterations=10, convergence={"probes": True, "patience": 1})
    spec["probes"] = {"names": ["eos"], "every": 1}
    campaign = Campaign(RunStore.create(tmp_path / "run", parse_spec(spec)))
    row = {"accurate": 1.0, "force_mae": 0.1, "elapsed_s": 1.0}
    failing = [
        {**row, "iteration": 1, "probes_run": 1, "probes_passed": True},
        {**row, "iteration": 2, "probes_run": 1, "probes_passed": False},
    ]
    assert campaign.stop_reason(failing) is None
    passing = [*failing, {**row, "iteration": 3, "probes_run": 1, "probes_passed": True}]
    assert campaign.stop_reason(passing).endswith("and the last probes passed")
    # a row without a probe run keeps the last verdict
    assert campaign.stop_reason([*failing, {**row, "iteration": 3}]) is None


def test_a_probe_that_cannot_apply_is_refused_before_the_run(tmp_path):
    """``chemgap run`` of a molecules-only campaign asking for the EOS (it needs a crystal):
    exit 2, one sentence naming the probe and why, no run directory.
    """
    import yaml

    spec = tiny_spec()
    spec["probes"] = {"names": ["eos"]}
    spec["system"]["seeds"] = [{"kind": "molecule", "smiles": "CCO", "count": 8}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert (
        "probe 'eos' does not apply" in result.output
        and "needs a periodic crystal" in result.output
    )
    assert "Traceback" not in result.output and not out.exists()
