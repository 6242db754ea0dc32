"""Seed-structure generators: the right atoms, geometry and provenance, reproducibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from ase.neighborlist import neighbor_list

from chemgap.agent.seeds import generate_seeds
from chemgap.campaigns.spec import SystemConfig, load_spec


def system(*seeds: dict) -> SystemConfig:
    return SystemConfig.model_validate({"seeds": list(seeds)})


def gen(*seeds: dict, seed: int = 0, base: Path = Path(".")):
    return generate_seeds(system(*seeds), np.random.default_rng(seed), base)


def coordination(atoms, cutoff=3.0):
    i = neighbor_list("i", atoms, cutoff)
    return np.bincount(i, minlength=len(atoms))


def test_bulk_supercell_is_perfect_fcc():
    (cu,) = gen(
        {
            "kind": "bulk",
            "formula": "Cu",
            "crystal": "fcc",
            "a": 3.6,
            "cubic": True,
            "supercell": [2, 2, 2],
        }
    )
    assert len(cu) == 32 and cu.pbc.all()
    assert cu.get_volume() == pytest.approx(8 * 3.6**3)
    assert set(coordination(cu)) == {12}
    assert cu.info["source"] == "seed" and cu.info["seed_kind"] == "bulk"


def test_vacancies_remove_atoms_and_undercoordinate_neighbours():
    structures = gen(
        {
            "kind": "vacancy",
            "formula": "Cu",
            "crystal": "fcc",
            "a": 3.6,
            "cubic": True,
            "supercell": [2, 2, 2],
            "vacancies": 2,
            "count": 3,
        }
    )
    for atoms in structures:
        assert len(atoms) == 30
        cn = coordination(atoms)
        assert cn.max() == 12 and cn.min() in (10, 11)
    with pytest.raises(ValueError, match=r"system\.seeds\.0: vacancies"):
        gen({"kind": "vacancy", "formula": "Cu", "crystal": "fcc", "vacancies": 1})


def test_surface_slab_has_vacuum_and_9_coordinated_top_layer():
    (slab,) = gen(
        {
            "kind": "surface",
            "formula": "Cu",
            "crystal": "fcc",
            "a": 3.6,
            "miller": [1, 1, 1],
            "layers": 4,
            "size": [2, 2],
            "vacuum_A": 7.0,
        }
    )
    assert len(slab) == 16 and list(slab.pbc) == [True, True, False]
    z = slab.positions[:, 2]
    assert slab.cell[2, 2] - (z.max() - z.min()) == pytest.approx(14.0, abs=1e-6)
    cn = coordination(slab)
    assert sorted(set(cn)) == [9, 12]  # fcc(111) surface atoms have 9 neighbours


def test_neutral_rocksalt_cluster_and_dimers():
    (cluster,) = gen(
        {
            "kind": "cluster",
            "formula": "NaCl",
            "crystal": "rocksalt",
            "a": 5.64,
            "cubic": True,
            "radius_A": 2.5,
            "offset_A": [1.41, 1.41, 1.41],
        }
    )
    assert cluster.get_chemical_formula() == "Cl4Na4" and not cluster.pbc.any()
    dimers = gen({"kind": "dimer", "symbols": ["Na", "Cl"], "distances_A": [2.4, 6.0]})
    assert [round(d.get_distance(0, 1), 6) for d in dimers] == [2.4, 6.0]


def test_molecules_from_smiles_have_sensible_bonds():
    mols = gen({"kind": "molecule", "smiles": "CC(=O)O", "count": 2})
    for mol in mols:
        assert mol.get_chemical_formula() == "C2H4O2"
        d = mol.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert 0.9 < d.min() < 1.2  # X-H bonds
        assert mol.info["smiles"] == "CC(=O)O" and mol.info["charge"] == 0
    (ethanol,) = gen({"kind": "molecule", "name": "CH3CH2OH"})
    assert len(ethanol) == 9


def test_file_seed_reads_any_ase_format(tmp_path):
    write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.43))
    (si,) = gen({"kind": "file", "path": "si.cif"}, base=tmp_path)
    assert si.get_chemical_formula() == "Si2" and si.info["seed_kind"] == "file"


def test_strain_and_rattle_are_seeded():
    entry = {
        "kind": "bulk",
        "formula": "Cu",
        "crystal": "fcc",
        "cubic": True,
        "count": 2,
        "strain": 0.03,
        "rattle_A": 0.05,
    }
    a, b = gen(entry, seed=1)
    a2, _ = gen(entry, seed=1)
    np.testing.assert_array_equal(a.positions, a2.positions)
    assert not np.allclose(a.cell, b.cell)
    ratio = np.linalg.eigvalsh(a.cell.T @ a.cell) ** 0.5 / bulk("Cu", cubic=True).cell[0, 0]
    assert np.all(np.abs(ratio - 1) < 0.07)


def test_every_builtin_campaign_generates_its_seeds():
    for name in ["cu-defects", "si-ge-transfer", "organics-xtb", "ionic-longrange"]:
        spec = load_spec(name)
        structures = generate_seeds(spec.system, np.random.default_rng(spec.seed), Path("."))
        assert len(structures) >= spec.system.initial_labels
        assert {s for a in structures for s in a.get_chemical_symbols()} == spec.elements()
