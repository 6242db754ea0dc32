"""No leakage between what guides a remediation experiment and what scores it, and cell_size
compared at equal oracle cost.

The run's test set is split once per experiment (stratified by test kind, seeded) into a
guidance part, on which the base ensemble is diagnosed to find the regions that steer the
region arm, and a scoring part, on which every arm is scored, inside each region by its rule.
A tiny EMT Cu run (four test structures per kind: bulk and vacancy) and an experiment with
the region and cell_size arms (one member, one epoch, two repeats) check it end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read
from click.testing import CliRunner
from test_remedies import remedy_spec

from chemgap.agent.cli import main
from chemgap.agent.errors import RemedyRefused
from chemgap.agent.loop import run_campaign
from chemgap.agent.remedies import Base, cost_rows, region_rows, run_experiment, split_test_set
from chemgap.agent.remedies.pool import exact_atoms
from chemgap.agent.store import RunStore, structure_key
from chemgap.campaigns.spec import RemediationConfig, parse_spec

REPEATS, BUDGET = 2, 2
COPPER_RULE = {"feature": "element", "op": "=", "value": "Cu"}  # every atom
VACANCY_RULE = {"feature": "n_atoms", "op": ">", "value": 5}  # the 7-atom vacancy cells
ABSENT_RULE = {"feature": "element", "op": "=", "value": "Ag"}  # no Ag anywhere


def _region(rid: str, rule: str, condition: dict):
    from chemgap.agent.diagnostics.region import Region

    return Region(
        id=rid, rule=rule, conditions=[condition], method="slice", n_atoms=1, n_structures=1,
        coverage=0.1, mean_error=0.2, ci=(0.1, 0.3), baseline=0.1, ratio=2.0,
        ratio_ci=(1.5, 2.5), p_value=0.01,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-iteration EMT Cu campaign with four test structures per kind."""
    store = RunStore.create(tmp_path_factory.mktemp("leak") / "run", parse_spec(remedy_spec()))
    assert run_campaign(store) == "iteration cap (1)"
    return store.root


@pytest.fixture(scope="module")
def experiment(run):
    """The region and cell_size arms (with random and random_atoms), in this process.

    Four structures rarely give a significant region, so the guidance diagnosis is the real
    one plus three planted regions (every Cu atom, which the pool's frames can target; the
    vacancy cells; an element absent from the run); every call of the diagnosis records the
    structures it was given.
    """
    import chemgap.agent.diagnostics.diagnose as D

    real, calls = D.diagnose, []

    def recording(structures, *args, **kwargs):
        calls.append([a.info.get("db_id") for a in structures])
        result = real(structures, *args, **kwargs)
        result.regions = [
            *result.regions,
            _region("Rcopper", "element = Cu", COPPER_RULE),
            _region("Rvacancy", "structures with more than 5 atoms", VACANCY_RULE),
            _region("Rsilver", "element = Ag", ABSENT_RULE),
        ]
        return result

    cfg = RemediationConfig(
        remedies=["region", "cell_size"], budget=BUDGET, repeats=REPEATS, members=1,
        max_epochs=1,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "diagnose", recording)
        summary = run_experiment(run, cfg)
    out = run / "remedies"
    return out, summary, calls


def _kinds(n: dict[str, int]) -> list[Atoms]:
    out = []
    for kind, count in n.items():
        for k in range(count):
            atoms = Atoms("Cu", positions=[[0.0, 0.0, 0.1 * k]])
            atoms.info.update(test_kind=kind, db_id=len(out) + 100)
            out.append(atoms)
    return out


def test_the_split_is_disjoint_stratified_and_seeded():
    """Every structure is in exactly one part; each kind has at least ``min_per_part`` on
    each side, about ``fraction`` of it guiding (an odd one scores); the same seed gives the
    same split. Broken variants caught: an unstratified split (a kind all on one side),
    overlapping parts, an unseeded split, a kind too small to split taken anyway.
    """
    test = _kinds({"bulk": 5, "vacancy": 4, "surface": 8})
    split = split_test_set(test, fraction=0.5, min_per_part=2, seed=[1, 7003])
    guide, score = set(split.guidance), set(split.scoring)
    assert not guide & score and guide | score == set(range(len(test)))
    assert split.per_kind("guidance") == {"bulk": 2, "surface": 4, "vacancy": 2}
    assert split.per_kind("scoring") == {"bulk": 3, "surface": 4, "vacancy": 2}
    record = split.to_dict()
    assert record["guidance"]["db_ids"] == [test[i].info["db_id"] for i in split.guidance]
    assert record["seed"] == [1, 7003] and record["stratified_by"] == "test_kind"
    again = split_test_set(test, fraction=0.5, min_per_part=2, seed=[1, 7003])
    assert again.guidance == split.guidance
    others = [
        split_test_set(test, fraction=0.5, min_per_part=2, seed=[s, 7003]).guidance
        for s in range(2, 6)
    ]
    assert any(g != split.guidance for g in others)  # the seed decides
    # a small fraction still leaves min_per_part of each kind to guidance
    few = split_test_set(test, fraction=0.1, min_per_part=2, seed=[1])
    assert min(few.per_kind("guidance").values()) == 2
    with pytest.raises(RemedyRefused, match="vacancy has 3"):
        split_test_set(_kinds({"bulk": 4, "vacancy": 3}), fraction=0.5, min_per_part=2, seed=[1])


def test_the_guidance_diagnosis_sees_only_the_guidance_part(experiment, run):
    """The regions that steer the region arm come from one diagnosis of the base ensemble on
    the guidance part, recorded with the split. Broken variants caught: the loop's diagnosis
    of the whole test set (its regions.json) used as the guidance, or a diagnosis of every
    test structure.
    """
    out, summary, calls = experiment
    split = json.loads((out / "split.json").read_text())
    guidance, scoring = split["guidance"]["db_ids"], split["scoring"]["db_ids"]
    assert calls and all(sorted(c) == sorted(guidance) for c in calls)
    assert not set(guidance) & set(scoring)
    test_ids = {a.info["db_id"] for a in Base.from_run(run).test}
    assert set(guidance) | set(scoring) == test_ids
    assert split["guidance"]["per_kind"] == {"bulk": 2, "vacancy": 2}
    assert split["scoring"]["per_kind"] == {"bulk": 2, "vacancy": 2}
    assert split["regions_found"][-3:] == ["Rcopper", "Rvacancy", "Rsilver"]
    payload = json.loads((out / "guidance" / "regions.json").read_text())
    assert payload["source"].startswith("guidance part") and payload["baseline"][
        "n_structures"
    ] == len(guidance)
    recorded = json.loads((out / "experiment.json").read_text())["test_split"]
    assert recorded["scoring_db_ids"] == scoring and recorded["guidance_db_ids"] == guidance
    assert summary["test_split"]["scoring"]["db_ids"] == scoring


def test_every_arm_is_scored_on_the_scoring_part_only(experiment, run):
    """Broken variant caught: the cells scored on the whole test set (the structures whose
    diagnosis guided the region arm among them).
    """
    out, _, _ = experiment
    scoring_ids = json.loads((out / "split.json").read_text())["scoring"]["db_ids"]
    scoring = [a for a in Base.from_run(run).test if a.info["db_id"] in scoring_ids]
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(cells) == 4 * REPEATS
    for cell in cells:
        assert cell["n_test"] == len(scoring)
        assert len(cell["atom_error"]) == sum(len(a) for a in scoring)


def test_the_region_arm_never_trains_on_a_scored_structure(experiment, run):
    """Every structure the region arm labels is a pool frame or a rattle of one (positions,
    ``rattle_of`` and db ids checked against the scoring part and the whole test set), and
    the arm was steered by the guidance regions. Broken variants caught: test structures (the
    regions' exemplars) or rattles of them labelled, the loop's regions steering the arm.
    """
    out, _, _ = experiment
    test = Base.from_run(run).test
    test_keys = {structure_key(a) for a in test}
    test_ids = {a.info["db_id"] for a in test}
    for r in range(REPEATS):
        pool = read(out / "plan" / f"r{r}" / "pool.extxyz", ":")
        by_key = {structure_key(a): a for a in pool}
        chosen = read(out / "plan" / f"r{r}" / "region.extxyz", ":")
        assert len(chosen) == BUDGET
        for atoms in chosen:
            key, source = structure_key(atoms), atoms.info.get("rattle_of")
            assert key not in test_keys and source not in test_keys
            assert atoms.info.get("db_id") not in test_ids
            for t in test:  # not a test structure, nor one displaced a little
                if len(t) == len(atoms) and (t.numbers == atoms.numbers).all():
                    assert np.abs(t.positions - atoms.positions).max() > 1e-3
            origin = by_key.get(key) or by_key.get(source)
            assert origin is not None  # a pool frame or a rattle of one
            assert np.abs(origin.positions - atoms.positions).max() < 1.0
        notes = json.loads((out / "plan" / f"r{r}" / "region.json").read_text())
        assert sum(notes["per_region"].values()) == len(chosen) - notes["sources"].get(
            "rattled pool frames", 0
        )  # every pool frame it took was steered by a guidance region
        assert notes["per_region"].get("Rcopper", 0) > 0


def test_regions_are_scored_on_the_scoring_part_by_their_rule(experiment, run):
    """A guidance region's error in each cell is the mean error of the scoring atoms its rule
    selects (here: the atoms of the scoring vacancy cells); a region with no atom there is
    listed as not scorable. Broken variants caught: masks over the whole test set (or from a
    diagnosis of the scored structures), an unscorable region silently dropped.
    """
    out, summary, _ = experiment
    scoring_ids = json.loads((out / "split.json").read_text())["scoring"]["db_ids"]
    scoring = [a for a in Base.from_run(run).test if a.info["db_id"] in scoring_ids]
    inside = np.concatenate([np.full(len(a), len(a) > 5) for a in scoring])
    assert 0 < inside.sum() < len(inside)
    regions = {r["id"]: r for r in summary["regions"]}
    assert regions["Rvacancy"]["scorable"] and not regions["Rsilver"]["scorable"]
    assert "no atom of the scoring part" in regions["Rsilver"]["why"]
    rows = {row["arm"]: row for row in summary["arms"]}
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        want = np.asarray(cell["atom_error"])[inside].mean()
        got = rows[cell["arm"]]["metrics"]["region:Rvacancy"]["values"][cell["repeat"]]
        assert got == pytest.approx(want)
    assert ("element = Ag", "not scorable", "–", "–") in region_rows(summary)


def test_cell_size_is_also_compared_at_equal_oracle_atoms(experiment):
    """The random_atoms control labels random pool frames holding exactly the atoms of the
    same repeat's cell_size supercells (more, smaller calls), and the summary compares
    cell_size with it. Broken variant caught: cell_size compared only at equal calls, its
    control given a fraction of its oracle cost.
    """
    out, summary, _ = experiment
    for r in range(REPEATS):
        big = read(out / "plan" / f"r{r}" / "cell_size.extxyz", ":")
        control = read(out / "plan" / f"r{r}" / "random_atoms.extxyz", ":")
        assert len(big) == BUDGET and len(control) > BUDGET
        assert sum(len(a) for a in control) == sum(len(a) for a in big)
        notes = json.loads((out / "plan" / f"r{r}" / "random_atoms.json").read_text())
        assert notes["short_atoms"] == 0
    rows = {row["arm"]: row for row in summary["arms"]}
    atoms = rows["cell_size"]["metrics"]["oracle_atoms"]["values"]
    assert rows["random_atoms"]["metrics"]["oracle_atoms"]["values"] == atoms
    assert rows["random"]["metrics"]["oracle_atoms"]["values"] < atoms  # equal calls only
    assert rows["cell_size"]["control"] == "random"
    assert rows["cell_size"]["cost_control"] == "random_atoms"
    assert rows["cell_size"]["vs_equal_atoms"]["force_mae_ood"]["n"] == REPEATS
    assert "p_adj" in rows["cell_size"]["vs_equal_atoms"]["force_mae_ood"]  # Holm family
    (line,) = cost_rows(summary)
    assert line.startswith("cell_size") and "random_atoms" in line


def test_exact_atoms_takes_the_earliest_frames_that_make_the_total():
    """Broken variant caught: a greedy fill that stops short of the target."""
    sizes = [7, 4, 4, 7, 4]
    chosen = exact_atoms(sizes, 15)
    assert sum(sizes[i] for i in chosen) == 15 and chosen == [0, 1, 2]
    assert sum(sizes[i] for i in exact_atoms(sizes, 18)) == 18  # 7 + 7 + 4
    assert exact_atoms([4, 4], 7) == [0]  # unreachable: the largest sum below it


def test_inspect_says_which_structures_scored_and_which_guided(experiment, run):
    """Broken variant caught: a table that does not say its regions came from other
    structures than those that scored the arms, or drops an unscorable region.
    """
    result = CliRunner().invoke(main, ["inspect", str(run), "--remedies"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Scored on the scoring part" in text and "guidance part" in text
    assert "not scorable" in text and "at equal oracle atoms" in text
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_the_report_says_which_structures_scored_and_which_guided(experiment, run):
    """Broken variant caught: the report's remediation caption silent on the split."""
    from chemgap.agent.report import write_report

    path = write_report(run, run / "leak-report.html")["report"]
    html = path.read_text()
    assert "Scored on the scoring part of the run&#39;s test set" in html or (
        "Scored on the scoring part of the run's test set" in html
    )
    assert "Regions found on the guidance part" in html and "at equal oracle atoms" in html
