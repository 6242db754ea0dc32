"""Biased splits: reproducible, disjoint, doing what their names say; the split study."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc100, fcc111

from chemgap.agent.diagnostics.features import compute_features
from chemgap.agent.diagnostics.splits import (
    SPLITS,
    SplitUnavailable,
    evaluate_splits,
    make_split,
)
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import DiagnosticsConfig, SplitName
from chemgap.common.keys import ENERGY_KEY, FORCES_KEY


def labelled_prediction(structures, atom_error, energy_error_per_atom):
    """Zero labels and a prediction off by ``atom_error`` eV/Å in every force component of each
    atom and by ``energy_error_per_atom`` eV/atom per structure (so force MAE and energy MAE
    per atom of any set of structures are the means of those).
    """
    for a in structures:
        a.info[ENERGY_KEY] = 0.0
        a.arrays[FORCES_KEY] = np.zeros((len(a), 3))
    n = np.array([len(a) for a in structures])
    return SimpleNamespace(
        energy_mean=np.asarray(energy_error_per_atom, float) * n,
        forces_mean=np.repeat(np.asarray(atom_error, float)[:, None], 3, axis=1),
        numbers=np.concatenate([a.numbers for a in structures]),
    )


def cu_mix(n_bulk=8, n_slab=4, rattle=0.05) -> list[Atoms]:
    out = []
    for i in range(n_bulk):
        a = bulk("Cu", cubic=True) * ((1, 1, 1) if i % 2 else (2, 1, 1))
        a.rattle(rattle, seed=i)
        a.info["temperature_K"] = 300.0 if i < n_bulk // 2 else 900.0
        out.append(a)
    for i in range(n_slab):
        s = (fcc111 if i % 2 else fcc100)("Cu", size=(2, 2, 3), vacuum=5.0)
        s.pbc = True
        s.rattle(rattle, seed=50 + i)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def data():
    structures = cu_mix()
    # a few Ag-doped cells for the element split
    for i in range(3):
        a = bulk("Cu", cubic=True) * (2, 1, 1)
        a[0].symbol = "Ag"
        a.rattle(0.05, seed=90 + i)
        structures.append(a)
    return structures, compute_features(structures, environment_classes=3, seed=0)


def test_every_split_is_registered_reproducible_and_a_partition(data):
    structures, feats = data
    assert set(SPLITS) == set(SplitName)
    cfg = DiagnosticsConfig(n_clusters=4)
    for name in (
        SplitName.RANDOM,
        SplitName.CLUSTER,
        SplitName.MAXSEP,
        SplitName.SIZE,
        SplitName.ELEMENT,
        SplitName.TEMPERATURE,
    ):
        a = make_split(name, structures, feats, cfg, seed=3)
        b = make_split(name, structures, feats, cfg, seed=3)
        assert a.to_dict() == b.to_dict(), name
        assert sorted(a.train + a.test) == list(range(len(structures)))
        assert a.train and a.test and not set(a.train) & set(a.test)
    draws = {tuple(make_split("random", structures, feats, cfg, seed=s).test) for s in range(5)}
    assert len(draws) > 1


def test_size_element_temperature_and_maxsep_hold_out_what_they_say(data):
    structures, feats = data
    cfg = DiagnosticsConfig(holdout_element="Ag")
    size = make_split("size", structures, feats, cfg)
    n = np.array([len(a) for a in structures])
    assert n[size.train].max() < n[size.test].min()
    el = make_split("element", structures, feats, cfg)
    assert el.test == [i for i, a in enumerate(structures) if "Ag" in a.get_chemical_symbols()]
    temp = make_split("temperature", structures, feats, cfg)
    t = np.array([a.info.get("temperature_K", np.nan) for a in structures])
    assert (t[temp.test] == 900.0).all() and not (t[temp.train] == 900.0).any()
    ms = make_split("maxsep", structures, feats, cfg, seed=1)
    x = feats.soap_structure
    anchor = ms.params["anchor"]
    sim = x @ x[anchor] / np.linalg.norm(x, axis=1) / np.linalg.norm(x[anchor])
    assert anchor in ms.train and sim[ms.test].max() <= sim[ms.train].min() + 1e-12
    with pytest.raises(BadInput, match="holdout_element: 'Zn' is not in the data"):
        make_split("element", structures, feats, DiagnosticsConfig(holdout_element="Zn"))
    with pytest.raises(BadInput, match="split: 'bogus' is not one of"):
        make_split("bogus", structures, feats, cfg)


def test_unavailable_splits_are_reported_not_raised():
    same = [bulk("Cu", cubic=True) for _ in range(4)]
    for i, a in enumerate(same):
        a.rattle(0.05, seed=i)
    feats = compute_features(same, environment_classes=2)
    with pytest.raises(SplitUnavailable, match="same number of atoms"):
        make_split("size", same, feats, DiagnosticsConfig())
    with pytest.raises(SplitUnavailable, match="temperature_K"):
        make_split("temperature", same, feats, DiagnosticsConfig())
    cfg = DiagnosticsConfig(splits=["random", "size", "group"])
    n_atoms = sum(len(a) for a in same)
    pred = labelled_prediction(same, np.ones(n_atoms), np.zeros(4))
    res = evaluate_splits(same, feats, cfg, prediction=pred)
    assert [r.name for r in res] == ["random", "size", "group"]
    assert res[0].skipped is None and res[1].skipped and res[2].skipped


def test_group_split_holds_out_the_molecules_with_the_group():
    from chemgap.agent.seeds import smiles_conformers

    mols = [
        m for s in ["CCO", "CC#N", "CC(C)=O", "CCC#N", "CO"] for m in smiles_conformers(s, 2, 0)
    ]
    feats = compute_features(mols, environment_classes=3)
    split = make_split("group", mols, feats, DiagnosticsConfig(holdout_group="nitrile"))
    assert [mols[i].info["smiles"] for i in split.test] == ["CC#N"] * 2 + ["CCC#N"] * 2
    with pytest.raises(BadInput, match="holdout_group: 'azide' is not in the data"):
        make_split("group", mols, feats, DiagnosticsConfig(holdout_group="azide"))


def test_evaluate_splits_reports_both_sides_with_known_errors(data):
    structures, feats = data
    cfg = DiagnosticsConfig(splits=["random", "size"])
    size_split = make_split("size", structures, feats, cfg)
    # error 1 eV/Å on the atoms of the large (test-side) structures, 0.1 on the small ones
    large = np.isin(np.arange(len(structures)), size_split.test)
    per_atom = np.where(large[feats.system_idx], 1.0, 0.1)
    labelled = [a.copy() for a in structures]
    pred = labelled_prediction(labelled, per_atom, np.where(large, 0.01, 0.001))
    res = evaluate_splits(labelled, feats, cfg, prediction=pred, seed=0)
    size = res[1]
    assert size.id_force_mae == pytest.approx(0.1) and size.ood_force_mae == pytest.approx(1.0)
    assert size.ood_energy_mae == pytest.approx(0.01) and size.ood_ratio == pytest.approx(10.0)
    rnd = res[0]
    assert size.vs_random == pytest.approx(1.0 / rnd.ood_force_mae)
    assert not size.trained and size.split["test"] == size_split.test


@pytest.mark.slow
def test_split_study_ood_errors_exceed_the_random_split(tmp_path):
    """Train one small ensemble per split on Cu bulk + vacancies + surfaces (EMT): the biased
    splits' OOD force MAE must exceed the random split's (about 2 min on 2 quiet cores).
    """
    from ase.calculators.emt import EMT

    from chemgap.agent.diagnostics.splits import run_splits
    from chemgap.models.config import EnsembleConfig

    structures = []
    for i in range(12):
        a = bulk("Cu", cubic=True) * (2, 1, 1)
        a.rattle(0.08, seed=i)
        structures.append(a)
    for i in range(6):
        v = bulk("Cu", cubic=True) * (2, 2, 1)
        del v[i % len(v)]
        v.rattle(0.08, seed=100 + i)
        structures.append(v)
    for i in range(6):
        s = (fcc111 if i % 2 else fcc100)("Cu", size=(2, 2, 3), vacuum=5.0)
        s.pbc = True
        s.rattle(0.08, seed=200 + i)
        structures.append(s)
    for a in structures:
        ref = a.copy()
        ref.calc = EMT()
        a.info[ENERGY_KEY] = ref.get_potential_energy()
        a.arrays[FORCES_KEY] = ref.get_forces()
    cfg = DiagnosticsConfig(splits=["random", "cluster", "maxsep", "size"], n_clusters=6)
    from test_silent_region import SMALL as model  # the members this statistic was set with

    ens = EnsembleConfig(members=2, max_epochs=20, batch_size=4, lr=1e-2, patience=50)
    results = run_splits(structures, cfg, model, ens, tmp_path, seed=0)  # in-process
    rows = {r.name: r for r in results}
    print("\nsplit    n_train n_id n_test  ID MAE   OOD MAE  OOD/random")
    for r in results:
        print(
            f"{r.name:8s} {r.n_train:7d} {r.n_id:4d} {r.n_test:6d}  {r.id_force_mae:.4f}  "
            f"{r.ood_force_mae:.4f}  {r.vs_random:.2f}"
        )
    assert all(r.trained and r.skipped is None for r in results)
    rnd = rows["random"].ood_force_mae
    for name in ("cluster", "maxsep", "size"):
        assert rows[name].ood_force_mae > rnd, (name, rows[name].ood_force_mae, rnd)
        assert rows[name].vs_random > 1.0
    assert (tmp_path / "size" / "models" / "ensemble.json").exists()
