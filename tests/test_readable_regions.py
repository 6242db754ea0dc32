"""Failure regions a chemist can read: environment classes named by their chemistry, local
composition, rules in plain set notation with units, overlapping regions folded under the most
readable one, and the sampling provenance checked apart instead of reported as a region.

No model is trained: the ensembles are stand-ins whose force errors are planted per atom (the
labels plus seeded noise of a chosen size), on structures made here (EMT-labelled Cu-Au cells,
and molecules from ASE's ``molecule()`` with a zero reference, since only the planted error
matters).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from click.testing import CliRunner

from chemgap.agent.cli.diagnose import diagnose as diagnose_cmd
from chemgap.agent.cli.diagnose import inspect as inspect_cmd
from chemgap.agent.diagnostics import diagnose as diagnose_mod
from chemgap.agent.diagnostics.diagnose import diagnose, load_previous, load_regions, write_regions
from chemgap.agent.diagnostics.features import (
    PROVENANCE_FEATURES,
    EnvironmentClasses,
    FeatureKind,
    Features,
    compute_features,
    match_environment_classes,
)
from chemgap.agent.diagnostics.regions import (
    MERGE_JACCARD,
    Region,
    rank_regions,
    search_regions,
)
from chemgap.agent.diagnostics.rules import (
    Condition,
    condition_text,
    cut_between,
    readable_rule,
    region_id,
    round_threshold,
    rule_mask,
    rule_text,
    simplify_conditions,
)
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import (
    ENERGY_KEY,
    FORCES_KEY,
    STATUS_KEY,
    reference_energies,
    reference_forces,
)

NARROW = {"COLUMNS": "80"}
BARE_CLASS = re.compile(r"(?<!\()\benv\d+\b")  # a class id not given as "(env4)" after its name
GOLD = {"shell_frac:Au", "nb_count:Au", "comp_frac:Au"}
NOT_CHEMISTRY = {*PROVENANCE_FEATURES, "coordination", "coordination_deficit", "defect_distance_A"}


class Planted:
    """A stand-in ensemble: reference forces plus seeded noise of ``scale`` (eV/Å) per atom;
    its uncertainty follows the error loosely (so that regions are not silent by construction).
    """

    n_members = 2
    calibration = None
    path = None

    def __init__(self, scale: np.ndarray, elements: list[str]):
        self.scale, self.elements = scale, elements

    def predict(self, structures, *, compute_stress=False, calibrated=True):
        rng = np.random.default_rng(3)
        f_ref = reference_forces(structures)
        return SimpleNamespace(
            energy_mean=reference_energies(structures),
            forces_mean=f_ref + rng.normal(0.0, 1.0, f_ref.shape) * self.scale[:, None],
            force_std_atom_cal=self.scale * rng.uniform(0.5, 1.5, len(f_ref)),
            calibrated=False,
            numbers=np.concatenate([a.numbers for a in structures]),
        )


def _fits(output: str, width: int = 80) -> None:
    long = [line for line in output.splitlines() if len(line) > width]
    assert not long, "\n".join(long)
    assert "…" not in output


def _texts(r: Region) -> list[str]:
    """Everything a region shows a reader: its rule, same-atoms rules, enrichment, other side."""
    return [
        r.rule,
        *r.also,
        *r.enriched,
        *(f["rule"] for f in r.folded),
        *([r.complement] if r.complement else []),
    ]


def _features_named(r: Region) -> set[str]:
    return {c["feature"] for c in r.conditions} | {
        c.split(" ")[0] for c in [r.machine_rule, *(f["machine_rule"] for f in r.folded)]
    }


# --------------------------------------------------------------------------- a Cu-Au alloy
def _alloy_cell(seed: int, x_au: float) -> Atoms:
    """A random fcc Cu-Au cell (16 atoms), Vegard's-law lattice, rattled, labelled by EMT."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61 + (4.08 - 3.61) * x_au, cubic=True) * (2, 2, 1)
    atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < x_au, "Au", "Cu"))
    atoms.rattle(0.05, seed=seed)
    ref = atoms.copy()
    ref.calc = EMT()
    atoms.info[ENERGY_KEY] = ref.get_potential_energy()
    atoms.arrays[FORCES_KEY] = ref.get_forces()
    atoms.info[STATUS_KEY] = "ok"
    return atoms


@pytest.fixture(scope="module")
def alloy():
    """An Au-rich test set for a model trained on Cu-rich cells: its force error grows with the
    Au fraction of an atom's first shell (what the data hide), a little more on Au atoms.
    """
    rng = np.random.default_rng(0)
    test = [_alloy_cell(i, x) for i, x in enumerate(rng.uniform(0.3, 0.8, 24))]
    au_shell, gold = [], []
    for atoms in test:  # the Au share of each atom's first shell (images count), computed here
        symbols = np.array(atoms.get_chemical_symbols())
        i, j = neighbor_list("ij", atoms, 0.85 * atoms.cell[2, 2])  # a/√2 < 0.85 a < a
        au_shell.append(np.bincount(i, symbols[j] == "Au", len(atoms)) / np.bincount(i))
        gold.append(symbols == "Au")
    au_shell, gold = np.concatenate(au_shell), np.concatenate(gold)
    scale = 0.03 + 0.12 * np.clip((au_shell - 0.4) / 0.4, 0.0, 1.0) + 0.04 * gold
    model = Planted(scale, ["Au", "Cu"])
    res = diagnose(test, model, DiagnosticsConfig(bootstrap=300, environment_classes=6), seed=0)
    return SimpleNamespace(test=test, model=model, res=res)


def test_alloy_top_region_is_stated_in_gold_and_no_class_id_is_bare(alloy, tmp_path):
    """The planted Au-rich failure: the top region is a rule on Au (the element or a local or
    structure Au fraction), not an environment class, and no displayed text holds a bare
    class id; every class a rule names reads as its chemistry with the id in parentheses.

    Broken variants caught: no local-composition features (the top region is then ``density >
    18 g/cm³``, the Au-rich cells as a whole: measured), and rules shown in their machine form
    (``environment = env3``, caught by the bare-id check).
    """
    res = alloy.res
    assert res.regions, res.diagnosed
    top = res.regions[0]
    named = {c["feature"] for c in top.conditions}
    gold = named & GOLD or {
        c["feature"] for c in top.conditions if c["feature"] == "element" and c["value"] == "Au"
    }
    assert gold and "environment" not in named, top.rule
    assert "Au" in top.rule
    for r in res.regions:
        for text in _texts(r):
            assert not BARE_CLASS.search(text), text
        assert r.id == region_id(r.machine_rule)
        env = [c for c in r.conditions if c["feature"] == "environment"]
        for c in env:
            assert f"({c['value']})" in r.rule and re.search(r"\d+-fold", r.rule), r.rule
    described = res.environment.descriptions
    assert len(described) == len(res.environment.labels)
    assert all(re.match(r"(Au|Cu)(/(Au|Cu))?, \d+(–\d+)?-fold", d) for d in described), described
    # the machine form is what selects the atoms, and it is stored beside the readable one
    write_regions(res, tmp_path)
    payload = json.loads((tmp_path / "regions.json").read_text())
    stored = payload["regions"][0]
    assert stored["rule"] == top.rule and stored["machine_rule"] == top.machine_rule
    assert stored["machine_rule"] == rule_text([Condition(**c) for c in stored["conditions"]])
    frames = ase.io.read(tmp_path / "regions" / f"{top.id}.extxyz", index=":")
    assert frames[0].info["region_machine_rule"] == top.machine_rule
    runner = CliRunner()
    table = runner.invoke(inspect_cmd, [str(tmp_path)], env=NARROW)
    assert table.exit_code == 0, table.output
    _fits(table.output)
    assert not BARE_CLASS.search(table.output)
    one = runner.invoke(inspect_cmd, [str(tmp_path), "--region", top.id], env=NARROW)
    assert one.exit_code == 0, one.output
    _fits(one.output)
    flat = " ".join(one.output.split())
    assert "machine rule" in flat and top.machine_rule in flat


def test_environment_classes_are_named_and_keep_their_names(alloy):
    """Each class: centre element, coordination, first-shell composition in words and figures;
    matched to renumbered reference classes, a description stays with its centroid; a file
    written before descriptions existed still reads (the bare id, then).

    Broken variant caught: descriptions kept by position while the labels are renamed (a class
    would carry another class's chemistry).
    """
    f = alloy.res.features
    env = f.environment
    for label, text, d in zip(env.labels, env.descriptions, env.details, strict=True):
        inside = f.atom["environment"] == label
        assert d["n_atoms"] == int(inside.sum())
        assert d["coordination_mean"] == pytest.approx(f.atom["nb_count:Au"][inside].mean()
                                                       + f.atom["nb_count:Cu"][inside].mean(),
                                                       abs=0.01)  # fmt: skip
        assert text.startswith(d["centre"]) and "neighbours" in text
        assert env.name(label) == f"{text} ({label})"
    renamed = [f"env{k}" for k in reversed(range(len(env.labels)))]
    reference = EnvironmentClasses(
        labels=renamed, centroids=env.centroids, species=env.species, descriptions=[]
    )
    matched = match_environment_classes(f, reference)
    for old, new, text in zip(
        env.labels, matched.environment.labels, matched.environment.descriptions, strict=True
    ):
        assert new == renamed[env.labels.index(old)]
        assert text == env.descriptions[env.labels.index(old)]
    old_file = {k: v for k, v in env.to_dict().items() if k not in {"descriptions", "details"}}
    bare = EnvironmentClasses.from_dict(old_file)
    assert bare.descriptions == [] and bare.name("env1") == "env1"
    assert EnvironmentClasses.from_dict(env.to_dict()).descriptions == env.descriptions


def test_local_composition_and_bond_features():
    """First-shell counts and fractions per element, composition fractions, bond stretch and
    distortion against the per-pair-type median: the figures, computed here independently.

    Two pure Cu cells (a = 3.61 Å, 8 atoms; a = 3.70 Å, 16 atoms, so the median Cu-Cu bond is
    the wider cell's) and a Cu6Au2 cell at 3.61 Å (every Au-Cu and Au-Au bond at that length).

    Broken variants caught: columns for elements absent, and a bond reference per element
    rather than per pair type (the Au atoms' Au-Cu bonds would be measured against Cu-Cu).
    """
    small = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    wide = bulk("Cu", "fcc", a=3.70, cubic=True) * (2, 2, 1)
    alloy = small.copy()
    alloy.set_chemical_symbols(["Au", "Cu", "Cu", "Cu", "Cu", "Cu", "Cu", "Au"])
    feats = compute_features(
        [small, wide, alloy], soap=False, families=["element", "neighbours", "bonds"]
    )
    counts = feats.atom["nb_count:Au"] + feats.atom["nb_count:Cu"]
    assert (counts == 12).all()
    np.testing.assert_allclose(feats.atom["shell_frac:Au"] + feats.atom["shell_frac:Cu"], 1.0)
    assert list(feats.structure["comp_frac:Au"]) == [0.0, 0.0, 0.25]
    assert {k for k in feats.atom if ":" in k} - set(feats.structure) == {
        "nb_count:Au", "nb_count:Cu", "shell_frac:Au", "shell_frac:Cu"
    }  # fmt: skip
    d_small, d_wide = 3.61 / np.sqrt(2), 3.70 / np.sqrt(2)
    stretch, sidx = feats.atom["bond_stretch_A"], feats.system_idx
    np.testing.assert_allclose(stretch[sidx == 0], d_small - d_wide, atol=1e-4)
    np.testing.assert_allclose(stretch[sidx == 1], 0.0, atol=1e-4)
    in_alloy = sidx == 2
    gold = in_alloy & (feats.atom["element"] == "Au")
    np.testing.assert_allclose(stretch[gold], 0.0, atol=1e-4)  # Au-Cu, Au-Au: their own medians
    copper = in_alloy & ~gold  # Cu-Cu bonds stretched by d_small - d_wide, Cu-Au ones not
    cu_cu = 12 - feats.atom["nb_count:Au"][copper]
    np.testing.assert_allclose(stretch[copper], cu_cu * (d_small - d_wide) / 12, atol=1e-4)
    distortion = feats.structure["bond_distortion_A"]
    assert distortion[0] == pytest.approx(d_wide - d_small, abs=1e-4) and distortion[1] == 0.0


def test_molecules_get_no_defect_or_coordination_features():
    """Coordination, deficit and defect distance describe extended structures; a molecule's
    atoms get none (NaN beside a crystal, no column at all without one).

    Broken variant caught: the old coordination family (``coordination ≥ 2`` and
    ``defect_distance_A ≤ 1.6`` on isolated molecules).
    """
    mols = [molecule("CH3CN"), molecule("CH3CH2OH")]
    only = compute_features(mols, soap=False, families=["element", "coordination", "bonds"])
    assert not {"coordination", "coordination_deficit", "defect_distance_A"} & set(only.atom)
    assert "bond_stretch_A" not in only.atom
    cu = bulk("Cu", cubic=True) * (2, 1, 1)
    del cu[0]
    mixed = compute_features([*mols, cu], soap=False, families=["coordination"])
    molecule_atoms = mixed.system_idx < 2
    assert np.isnan(mixed.atom["coordination"][molecule_atoms]).all()
    assert np.isnan(mixed.atom["defect_distance_A"][molecule_atoms]).all()
    assert np.isfinite(mixed.atom["coordination"][~molecule_atoms]).all()


# --------------------------------------------------------------------------- molecules
NITRILES = ["CH3CN", "H2CCHCN"]
OTHERS = ["CH3CH2OH", "CH3OH", "CH3COOH", "CH3CONH2", "CH3CH2NH2", "CH3OCH3", "CH3COCH3"]


def _molecules() -> list[Atoms]:
    """Four rattled copies of each molecule with a zero reference; the nitriles were sampled
    by walker 14 at 1000 K in iteration 3, the others by walkers 0-2 at 300/600 K earlier.
    """
    out = []
    for k, name in enumerate(NITRILES + OTHERS):
        for j in range(4):
            atoms = molecule(name)
            atoms.rattle(0.02, seed=10 * k + j)
            atoms.center(vacuum=4.0)
            atoms.pbc = False
            atoms.info[ENERGY_KEY] = 0.0
            atoms.arrays[FORCES_KEY] = np.zeros((len(atoms), 3))
            atoms.info[STATUS_KEY] = "ok"
            nitrile = name in NITRILES
            atoms.info.update(
                walker=14 if nitrile else j % 3,
                temperature_K=1000.0 if nitrile else [300.0, 600.0][j % 2],
                iteration=3 if nitrile else 1 + j % 2,
            )
            out.append(atoms)
    return out


@pytest.fixture(scope="module")
def organics():
    test = _molecules()
    feats = compute_features(test, families=["molecular"], soap=False)
    scale = np.where(feats.atom["group:nitrile"], 0.3, 0.05)
    model = Planted(scale, ["C", "H", "N", "O"])
    cfg = DiagnosticsConfig(bootstrap=300, environment_classes=6)
    return SimpleNamespace(test=test, model=model, res=diagnose(test, model, cfg, seed=0))


def test_nitrile_region_is_named_by_its_group_and_provenance_is_apart(organics):
    """Errors planted on nitrile groups, whose molecules all come from one hot walker of a
    late iteration: the top region is ``group = nitrile``, no region names provenance or a
    defect feature, and the walker, temperature and iteration are flagged apart.

    Broken variants caught: provenance in the finders (``walker = 14`` and ``temperature ≥
    1000 K`` become regions of their own, their atoms too different from the group's to fold),
    the old coordination family on molecules, and a check that is not run (no flag).
    """
    res = organics.res
    top = res.regions[0]
    assert top.rule == "group = nitrile" and top.machine_rule == "group = nitrile"
    assert top.ratio_ci[0] > 3.0
    for r in res.regions:
        assert not _features_named(r) & NOT_CHEMISTRY, r.machine_rule
        for text in _texts(r):
            assert not re.search(r"walker|iteration|temperature|defect|coordination", text), text
            assert not BARE_CLASS.search(text), text
    flagged = {c["feature"]: c for c in res.provenance if c["flagged"]}
    assert {"walker", "temperature_K", "iteration"} <= set(flagged)
    assert flagged["walker"]["worst"]["value"] == "14"
    assert flagged["temperature_K"]["worst"]["value"] == "1000"
    assert "sampling artefact" in flagged["walker"]["message"]


def test_diagnose_and_inspect_show_the_sampling_check_apart(organics, tmp_path, monkeypatch):
    """``chemgap diagnose`` prints the flagged provenance under its own heading, after the
    regions table and outside it; ``inspect`` reads it back from regions.json; 80 columns.

    Broken variant caught: the check computed but not stored or not printed.
    """
    from chemgap.models.ensemble import Ensemble

    monkeypatch.setattr(Ensemble, "load", staticmethod(lambda *a, **k: organics.model))
    data = tmp_path / "test.extxyz"
    ase.io.write(data, organics.test, format="extxyz")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ensemble.json").write_text("{}")
    out = tmp_path / "diag"
    args = ["--models", str(tmp_path / "model"), "--data", str(data), "-o", str(out)]
    res = CliRunner().invoke(diagnose_cmd, [*args, "--set", "bootstrap=200"], env=NARROW)
    assert res.exit_code == 0, res.output
    _fits(res.output)
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("sampling check"))
    table = next(i for i, line in enumerate(lines) if "group = nitrile" in line)
    assert table < head
    assert not any("walker" in line for line in lines[:head])
    assert "walker" in " ".join(lines[head:])
    stored = json.loads((out / "regions.json").read_text())["provenance"]
    assert {c["feature"] for c in stored if c["flagged"]} >= {"walker", "temperature_K"}
    shown = CliRunner().invoke(inspect_cmd, [str(out)], env=NARROW)
    assert shown.exit_code == 0 and "sampling check" in shown.output
    _fits(shown.output)


# --------------------------------------------------------------------------- plain rules
def _table(n_struct: int = 24, per: int = 10, seed: int = 0) -> Features:
    """Synthetic Cu/Au atoms in four environment classes (Au never in env1 or env3) with a
    defect distance; the classes carry descriptions as the environment family writes them.
    """
    rng = np.random.default_rng(seed)
    sidx = np.repeat(np.arange(n_struct), per)
    n = len(sidx)
    element = np.where(rng.random(n) < 0.4, "Au", "Cu").astype(object)
    env = np.array([f"env{k}" for k in rng.integers(0, 4, n)], dtype=object)
    env[(element == "Au") & np.isin(env, ["env1", "env3"])] = "env0"
    names = ["Cu, 12-fold", "Cu, 9-fold", "Au, 12-fold, 8–11 Au neighbours", "Cu, 8-fold"]
    return Features(
        atom={
            "element": element,
            "environment": env,
            "defect_distance_A": np.round(rng.uniform(0.0, 3.0, n), 2),
            "shell_frac:Au": np.round(rng.integers(0, 13, n) / 12, 4),
        },
        structure={},
        kinds={
            "element": FeatureKind.CATEGORICAL,
            "environment": FeatureKind.CATEGORICAL,
            "defect_distance_A": FeatureKind.NUMERIC,
            "shell_frac:Au": FeatureKind.NUMERIC,
        },
        system_idx=sidx,
        environment=EnvironmentClasses(
            labels=[f"env{k}" for k in range(4)],
            centroids=np.eye(4),
            species=["Au", "Cu"],
            descriptions=names,
        ),
    )


def test_rules_read_in_plain_set_notation_with_units():
    """The issue's rule ``element ≠ Cu and environment ≠ env1 and environment ≠ env7``-style:
    the negations become ``element = Au`` and the class conditions, selecting nothing more,
    go; where a class condition matters it becomes the positive set when that is no longer;
    thresholds are the roundest numbers cutting the data in the same place, with units.

    Broken variants caught: a simplification that changes the atoms (checked on every rule),
    and thresholds kept at the tree's 3-digit midpoint (``≤ 1.39`` instead of ``≤ 1.4``).
    """
    f = _table()
    neq = [
        Condition(feature="element", op="≠", value="Cu"),
        Condition(feature="environment", op="≠", value="env1"),
        Condition(feature="environment", op="≠", value="env3"),
    ]
    mask = rule_mask(neq, f)
    plain = simplify_conditions(neq, f, mask)
    assert rule_text(plain) == "element = Au"
    np.testing.assert_array_equal(rule_mask(plain, f), mask)
    # Cu atoms outside env1, env2, env3: the one class left, by name
    cu = [
        Condition(feature="element", op="=", value="Cu"),
        *(Condition(feature="environment", op="≠", value=f"env{k}") for k in (1, 2, 3)),
    ]
    plain = simplify_conditions(cu, f)
    assert rule_text(plain) == "element = Cu and environment = env0"
    assert readable_rule(plain, f) == "element = Cu and environment = Cu, 12-fold (env0)"
    np.testing.assert_array_equal(rule_mask(plain, f), rule_mask(cu, f))
    two = [Condition(feature="environment", op="≠", value="env1")]
    kept = simplify_conditions([Condition(feature="element", op="=", value="Cu"), *two, two[0]], f)
    assert kept[-1].op == "∉" or rule_text(kept).startswith("element = Cu and environment")
    sets = Condition(feature="environment", op="∈", value=("env0", "env2"))
    assert readable_rule([sets], f) == (
        "environment ∈ {Cu, 12-fold (env0); Au, 12-fold, 8–11 Au neighbours (env2)}"
    )
    assert Condition(**sets.to_dict()).mask(f).sum() == sets.mask(f).sum()
    # thresholds
    assert round_threshold(1.18, 1.63) == 1.4
    assert round_threshold(0.5, 0.5833) == 0.5
    assert round_threshold(-0.003, 0.002) == 0.0
    assert round_threshold(11.0, 12.0) == 11.0
    dense = np.round(np.linspace(0.0, 0.05, 501), 4)
    assert cut_between(dense, 0.01234) == 0.0123
    assert cut_between(dense, 0.01234, resolution=0.01) == 0.01
    assert condition_text(Condition(feature="defect_distance_A", op="≤", value=1.4)) == (
        "distance to a defect ≤ 1.4 Å"
    )
    assert condition_text(Condition(feature="shell_frac:Au", op=">", value=0.5)) == (
        "first-shell Au fraction > 50 %"
    )
    assert condition_text(Condition(feature="group:carboxylic_acid", op="=", value=True)) == (
        "group = carboxylic acid"
    )


def test_folding_keeps_the_representative_and_records_the_folded(judged_copies):
    """A flag ``hot`` and an environment class holding most of its atoms (Jaccard ≥ 0.8), the
    class the more severe: the flag represents both, with exactly its own statistics; the
    class is listed in ``folded`` with its id, Jaccard index and statistics, and its id and
    readable rule in ``also_ids`` / ``also``.

    Broken variants caught: the most severe member as representative (the class), statistics
    replaced by the union's or the folded member's, and folding that forgets the folded ids.
    """
    f = _table(n_struct=30, per=10, seed=1)
    rng = np.random.default_rng(5)
    hot = rng.random(f.n_atoms) < 0.25
    f.atom["hot"], f.kinds["hot"] = hot, FeatureKind.FLAG
    env = np.where(rng.random(f.n_atoms) < 0.5, "env0", "env1").astype(object)
    worst = hot & (rng.random(f.n_atoms) < 0.9)  # the class: 90% of the hot atoms
    env[worst] = "env2"
    f.atom["environment"] = env
    err = np.where(worst, 1.0, np.where(hot, 0.5, 0.2)) * rng.lognormal(0.0, 0.2, f.n_atoms)
    found = search_regions(
        f, err, err.copy(), DiagnosticsConfig(bootstrap=200), methods=["slice", "cluster"]
    )
    (tested,) = judged_copies
    before = {r.id: r for r in tested}
    rep = next(r for r in found.regions if r.machine_rule == "hot = yes")
    cls = before[region_id("environment = env2")]
    jaccard = (hot & worst).sum() / (hot | worst).sum()
    assert jaccard >= MERGE_JACCARD and cls.severity > before[rep.id].severity
    assert cls.id not in {r.id for r in found.regions}
    stats = ("mean_error", "ci", "ratio", "ratio_ci", "p_value", "q_value", "severity",
             "n_atoms", "baseline", "uncertainty_mean", "silent")  # fmt: skip
    for key in stats:
        assert getattr(rep, key) == getattr(before[rep.id], key), key
    (folded,) = [d for d in rep.folded if d["id"] == cls.id]
    assert folded["jaccard"] == pytest.approx(jaccard, abs=1e-3)
    assert folded["ratio"] == cls.ratio and folded["q_value"] == cls.q_value
    assert folded["machine_rule"] == "environment = env2"
    assert folded["rule"] == "environment = Au, 12-fold, 8–11 Au neighbours (env2)"
    assert cls.id in rep.also_ids and folded["rule"] in rep.also
    assert "cluster" in rep.methods


def _region(rule: str, feature: str, ratio_ci: tuple[float, float], silent=False) -> Region:
    cond = Condition(feature=feature, op="=", value=rule)
    return Region(
        id=region_id(cond.text),
        rule=cond.text,
        conditions=[cond.to_dict()],
        method="slice",
        n_atoms=20,
        n_structures=5,
        coverage=0.1,
        mean_error=1.0,
        ci=(0.9, 1.1),
        baseline=0.4,
        ratio=sum(ratio_ci) / 2,
        ratio_ci=ratio_ci,
        p_value=0.001,
        silent=silent,
        severity=(ratio_ci[0] - 1.0) * (2.0 if silent else 1.0),
    )


def test_ranking_prefers_the_readable_region_within_the_cis():
    """``environment = env4`` ahead on severity but within the CI of ``element = Au``: the
    element goes first; a class clearly more severe (CIs apart) stays on top, and a silent
    region is never passed by a loud one.

    Broken variant caught: ranking by severity alone (the issue's ``env4`` first, ``element
    = Au`` fifth).
    """
    env4 = _region("env4", "environment", (2.6, 3.6))
    gold = _region("Au", "element", (2.3, 3.1))
    far = _region("env9", "environment", (4.5, 5.5))
    assert [r.rule for r in rank_regions([env4, gold])] == ["element = Au", "environment = env4"]
    ranked = rank_regions([gold, env4, far])
    assert [r.rule for r in ranked] == ["environment = env9", "element = Au", "environment = env4"]
    quiet = _region("env5", "environment", (2.6, 3.6), silent=True)
    assert rank_regions([gold, quiet])[0] is quiet


def test_an_old_regions_file_still_reads_and_its_regions_continue(tmp_path):
    """A regions.json of format 1 (no machine rule, machine rules in ``also``, no provenance,
    classes without descriptions): read with machine_rule = rule and also_ids from ``also``.
    A new diagnosis finding the same class shows it by its chemistry but keeps the old id, so
    the region's history continues; ``inspect`` shows the old file.

    Broken variants caught: ids hashed from the readable rule (the class would be resolved and
    found anew under another id), and an old file's ``also`` not turned into ``also_ids``.
    """
    old = {
        "id": region_id("environment = env2"),
        "rule": "environment = env2",
        "conditions": [{"feature": "environment", "op": "=", "value": "env2"}],
        "method": "cluster",
        "methods": ["cluster"],
        "also": ["shell_frac:Au > 0.5"],
        "n_atoms": 10,
        "n_structures": 3,
        "coverage": 0.1,
        "mean_error": 0.2,
        "ci": [0.1, 0.3],
        "baseline": 0.1,
        "ratio": 2.0,
        "ratio_ci": [1.5, 2.5],
        "p_value": 0.001,
        "first_seen": 1,
        "last_seen": 1,
        "history": [{"iteration": 1, "ratio": 2.0, "ratio_ci": [1.5, 2.5], "q_value": 0.01}],
    }
    (tmp_path / "regions.json").write_text(
        json.dumps({"format": 1, "iteration": 1, "regions": [old], "splits": []})
    )
    (region,), payload = load_regions(tmp_path)
    assert region.machine_rule == "environment = env2" and region.folded == []
    assert region.also_ids == [region_id("shell_frac:Au > 0.5")]
    assert "provenance" not in payload
    shown = CliRunner().invoke(inspect_cmd, [str(tmp_path)], env=NARROW)
    assert shown.exit_code == 0 and "environment = env2" in shown.output
    detail = CliRunner().invoke(inspect_cmd, [str(tmp_path), "--region", region.id], env=NARROW)
    assert detail.exit_code == 0 and "machine rule" in detail.output
    previous = load_previous(tmp_path)
    assert previous is not None and previous.environment is None
    f = _table()
    env2 = f.atom["environment"] == "env2"
    err = np.where(env2, 0.6, 0.2) * np.random.default_rng(2).lognormal(0.0, 0.2, f.n_atoms)
    found = search_regions(f, err, err.copy(), DiagnosticsConfig(bootstrap=100))
    again = next(r for r in found.regions if r.machine_rule == "environment = env2")
    assert again.id == region.id and again.rule.endswith("8–11 Au neighbours (env2)")
    resolved = diagnose_mod._track(found.regions, previous, 2, f, err)
    assert region.id not in {d["id"] for d in resolved}
    assert again.first_seen == 1 and [h["iteration"] for h in again.history] == [1, 2]


def test_one_feature_cut_at_several_thresholds_is_one_finding():
    """Errors that grow as a numeric feature falls give significant slices ``x ≤ t`` at several
    thresholds, some overlapping little; they are one finding: a single region on ``x ≤``
    remains, the other thresholds folded under it. A cut the other way (``x ≥``) would not be
    folded with them.

    Broken variant caught: folding by Jaccard alone (three ``x ≤`` regions survive, as
    cu-defects showed with ``density ≤ 8.87 / 8.9 / 9 g/cm³``).
    """
    f = _table(n_struct=40, per=10, seed=3)
    rng = np.random.default_rng(7)
    x = np.repeat(rng.uniform(0.0, 1.0, f.n_struct), 10)  # a structure-level feature
    f.atom["x"], f.kinds["x"] = np.round(x, 3), FeatureKind.NUMERIC
    err = (0.2 + 1.5 * np.clip(0.6 - x, 0, None)) * rng.lognormal(0.0, 0.1, f.n_atoms)
    found = search_regions(f, err, err.copy(), DiagnosticsConfig(bootstrap=200), methods=["slice"])
    cuts = [r for r in found.regions if r.machine_rule.startswith("x ≤")]
    assert len(cuts) == 1, [r.machine_rule for r in found.regions]
    folded = [d["machine_rule"] for d in cuts[0].folded if d["machine_rule"].startswith("x ≤")]
    assert folded  # the other thresholds are recorded under it
    assert not any(r.machine_rule.startswith("x ≥") for r in found.regions)
