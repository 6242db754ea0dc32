"""``chemgap diagnose RUN`` on the run's test set, the run lock, ``--update``; ``chemgap inspect``
explaining an empty result; every table within 80 columns. No model training: the ensemble is a
stand-in with planted errors.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner
from test_diagnose import NoisyModel, cu_bulk, cu_test_set, emt_labelled
from test_diagnose_tracking import PlantedModel

from chemgap.agent.cli.diagnose import diagnose as diagnose_cmd
from chemgap.agent.cli.diagnose import inspect as inspect_cmd
from chemgap.agent.diagnostics.diagnose import diagnose, write_regions
from chemgap.agent.diagnostics.features import compute_features
from chemgap.agent.report.summary import run_status
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import DiagnosticsConfig, parse_spec

NARROW = {"COLUMNS": "80"}


def _fits(output: str, width: int = 80) -> None:
    long = [line for line in output.splitlines() if len(line) > width]
    assert not long, "\n".join(long)
    assert "…" not in output  # nothing cut short to make it fit


@pytest.fixture
def stand_in(monkeypatch):
    """Every ensemble loads as the stand-in (planted error on the larger defect/slab cells)."""
    from chemgap.models.ensemble import Ensemble

    monkeypatch.setattr(Ensemble, "load", staticmethod(lambda *a, **k: NoisyModel()))


def _run(tmp_path, *, test_rows: bool = True):
    """A run with 8 training rows (bulk) and, unless told otherwise, the 20-row test set."""
    spec = parse_spec(
        {
            "name": "cu-diag",
            "system": {"seeds": [{"kind": "bulk", "formula": "Cu", "crystal": "fcc", "count": 4}]},
            "oracle": {"name": "emt"},
            "diagnostics": {"bootstrap": 100, "n_clusters": 4, "environment_classes": 4},
        }
    )
    run = tmp_path / "run"
    store = RunStore.create(run, spec)
    for i in range(8):
        store.add(emt_labelled(cu_bulk(i)), iteration=0, source="seed", split="train", walker=i)
    if test_rows:
        for i, atoms in enumerate(cu_test_set()):
            kind = atoms.info["seed_kind"]
            store.add(
                atoms,
                iteration=0,
                source="seed",
                split="test",
                seed_kind=kind,
                in_distribution=kind == "bulk",
                walker=i,
            )
    models = store.iteration_dir(1) / "models"
    models.mkdir()
    (models / "ensemble.json").write_text("{}")
    return run


def test_diagnose_run_uses_the_test_set_and_its_own_folder(tmp_path, stand_in):
    """The 20 test rows are diagnosed (not the 8 training rows), into RUN/diagnosis; the loop's
    files are left alone unless --update; output within 80 columns.

    Catches diagnosing every ok label (28 structures, training data included) and writing
    over the run's regions.json by default.
    """
    run = _run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(diagnose_cmd, [str(run)], env=NARROW)
    assert res.exit_code == 0, res.output
    _fits(res.output)
    own = run / "diagnosis" / "regions.json"
    payload = json.loads(own.read_text())
    assert payload["baseline"]["n_structures"] == 20 and payload["diagnosed"]["n_structures"] == 20
    assert "test set of" in payload["source"] and "test set of" in res.output
    assert payload["regions"] and payload["iteration"] == 1
    assert not (run / "regions.json").exists() and run_status(run)["regions"] == 0
    # the test set's in_distribution flag (through data.db) is a feature regions can name
    rows = RunStore.open(run).structures(split="test", status="ok")
    feats = compute_features(rows, families=["structure"], soap=False)
    ood = feats.structure["out_of_distribution"]
    assert list(ood) == [a.info["seed_kind"] != "bulk" for a in rows] and ood.any()

    update = runner.invoke(diagnose_cmd, [str(run), "--update"], env=NARROW)
    assert update.exit_code == 0, update.output
    assert (run / "iterations" / "001" / "regions.json").exists()
    assert run_status(run)["regions"] == len(payload["regions"])
    both = runner.invoke(diagnose_cmd, [str(run), "--update", "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "--update" in both.output


def test_diagnose_refuses_a_running_run_and_one_without_a_test_set(tmp_path, stand_in):
    """A run being driven (its lock held) and an older run with no test set: exit 2, one
    sentence each, nothing written.

    Catches diagnosing without taking the run lock, and silently falling back to training data.
    """
    run = _run(tmp_path)
    runner = CliRunner()
    store = RunStore.open(run)
    with store.lock():
        res = runner.invoke(diagnose_cmd, [str(run)], env=NARROW)
    assert res.exit_code == 2, res.output
    assert f"is running (pid {store.state.pid}); diagnose it when it stops" in res.output
    assert not (run / "diagnosis").exists()

    old = _run(tmp_path / "old", test_rows=False)
    res = runner.invoke(diagnose_cmd, [str(old)], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert "has no test set" in res.output and "--models" in res.output
    assert not (old / "diagnosis").exists()


def test_tables_fit_80_columns(tmp_path):
    """``inspect`` (regions table, splits table, one region in detail) within 80 columns, with
    ids, ratios and split names whole.

    Catches the old 9- and 9-column tables (rule, ids or CIs cut, lines past 80).
    """
    res = diagnose(cu_test_set(), NoisyModel(), DiagnosticsConfig(bootstrap=100), iteration=1)
    write_regions(res, tmp_path)
    runner = CliRunner()
    out = runner.invoke(inspect_cmd, [str(tmp_path)], env=NARROW)
    assert out.exit_code == 0, out.output
    _fits(out.output)
    for r in res.regions:
        assert r.id in out.output
    assert all(s.name in out.output for s in res.splits)
    one = runner.invoke(inspect_cmd, [str(tmp_path), "--region", res.regions[0].id], env=NARROW)
    assert one.exit_code == 0, one.output
    _fits(one.output)


def test_inspect_explains_an_empty_result(tmp_path):
    """No region: how much was tested, whether significance was reachable, what was seen; and
    with 3 structures, that no rule could have reached q ≤ alpha and how many it would take.

    Catches an empty table with no explanation, and an explanation whose numbers are not the
    stored ones.
    """
    test = cu_test_set()
    calm = PlantedModel(np.full(sum(len(a) for a in test), 0.05), 4)
    cfg = DiagnosticsConfig(bootstrap=100, environment_classes=4, n_clusters=4)
    res = diagnose(test, calm, cfg, iteration=1)
    assert res.regions == []
    write_regions(res, tmp_path / "calm")
    out = CliRunner().invoke(inspect_cmd, [str(tmp_path / "calm")], env=NARROW)
    assert out.exit_code == 0, out.output
    _fits(out.output)
    d = json.loads((tmp_path / "calm" / "regions.json").read_text())["diagnosed"]
    text = " ".join(out.output.split())
    assert f"{d['n_structures']} structures ({d['n_atoms']} atoms) tested" in text
    assert f"{d['n_rules_tested']} rules tried" in text
    assert d["min_q_lone"] <= cfg.alpha and "Significance was within reach" in text
    assert f"gets q ≤ {d['min_q_lone']:.2g} if its structures all rank above the rest" in text
    assert f"smallest reportable error ratio is the threshold itself: {cfg.min_ratio:g}" in text
    top = d["max_ratio_seen"]
    assert f"Largest ratio seen: {top['ratio']:.2f}× for '{top['rule']}'" in text

    tiny = test[:3]
    res = diagnose(tiny, calm_for(tiny), cfg, iteration=1)
    write_regions(res, tmp_path / "tiny")
    out = CliRunner().invoke(inspect_cmd, [str(tmp_path / "tiny")], env=NARROW)
    _fits(out.output)
    text = " ".join(out.output.split())
    d = res.diagnosed
    assert d["min_q_achievable"] > cfg.alpha
    assert "No rule could have reached q ≤ 0.05 at this size" in text
    assert f"p = {d['min_q_achievable']:.2g}" in text
    assert f"at least {d['structures_needed']} structures" in text or "more evenly" in text


def calm_for(structures):
    return PlantedModel(np.full(sum(len(a) for a in structures), 0.05), 5)


def test_diagnose_file_mode_prints_within_80_columns(tmp_path, stand_in):
    """``diagnose --models --data``: the whole report, tables included, within 80 columns."""
    data = tmp_path / "test.extxyz"
    ase.io.write(data, cu_test_set(), format="extxyz")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ensemble.json").write_text("{}")
    res = CliRunner().invoke(
        diagnose_cmd,
        ["--models", str(tmp_path / "model"), "--data", str(data), "-o", str(tmp_path / "d"),
         "--set", "bootstrap=100"],
        env=NARROW,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    _fits(res.output)
    assert "failure regions" in res.output and "maxsep" in res.output
