"""Remediation experiments on a real (tiny) run: equal budgets, one pool per repeat, paired
seeds, resuming without relabelling, refusals with exit 2, and the statistics against scipy.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from click.testing import CliRunner
from test_campaign import tiny_spec

from chemgap.agent.cli import main
from chemgap.agent.errors import RemedyRefused, RunDirError
from chemgap.agent.loop import run_campaign
from chemgap.agent.remedies import (
    BASELINE,
    Base,
    arms_of,
    prepare_experiment,
    probe_rows,
    run_experiment,
)
from chemgap.agent.remedies.pool import pick_random
from chemgap.agent.remedies.results import adjust, holm, mean_ci, min_p_value, paired
from chemgap.agent.runtime import RayExecutor
from chemgap.agent.store import RunStore, structure_key
from chemgap.campaigns.spec import RemediationConfig, parse_spec

BUDGET, REPEATS = 3, 2


def remedy_spec() -> dict:
    """The tiny campaign with four test structures per kind: the experiment splits them into
    a guidance and a scoring part with two of each kind on each side.
    """
    raw = tiny_spec(max_iterations=1)
    raw["test_set"]["per_kind"] = 4
    return raw


def _cfg(**changes) -> RemediationConfig:
    settings = dict(
        remedies=["uncertainty", "deeper"], budget=BUDGET, repeats=REPEATS, members=1,
        max_epochs=2, probes=["eos"],
    )  # fmt: skip
    return RemediationConfig(**(settings | changes))


def _label_rows(db) -> list[int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM systems ORDER BY id")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-iteration EMT Cu campaign (bulk in distribution, vacancies out)."""
    spec = parse_spec(remedy_spec())
    store = RunStore.create(tmp_path_factory.mktemp("remedy") / "run", spec)
    assert run_campaign(store) == "iteration cap (1)"
    return store.root


@pytest.fixture(scope="module")
def experiment(tiny_run, ray_session):
    """The experiment uncertainty + deeper (with their controls random and baseline), its
    cells as Ray tasks.
    """
    summary = run_experiment(tiny_run, _cfg(), executor=RayExecutor())
    return tiny_run / "remedies", summary


def test_controls_are_added_to_the_arms():
    names = [a.name for a in arms_of(_cfg())]
    assert names == [BASELINE, "random", "uncertainty", "deeper"]
    assert [a.name for a in arms_of(_cfg(remedies=["region"]))] == ["random", "region"]
    assert [a.name for a in arms_of(_cfg(remedies=["long_range"]))] == [BASELINE, "long_range"]
    # cell_size is compared at equal calls (random) and at equal oracle atoms (random_atoms)
    names = [a.name for a in arms_of(_cfg(remedies=["cell_size", "uncertainty"]))]
    assert names == ["random", "cell_size", "uncertainty", "random_atoms"]


def test_every_data_arm_spends_the_same_budget_from_the_same_pool(experiment):
    out, summary = experiment
    pools = []
    for r in range(REPEATS):
        folder = out / "plan" / f"r{r}"
        pool = {structure_key(a) for a in read(folder / "pool.extxyz", ":")}
        pools.append(pool)
        for arm in ("random", "uncertainty"):
            chosen = read(folder / f"{arm}.extxyz", ":")
            assert len(chosen) == BUDGET
            assert {structure_key(a) for a in chosen} <= pool  # drawn from the shared pool
        # uncertainty took the most uncertain frames of the pool
        unc = sorted(a.info["uncertainty"] for a in read(folder / "pool.extxyz", ":"))
        picked = [a.info["uncertainty"] for a in read(folder / "uncertainty.extxyz", ":")]
        assert min(picked) >= unc[-BUDGET - 3]
    assert pools[0] != pools[1]  # each repeat explores with its own seed
    rows = {row["arm"]: row for row in summary["arms"]}
    assert rows["random"]["metrics"]["oracle_calls"]["values"] == [BUDGET] * REPEATS
    assert rows["uncertainty"]["metrics"]["oracle_calls"]["values"] == [BUDGET] * REPEATS
    assert rows["deeper"]["metrics"]["oracle_calls"]["values"] == [0] * REPEATS
    # the data arms trained on the base data plus their budget
    base = Base.from_run(out.parent)
    assert rows["random"]["metrics"]["n_train"]["values"] == [len(base.train) + BUDGET] * REPEATS


def test_the_region_arm_never_trains_on_a_scored_structure(experiment, tmp_path):
    """Regions' exemplars are test structures: the region arm labels pool frames inside the
    regions and rattles of those frames, never a test structure or a rattle of one. Broken
    variant caught: the pick topped up with rattled exemplars (the test structures) when the
    pool ran short.
    """
    import shutil

    from chemgap.agent.diagnostics.region import Region
    from chemgap.agent.remedies.pool import pick_region
    from chemgap.agent.structio import write_extxyz

    out, _ = experiment
    run = Path(shutil.copytree(out.parent, tmp_path / "run"))
    base = Base.from_run(run)
    base.regions = [Region(
        id="RCu", rule="element = Cu", conditions=[
            {"feature": "element", "op": "=", "value": "Cu"}], method="slice",
        n_atoms=1, n_structures=1, coverage=0.1, mean_error=0.2, ci=(0.1, 0.3), baseline=0.1,
        ratio=2.0, ratio_ci=(1.5, 2.5), p_value=0.01,
    )]  # fmt: skip
    write_extxyz(base.layout.region_structures("RCu"), base.test)  # the exemplars: test cells
    pool = read(out / "plan" / "r0" / "pool.extxyz", ":")
    budget = len(pool) + 4  # more than the pool holds: the pick must top up
    chosen, info = pick_region(base, pool, budget, np.random.default_rng(0))
    assert len(chosen) == budget
    pool_keys = {structure_key(a) for a in pool}
    test_keys = {structure_key(a) for a in base.test}
    for atoms in chosen:
        key = structure_key(atoms)
        assert key not in test_keys and atoms.info.get("rattle_of") not in test_keys
        assert key in pool_keys or atoms.info.get("rattle_of") in pool_keys
    sources = info["sources"]
    assert sources["pool frames"] + sources["rattled pool frames"] == budget
    assert sources["rattled pool frames"] >= 4


def test_shortfall_is_refused_not_padded(experiment):
    out, _ = experiment
    pool = read(out / "plan" / "r0" / "pool.extxyz", ":")
    with pytest.raises(RemedyRefused, match="budget of"):
        pick_random(pool, len(pool) + 1, np.random.default_rng(0))


def test_repeats_share_the_base_and_pair_the_seeds(experiment):
    out, summary = experiment
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(cells) == 4 * REPEATS
    seeds = {(c["arm"], c["repeat"]): c["seed"] for c in cells}
    for r in range(REPEATS):
        assert len({s for (arm, rep), s in seeds.items() if rep == r}) == 1  # paired arms
    assert seeds[("baseline", 0)] != seeds[("baseline", 1)]
    settings = json.loads((out / "experiment.json").read_text())
    assert settings["iteration"] == 1 and settings["run"] == str(out.parent)
    deeper = json.loads((out / "cells" / "deeper-r0" / "models" / "ensemble.json").read_text())
    assert deeper["model"]["num_interactions"] == 3  # the base model has 2
    rows = {row["arm"]: row for row in summary["arms"]}
    for row in rows.values():
        for part in ("force_mae_id", "force_mae_ood"):
            assert 0 < row["metrics"][part]["mean"] < 5, (row["arm"], part)
    assert rows["uncertainty"]["control"] == "random"
    assert rows["deeper"]["control"] == BASELINE
    vs = rows["deeper"]["vs_control"]["force_mae_ood"]
    base_vals = rows[BASELINE]["metrics"]["force_mae_ood"]["values"]
    deep_vals = rows["deeper"]["metrics"]["force_mae_ood"]["values"]
    assert vs["diff"] == pytest.approx(np.mean(np.subtract(deep_vals, base_vals)))


def test_every_arm_is_scored_on_the_same_probe(experiment):
    """The arms differ only by their models: the oracle's EOS is the same for every cell, the
    error is |model − oracle| of each, and the summary's probe rows average them.
    """
    out, summary = experiment
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    by_label: dict[str, list[dict]] = {}
    for cell in cells:
        for metric in cell["probes"]:
            by_label.setdefault(metric["label"], []).append(metric)
    assert "eos: B0" in by_label and all(len(v) == len(cells) for v in by_label.values())
    for metrics in by_label.values():
        assert len({m["oracle"] for m in metrics}) == 1  # one oracle curve for every arm
        for m in metrics:
            want = abs(m["model"] - m["oracle"])
            assert m["error"] == pytest.approx(want / abs(m["oracle"]) if m["relative"] else want)
    rows = {row["arm"]: row for row in summary["arms"]}
    b0 = [m["error"] for m in by_label["eos: B0"] if m in by_label["eos: B0"]]
    deeper = rows["deeper"]["metrics"]["probe:eos: B0"]
    assert len(deeper["values"]) == REPEATS and np.isfinite(deeper["mean"])
    assert min(b0) <= deeper["mean"] <= max(b0)
    assert rows["deeper"]["vs_control"]["probe:eos: B0"]["n"] == REPEATS
    assert any(r[1] == "eos: B0" for r in probe_rows(summary))


def test_a_killed_experiment_resumes_without_relabelling(experiment, tiny_run):
    out, summary = experiment
    labels = _label_rows(out / "labels.db")
    assert 0 < len(labels) <= 2 * BUDGET * REPEATS  # a frame two arms chose is labelled once
    (out / "cells" / "uncertainty-r1.json").unlink()  # as if killed while training it
    (out / "results.json").unlink()
    again = run_experiment(tiny_run, _cfg())
    assert _label_rows(out / "labels.db") == labels  # no structure labelled again
    assert (out / "cells" / "uncertainty-r1.json").exists()
    assert [r["arm"] for r in again["arms"]] == [r["arm"] for r in summary["arms"]]
    with pytest.raises(RunDirError, match="other settings"):
        prepare_experiment(tiny_run, _cfg(budget=BUDGET + 1))


def test_inspect_remedies_fits_80_columns(experiment, tiny_run):
    result = CliRunner().invoke(main, ["inspect", str(tiny_run), "--remedies"])
    assert result.exit_code == 0, result.output
    assert "uncertainty" in result.output and "deeper" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--remedy", "probe"], "no probe structures"),
        (["--remedy", "transfer"], "element map"),
        (["--remedy", "region", "--iteration", "7"], "has not finished"),
        (["--remedy", "random", "--budget", "0"], "remediation.budget"),
        ([], "name at least one remedy"),
    ],
)
def test_a_missing_prerequisite_exits_2_with_one_sentence(tiny_run, tmp_path, args, words):
    out = tmp_path / "exp"
    result = CliRunner().invoke(main, ["remedy", str(tiny_run), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not out.exists()  # refused before anything is written


def test_inspect_without_an_experiment_exits_2(tmp_path):
    spec = parse_spec(tiny_spec())
    store = RunStore.create(tmp_path / "fresh", spec)
    result = CliRunner().invoke(main, ["inspect", str(store.root), "--remedies"])
    assert result.exit_code == 2 and "no remediation experiment" in result.output


def test_statistics_match_scipy(rng):
    from scipy import stats

    a, c = rng.normal(1.0, 0.2, 6), rng.normal(1.2, 0.2, 6)
    mean, half = mean_ci(a)
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    assert mean == pytest.approx(a.mean()) and half == pytest.approx((hi - lo) / 2)
    out = paired(a, c)
    exact = stats.permutation_test(
        (a, c), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
        alternative="two-sided", n_resamples=np.inf,
    )  # fmt: skip
    assert out["p"] == pytest.approx(exact.pvalue)
    assert out["diff"] == pytest.approx(np.mean(a - c))
    assert out["rel"] == pytest.approx(np.mean(a - c) / c.mean())
    assert np.isnan(mean_ci(np.array([1.0]))[1])


def test_identical_paired_differences_never_give_p_zero():
    """Broken variant: the paired t-test's p = 0.0 when every difference is the same."""
    arm, control = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])
    assert paired(arm, control)["p"] == pytest.approx(2 / 2**3) == min_p_value(3)
    assert paired(control, control)["p"] == 1.0
    assert min_p_value(5) > 0.05 > min_p_value(6)


def test_holm_adjusts_within_a_table():
    """Holm's step-down on a known family; NaN stays out of it."""
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[3])
    vs = {"p": 0.01, "n": 8, "diff": -1.0}
    other = {"p": 0.02, "n": 8, "diff": -1.0}
    table = {"a": {"vs_control": {"force_mae_id": vs, "region:R1": other}},
             "b": {"vs_control": {"force_mae_id": dict(vs), "region:R1": dict(other)}}}  # fmt: skip
    families = adjust(table)
    assert families["test"]["m"] == 2 and vs["p_adj"] == pytest.approx(0.02)
    assert table["b"]["vs_control"]["region:R1"]["p_adj"] == pytest.approx(0.04)
    assert families["test"]["min_p_adj"] == pytest.approx(2 * 2 / 2**8)


def test_the_specs_remediation_section_runs_after_the_loop(tmp_path):
    raw = remedy_spec()
    raw["remediation"] = {"remedies": ["deeper"], "repeats": 1, "members": 1, "max_epochs": 2}
    store = RunStore.create(tmp_path / "run", parse_spec(raw))
    events: list[str] = []
    run_campaign(store, report=lambda e, p: events.append(p.get("event", e)))
    results = json.loads((store.root / "remedies" / "results.json").read_text())
    assert [row["arm"] for row in results["arms"]] == [BASELINE, "deeper"]
    assert events.count("start") == 1 and events[-1] == "done"


def test_a_test_set_too_small_to_split_is_refused_before_the_campaign():
    """Two test structures per kind cannot give two of each kind to both the guidance and the
    scoring part. Broken variant caught: the campaign runs for hours and only then is the
    experiment refused (or the split quietly leaves a kind out of one part).
    """
    from chemgap.agent.remedies.arms import check_spec

    raw = tiny_spec() | {"remediation": {"remedies": ["deeper"]}}
    with pytest.raises(RemedyRefused, match=r"remediation\.min_per_part: .*per_kind is 2"):
        check_spec(parse_spec(raw))
    check_spec(parse_spec(raw | {"remediation": {"remedies": ["deeper"], "min_per_part": 1}}))


def test_a_remediation_that_can_never_run_is_refused_before_the_campaign(tmp_path):
    spec = tmp_path / "spec.yaml"
    raw = tiny_spec() | {"remediation": {"remedies": ["transfer"]}}
    spec.write_text(json.dumps(raw))  # JSON is YAML
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(spec), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "remediation.remedies: transfer" in result.output and not out.exists()


def test_a_probe_that_cannot_score_the_arms_is_refused():
    import yaml

    from chemgap.agent.remedies.arms import check_spec
    from chemgap.campaigns.builtin import builtin_path

    raw = yaml.safe_load(builtin_path("organics-xtb").read_text())
    spec = parse_spec(raw | {"remediation": {"remedies": ["random"], "probes": ["eos"]}})
    with pytest.raises(RemedyRefused, match=r"remediation\.probes: .*eos.*crystal"):
        check_spec(spec)
