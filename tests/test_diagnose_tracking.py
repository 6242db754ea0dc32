"""Region ids and histories across iterations on a fixed test set (no model training).

A campaign diagnoses the same test set every iteration; the environment classes (KMeans on
SOAP) must keep their names so an environment region keeps its id, and first seen, last seen,
history and ``resolved`` must follow the regions from one diagnosis to the next.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from test_diagnose import cu_test_set

from chemgap.agent.diagnostics import diagnose as diagnose_mod
from chemgap.agent.diagnostics.diagnose import diagnose, load_previous, write_regions
from chemgap.agent.diagnostics.features import compute_features
from chemgap.agent.diagnostics.regions import (
    Condition,
    Region,
    UnknownFeature,
    region_id,
    region_masks,
)
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import reference_energies, reference_forces

CFG = DiagnosticsConfig(bootstrap=200, environment_classes=6, n_clusters=4)


class PlantedModel:
    """A stand-in ensemble: the labels plus seeded force noise of a given size per atom."""

    elements = ["Cu"]  # noqa: RUF012
    n_members = 2
    calibration = None
    path = None

    def __init__(self, scale: np.ndarray, seed: int):
        self.scale, self.seed = scale, seed

    def predict(self, structures, *, compute_stress=False, calibrated=True):
        rng = np.random.default_rng(self.seed)
        n_atoms = np.array([len(a) for a in structures])
        f_ref = reference_forces(structures)
        return SimpleNamespace(
            energy_mean=reference_energies(structures)
            + rng.normal(0.0, 0.01, len(structures)) * n_atoms,
            forces_mean=f_ref + rng.normal(0.0, 1.0, f_ref.shape) * self.scale[:, None],
            force_std_atom_cal=rng.uniform(0.01, 0.1, len(f_ref)),
            calibrated=False,
            numbers=np.concatenate([a.numbers for a in structures]),
        )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The test set, its features, the environment class of the bulk-like atoms (errors are
    planted there), and iteration 1's diagnosis written to disk.
    """
    test = cu_test_set()
    feats = compute_features(test, environment_classes=CFG.environment_classes, seed=0)
    env = feats.atom["environment"]
    bulkish = feats.atom["seed_kind"] == "bulk"
    target = max(sorted(set(env)), key=lambda e: ((env == e) & bulkish).sum())
    hot = env == target
    first = diagnose(test, PlantedModel(np.where(hot, 0.3, 0.05), 1), CFG, seed=0, iteration=1)
    out = tmp_path_factory.mktemp("iteration1")
    write_regions(first, out)
    return SimpleNamespace(test=test, feats=feats, target=target, hot=hot, first=first, out=out)


def _env_rule(target: str) -> str:
    return f"environment = {target}"


def test_environment_classes_do_not_depend_on_the_errors(planted):
    """Same structures and seed, other errors: the same classes in the same order, the same
    environment region id, first/last seen 1 and 2 and a history of both ratios.

    Catches classes that depend on the errors or on an unseeded KMeans init (the column or the
    centroid order would differ), and first seen reset to the current iteration.
    """
    p = planted
    second = diagnose(
        p.test,
        PlantedModel(np.where(p.hot, 0.25, 0.05), 2),
        CFG,
        seed=0,
        iteration=2,
        previous=load_previous(p.out),
    )
    assert (second.features.atom["environment"] == p.first.features.atom["environment"]).all()
    assert second.environment.labels == [f"env{k}" for k in range(CFG.environment_classes)]
    np.testing.assert_allclose(second.environment.centroids, p.first.environment.centroids)
    rid = region_id(_env_rule(p.target))
    one = {r.id: r for r in p.first.regions}
    two = {r.id: r for r in second.regions}
    assert rid in one and rid in two, ([r.rule for r in p.first.regions], list(two))
    r = two[rid]
    assert (r.first_seen, r.last_seen) == (1, 2)
    assert [h["iteration"] for h in r.history] == [1, 2]
    assert r.history[0]["ratio"] == pytest.approx(one[rid].ratio)
    assert r.history[1]["ratio"] == pytest.approx(r.ratio)
    # a region of iteration 1 that iteration 2 does not find is listed at 2, and only those;
    # resolved are those whose atoms are no longer significantly above the baseline
    continued = {i for reg in second.regions for i in [reg.id, *reg.also_ids]}
    gone = [i for i in one if i not in continued]
    assert [d["id"] for d in second.resolved_regions] == gone
    done = [d["id"] for d in second.resolved_regions if d["status"] == "resolved"]
    assert second.resolved == done
    for d in second.resolved_regions:
        assert d["last_seen"] == 1 and d["first_seen"] == 1


def test_renumbered_environment_classes_keep_their_region_ids(planted):
    """The same environments under other class numbers (as another KMeans init or a grown test
    set would number them) are renamed after the previous diagnosis' centroids.

    Catches the variant without matching: the same atoms would form ``environment = env<k>``
    with another k, a new id, and the old id would be reported resolved.
    """
    p = planted
    labels = p.feats.environment.labels
    rename = dict(zip(labels, labels[::-1], strict=True))  # env0 <-> env5, ...
    renumbered = replace(
        p.feats,
        atom={
            **p.feats.atom,
            "environment": np.array([rename[v] for v in p.feats.atom["environment"]], object),
        },
        environment=replace(p.feats.environment, labels=[rename[v] for v in labels]),
    )
    scale = np.where(p.hot, 0.3, 0.05)
    matched = diagnose(
        p.test,
        PlantedModel(scale, 1),
        CFG,
        seed=0,
        iteration=2,
        previous=load_previous(p.out),
        features=renumbered,
    )
    assert (matched.features.atom["environment"] == p.feats.atom["environment"]).all()
    rid = region_id(_env_rule(p.target))
    assert rid in {r.id for r in matched.regions} and rid not in matched.resolved
    # without the previous classes, the same atoms get the other name (what matching prevents)
    unmatched = diagnose(
        p.test,
        PlantedModel(scale, 1),
        CFG,
        seed=0,
        iteration=2,
        previous=p.first.regions,
        features=renumbered,
    )
    other = region_id(_env_rule(rename[p.target]))
    assert other in {r.id for r in unmatched.regions} and rid in unmatched.resolved
    masks = region_masks(
        [r for r in unmatched.regions if r.id == other], unmatched.features
    ) | region_masks([r for r in matched.regions if r.id == rid], matched.features)
    np.testing.assert_array_equal(masks[other], masks[rid])


def test_a_fixed_failure_is_resolved_with_how_its_atoms_do_now(planted, tmp_path):
    """Iteration 2's model has no planted error: every region of iteration 1 is resolved at 2,
    with its rule applied to the new errors (ratio about 1 now).

    Catches a ``resolved`` that is empty or that loses the regions' seen iterations.
    """
    p = planted
    fixed = diagnose(
        p.test,
        PlantedModel(np.full(len(p.hot), 0.05), 3),
        CFG,
        seed=0,
        iteration=2,
        previous=load_previous(p.out),
    )
    assert fixed.regions == []
    assert fixed.resolved == [r.id for r in p.first.regions] and fixed.resolved
    env = next(d for d in fixed.resolved_regions if d["machine_rule"] == _env_rule(p.target))
    assert env["first_seen"] == env["last_seen"] == 1
    assert env["n_atoms_now"] == int(p.hot.sum())
    assert env["ratio_before"] > 2.0 and 0.8 < env["ratio_now"] < 1.2
    # what the search could have found is stored for `chemgap inspect`
    write_regions(fixed, tmp_path)
    prev = load_previous(tmp_path)
    assert prev is not None and prev.regions == [] and prev.iteration == 2


def _ghost(like: Region, feature: str, value: object) -> Region:
    """A region of an earlier diagnosis with the one-condition rule ``feature = value``."""
    cond = Condition(feature=feature, op="=", value=value)
    d = {**like.to_dict(), "id": region_id(cond.text), "rule": cond.text}
    return Region.from_dict({**d, "conditions": [cond.to_dict()]})


def test_a_resolved_region_whose_feature_is_absent_now_is_noted(planted, tmp_path):
    """A previous region on ``group = nitrile`` (molecules) against this Cu test set, which has
    no group columns: resolved with n_atoms_now 0, ratio_now null and a note naming the
    feature, stored and printed; a rule on a present column that matches no atom now
    (``element = Xx``) gets no note. A region of the current diagnosis naming an absent column
    is an error (its exemplars cannot be picked).

    Broken variants caught: the old swallowing (an all-False mask: the nitrile region would
    look like a rule that matches no atom, with no note), and tracking that lets the error of
    a resolved region's absent feature escape (the diagnosis would crash).
    """
    p = planted
    assert "group:nitrile" not in p.feats.atom
    nitrile = _ghost(p.first.regions[0], "group:nitrile", True)
    gone = _ghost(p.first.regions[0], "element", "Xx")
    scale = np.where(p.hot, 0.3, 0.05)
    res = diagnose(
        p.test, PlantedModel(scale, 1), CFG, seed=0, iteration=2, previous=[nitrile, gone]
    )
    assert [d["id"] for d in res.resolved_regions] == [nitrile.id, gone.id]
    assert res.resolved == [gone.id]  # a rule that cannot be re-scored is not resolved
    absent, empty = res.resolved_regions
    assert absent["status"] == "cannot be re-scored" and empty["status"] == "resolved"
    note = "feature 'group:nitrile' absent from this data"
    assert absent["n_atoms_now"] == 0 and np.isnan(absent["ratio_now"]) and absent["note"] == note
    assert empty["n_atoms_now"] == 0 and np.isnan(empty["ratio_now"]) and "note" not in empty
    write_regions(res, tmp_path)
    stored = json.loads((tmp_path / "regions.json").read_text())["resolved_regions"][0]
    assert stored["ratio_now"] is None and stored["note"] == note
    from click.testing import CliRunner

    from chemgap.agent.cli.diagnose import inspect as inspect_cmd

    shown = CliRunner().invoke(inspect_cmd, [str(tmp_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and note in shown.output
    pred = PlantedModel(scale, 1).predict(p.test)
    err = np.linalg.norm(pred.forces_mean - reference_forces(p.test), axis=1)
    with pytest.raises(UnknownFeature, match="group:nitrile"):
        diagnose_mod._exemplars([nitrile], p.feats, p.test, pred, err, 1)
