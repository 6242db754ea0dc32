"""Chemical features: coordination, defects, SOAP environments, functional groups, provenance."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc100, fcc111, molecule

from chemgap.agent.diagnostics.features import (
    FEATURE_FAMILIES,
    FeatureBlock,
    FeatureKind,
    compute_features,
    coordination_numbers,
    molecular_features,
    perceive_molecule,
    register_feature_family,
)
from chemgap.agent.seeds import smiles_conformers


def test_coordination_of_bulk_surfaces_and_a_vacancy():
    cell = bulk("Cu", cubic=True) * (2, 2, 2)
    assert (coordination_numbers(cell) == 12).all()
    s111 = fcc111("Cu", size=(2, 2, 4), vacuum=6.0)
    s100 = fcc100("Cu", size=(2, 2, 4), vacuum=6.0)
    z111 = s111.positions[:, 2]
    cn111 = coordination_numbers(s111)
    assert (cn111[np.isclose(z111, z111.max())] == 9).all()
    assert (cn111[np.isclose(z111, z111.min())] == 9).all()
    assert set(coordination_numbers(s100)) == {8, 12}
    vac = cell.copy()
    del vac[0]
    feats = compute_features([cell, vac], families=["element", "coordination"], soap=False)
    cn = feats.atom["coordination"]
    second = feats.system_idx == 1
    assert (cn[~second] == 12).all()
    assert (cn[second] == 11).sum() == 12  # the 12 nearest neighbours of the vacancy
    deficit = feats.atom["coordination_deficit"]
    assert (deficit[second & (cn == 11)] == 1).all() and (deficit[cn == 12] == 0).all()
    dist = feats.atom["defect_distance_A"]
    assert (dist[second & (cn == 11)] == 0).all()
    assert (dist[second & (cn == 12)] > 2.0).all()  # next to, not on, a defect
    assert (dist[~second] == 10.0).all()  # no defect in the perfect cell: the cap


def test_functional_groups_hybridisation_and_rings():
    nitrile = smiles_conformers("CC#N", 1, 0)[0]
    f = molecular_features(nitrile)
    symbols = np.array(nitrile.get_chemical_symbols())
    nit = f["group:nitrile"]
    assert nit.sum() == 2 and set(symbols[nit]) == {"C", "N"}
    assert list(f["hybridisation"][nit]) == ["sp", "sp"]
    acid = smiles_conformers("CC(=O)O", 1, 0)[0]
    fa = molecular_features(acid)
    sym = np.array(acid.get_chemical_symbols())
    # C, =O, O and the acidic H; the methyl group is not part of it
    assert (
        fa["group:carboxylic_acid"].sum() == 4
        and (sym[fa["group:carboxylic_acid"]] == "H").sum() == 1
    )
    assert fa["group:carbonyl"].sum() == 2 and not fa["group:ester"].any()
    benzene = molecule("C6H6")
    fb = molecular_features(benzene)
    carbons = np.array(benzene.get_chemical_symbols()) == "C"
    assert fb["aromatic"][carbons].all() and fb["in_ring"][carbons].all()
    assert not fb["aromatic"][~carbons].any()
    ester = molecular_features(smiles_conformers("CC(=O)OC", 1, 0)[0])
    assert ester["group:ester"].any() and not ester["group:ether"].any()


def test_failed_perception_gives_no_groups_and_no_crash():
    radical = molecule("CH3")  # odd electron count: no closed-shell bond orders at charge 0
    assert molecular_features(radical) is None
    ethanol = molecule("CH3CH2OH")
    feats = compute_features([radical, ethanol], soap=False)
    radical_atoms = feats.system_idx == 0
    assert not feats.atom["group:hydroxyl"][radical_atoms].any()
    assert (feats.atom["hybridisation"][radical_atoms] == "").all()
    assert feats.atom["group:hydroxyl"][~radical_atoms].sum() == 2  # O and its H
    assert "hydroxyl" in feats.groups_present


def test_failed_perception_is_counted_per_feature_table():
    """A methyl radical and a stretched ethanol (RDKit finds no bond orders for either) next
    to an ethanol it perceives and a periodic Cu cell (not a molecule, not tried).

    Broken variant caught: failures only logged, not counted (``perception`` empty or with
    ``failed`` 0), so a diagnosis cannot say which molecules lack group features.
    """
    radical = molecule("CH3")
    stretched = molecule("CH3CH2OH")
    stretched.positions *= 1.5
    ethanol = molecule("CH3CH2OH")
    assert perceive_molecule(radical) is None and perceive_molecule(stretched) is None
    assert perceive_molecule(ethanol) is not None
    structures = [radical, ethanol, bulk("Cu"), stretched, radical.copy()]
    feats = compute_features(structures, families=["element", "molecular"], soap=False)
    assert feats.perception == {
        "tried": 4,
        "perceived": 1,
        "failed": 3,
        "failed_formulas": ["CH3", "C2H6O"],
    }
    none = compute_features(
        [radical, radical.copy()], families=["element", "molecular"], soap=False
    )
    assert none.perception["failed"] == 2 and none.perception["perceived"] == 0
    assert "hybridisation" not in none.atom  # nothing perceived: no molecular columns
    assert compute_features([bulk("Cu")], families=["element"], soap=False).perception == {}


def test_structure_features_provenance_and_soap():
    a = bulk("Cu", cubic=True) * (2, 1, 1)
    b = a.copy()
    b.set_cell(a.cell * 1.01, scale_atoms=True)
    a.info.update(temperature_K=300.0, source="seed", iteration=0)
    b.info.update(temperature_K=900.0, source="walker", iteration=2)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)
    feats = compute_features([a, b, slab], environment_classes=2, seed=0)
    s = feats.structure
    assert list(s["n_atoms"]) == [8, 8, 12]
    assert "walker" not in s  # no structure says: a column without information is dropped
    assert s["density_g_cm3"][0] == pytest.approx(8.93, abs=0.1)  # copper, EMT-free: ASE's a
    assert s["strain"][1] > s["strain"][0] and np.isnan(s["strain"][2])  # slab: not fully periodic
    assert list(s["source"]) == ["seed", "walker", ""]
    assert np.isnan(s["temperature_K"][2]) and s["temperature_K"][1] == 900.0
    assert feats.kinds["temperature_K"] == FeatureKind.NUMERIC
    assert (feats.atom["temperature_K"][feats.system_idx == 1] == 900.0).all()  # broadcast
    assert feats.soap_atom.shape[0] == 28
    np.testing.assert_allclose(np.linalg.norm(feats.soap_atom, axis=1), 1.0)
    assert feats.soap_structure.shape == (3, feats.soap_atom.shape[1])
    assert set(feats.atom["environment"]) == {"env0", "env1"}
    env = feats.atom["environment"]
    assert len(set(env[feats.system_idx == 0])) == 1  # a perfect bulk cell is one environment


def test_feature_families_are_a_registry_users_extend():
    def charge_sign(ctx):
        col = np.concatenate([np.sign(a.get_initial_charges()) for a in ctx.structures])
        return FeatureBlock(atom={"charge_sign": col}, kinds={"charge_sign": FeatureKind.NUMERIC})

    register_feature_family("charge_sign", charge_sign)
    try:
        atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], charges=[1, -1])
        feats = compute_features([atoms], families=["element", "charge_sign"], soap=False)
        assert list(feats.atom["charge_sign"]) == [1.0, -1.0]
        with pytest.raises(ValueError, match="unknown family 'nope'"):
            compute_features([atoms], families=["nope"], soap=False)
    finally:
        FEATURE_FAMILIES.pop("charge_sign")
