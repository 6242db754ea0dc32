"""The campaign's fixed test set: every seed kind, ID/OOD marked, deterministic, files as given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from chemgap.agent.errors import BadInput
from chemgap.agent.testset import draw_test_set, read_test_file, seed_labels
from chemgap.campaigns.spec import parse_spec


def spec(**test_set):
    return parse_spec(
        {
            "name": "t",
            "system": {
                "seeds": [
                    {"kind": "bulk", "formula": "Cu", "crystal": "fcc", "cubic": True, "count": 3},
                    {
                        "kind": "vacancy",
                        "formula": "Cu",
                        "crystal": "fcc",
                        "cubic": True,
                        "supercell": [2, 1, 1],
                        "count": 2,
                        "initial": False,
                    },
                ],
                "initial_labels": 3,
            },
            "oracle": {"name": "emt"},
            "exploration": {"temperatures_K": [300, 900]},
            "test_set": test_set,
        }
    )


def draw(s, key=9):
    return draw_test_set(s, np.random.default_rng([0, key]), Path.cwd())


def test_every_seed_kind_is_drawn_and_marked_in_or_out_of_distribution():
    test = draw(spec(per_kind=3))
    assert [a.info["test_kind"] for a in test] == ["bulk"] * 3 + ["vacancy"] * 3
    assert [a.info["in_distribution"] for a in test] == [True] * 3 + [False] * 3
    assert [a.info["temperature_K"] for a in test] == [300.0, 900.0, 300.0] * 2
    assert all(a.info["split"] == "test" and a.calc is None for a in test)
    assert len(test[3]) == 7  # a vacancy in a 2x1x1 cubic cell: 8 - 1 atoms


def test_rattle_scales_with_temperature_and_is_reproducible():
    s = spec(per_kind=40, rattle_A=0.05, strain=0.0)
    a, b = draw(s), draw(s)
    np.testing.assert_array_equal(a[0].positions, b[0].positions)  # same stream, same set
    ref = bulk("Cu", "fcc", cubic=True).positions
    disp = {t: [] for t in (300.0, 900.0)}
    for atoms in a[:40]:
        disp[atoms.info["temperature_K"]].append(atoms.positions - ref)
    std = {t: float(np.std(np.concatenate(d))) for t, d in disp.items()}
    assert std[300.0] == pytest.approx(0.05, rel=0.15)
    assert std[900.0] / std[300.0] == pytest.approx(np.sqrt(3), rel=0.15)


def test_md_method_samples_the_oracle_at_temperature():
    test = draw(spec(per_kind=2, method="md", md_steps=30, temperatures_K=[600]))
    ref = bulk("Cu", "fcc", cubic=True)
    moved = np.linalg.norm(test[0].positions - ref.positions, axis=1)
    assert 0.01 < moved.mean() < 0.5  # thermal motion, not an explosion
    assert test[0].calc is None and "REF_energy" not in test[0].info


def test_seed_labels_tell_entries_of_one_kind_apart():
    s = parse_spec(
        {
            "name": "t",
            "system": {
                "seeds": [
                    {"kind": "bulk", "formula": "Si", "crystal": "diamond", "a": 5.43},
                    {"kind": "bulk", "formula": "Ge", "crystal": "diamond", "a": 5.66},
                    {"kind": "bulk", "formula": "Ge", "crystal": "diamond", "a": 5.7},
                ],
            },
            "oracle": {"name": "sw"},
        }
    )
    assert seed_labels(s) == ["bulk Si", "bulk Ge #1", "bulk Ge #2"]
    surfaces = parse_spec(
        {
            "name": "t",
            "system": {
                "seeds": [
                    {"kind": "surface", "formula": "Cu", "crystal": "fcc", "miller": m, "count": 4}
                    for m in ([1, 1, 1], [1, 1, 0])
                ],
            },
            "oracle": {"name": "emt"},
        }
    )
    assert seed_labels(surfaces) == ["surface (111)", "surface (110)"]


def test_a_labelled_file_is_used_as_given(tmp_path):
    cells = []
    for i, kind in enumerate(["bulk", "surface"]):
        a = bulk("Cu", "fcc", cubic=True)
        a.rattle(0.05, seed=i)
        a.calc = EMT()
        a.get_forces()
        a.info["config_type"] = kind
        cells.append(a)
    write(tmp_path / "t.extxyz", cells)
    s = spec(file=str(tmp_path / "t.extxyz"))
    test = read_test_file(s)
    assert [a.info["test_kind"] for a in test] == ["bulk", "surface"]
    assert [a.info["in_distribution"] for a in test] == [True, False]
    e = cells[1].get_potential_energy()
    assert test[1].info["REF_energy"] == pytest.approx(e, abs=1e-9)
    bare = bulk("Cu", "fcc", cubic=True)
    write(tmp_path / "bare.extxyz", [bare])
    with pytest.raises(BadInput, match="carry no energy and forces"):
        read_test_file(spec(file=str(tmp_path / "bare.extxyz")))
