"""Reference energies E0 from the oracle's isolated atoms: spin conventions, a run's E0 labels,
and the fall-back when an oracle cannot compute an isolated atom.
"""

from __future__ import annotations

import textwrap

import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from test_campaign import tiny_spec

from chemgap.agent.reference_energies import label_isolated_atoms, training_e0
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import parse_spec
from chemgap.oracle import OracleConfig, isolated_atom, isolated_atom_config, label_one
from chemgap.oracle.isolated import GROUND_STATE_UNPAIRED


def test_ground_state_spins_follow_hunds_rules_and_the_known_exceptions():
    """2S of the neutral atoms' ground terms (NIST ASD), main groups and the d-block
    exceptions (Cr, Cu: 4s¹; Pd: 4d¹⁰; Pt: 5d⁹6s¹).
    """
    want = {"H": 1, "He": 0, "C": 2, "N": 3, "O": 2, "F": 1, "Si": 2, "Ge": 2, "Cr": 6,
            "Mn": 5, "Fe": 4, "Ni": 2, "Cu": 1, "Pd": 0, "Ag": 1, "Pt": 2, "Au": 1, "Gd": 8,
            "Rn": 0}  # fmt: skip
    assert {el: GROUND_STATE_UNPAIRED[el] for el in want} == want
    assert len(GROUND_STATE_UNPAIRED) == 86
    with pytest.raises(ValueError, match="H to Rn"):
        isolated_atom("U")


def test_xtb_isolated_oxygen_is_computed_in_its_triplet():
    """The xtb oracle computes the isolated O atom with its two unpaired electrons
    (multiplicity 3), neutral whatever the oracle's charge: the energy tblite's own ASE
    calculator gives for that state, which differs from the closed-shell one by ~50 meV in
    GFN2-xTB (so the convention is not a no-op).
    """
    from tblite.ase import TBLite

    config = OracleConfig(name="xtb", params={"charge": -1})
    atom_config = isolated_atom_config(config, "O")
    assert atom_config.params["multiplicity"] == 3 and atom_config.params["charge"] == 0
    result = label_one(isolated_atom("O"), atom_config)
    assert result.ok
    energies = {}
    for multiplicity in (1, 3):
        atom = Atoms("O")
        atom.calc = TBLite(method="GFN2-xTB", multiplicity=multiplicity, verbosity=0)
        energies[multiplicity] = atom.get_potential_energy()
    assert result.atoms.info["REF_energy"] == pytest.approx(energies[3], abs=1e-6)
    assert abs(energies[3] - energies[1]) > 0.01
    assert isolated_atom_config(OracleConfig(name="emt"), "Cu") == OracleConfig(name="emt")


PERIODIC_ONLY = '''
from ase.calculators.emt import EMT


class PeriodicOnlyEMT(EMT):
    """EMT that refuses a structure that is not periodic in 3D, as plane-wave codes do."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if atoms is not None and not atoms.pbc.all():
            raise RuntimeError("periodic cells only")
        super().calculate(atoms, properties, system_changes or [])
'''


def test_an_oracle_that_cannot_do_isolated_atoms_falls_back_to_average(tmp_path):
    """A periodic-only ASE calculator fails the isolated atom: the failure is stored (the call
    is not repeated), the run says so in one line, and its models use least-squares E0s,
    with the reason recorded for ensemble.json.
    """
    (tmp_path / "periodic_only.py").write_text(textwrap.dedent(PERIODIC_ONLY))
    oracle = {
        "name": "ase",
        "params": {"calculator": "periodic_only:PeriodicOnlyEMT", "python_path": [str(tmp_path)]},
    }
    store = RunStore.create(tmp_path / "run", parse_spec(tiny_spec(oracle)))
    said: list[str] = []
    assert label_isolated_atoms(store, ["Cu"], say=said.append) == {}
    (row,) = store.structures(split="isolated_atom")
    assert row.info["label_status"] != "ok"
    e0 = training_e0(store, ["Cu"])
    assert e0.model.e0 == "average" and "isolated_atom_energies" not in e0.kwargs
    assert len(said) == 1 and said[0] == e0.note
    assert "could not compute the isolated atom of Cu" in e0.note and "(average)" in e0.note
    label_isolated_atoms(store, ["Cu"], say=said.append)  # nothing asked twice
    assert len(store.structures(split="isolated_atom")) == 1 and len(said) == 1


def test_a_runs_isolated_atoms_are_labelled_once_and_given_to_training(tmp_path):
    store = RunStore.create(tmp_path / "run", parse_spec(tiny_spec()))
    with pytest.raises(RuntimeError, match="no isolated-atom label for Cu"):
        training_e0(store, ["Cu"])
    said: list[str] = []
    atom = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    atom.calc = EMT()
    want = atom.get_potential_energy()
    assert label_isolated_atoms(store, ["Cu"], say=said.append) == {"Cu": pytest.approx(want)}
    assert said == [f"reference energies E0, emt's isolated atoms: Cu {want:.3f} eV"]
    e0 = training_e0(store, ["Cu"])
    assert e0.model == store.spec.model and e0.note == ""
    assert e0.kwargs["isolated_atom_energies"] == {"Cu": pytest.approx(want)}
    label_isolated_atoms(store, ["Cu"], say=said.append)
    assert len(store.structures(split="isolated_atom")) == 1 and len(said) == 1
