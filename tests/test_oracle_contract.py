"""Every oracle backend passes the same contract, and reproduces known values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.eos import EquationOfState
from test_oracle_helpers import HERE

from chemgap.oracle import OracleConfig, label_one, make_calculator
from chemgap.oracle.config import TERSOFF_PARAMETER_SETS
from chemgap.oracle.testing import check_oracle_contract


def rattled(atoms: Atoms, seed: int = 1, stdev: float = 0.05) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(stdev, seed=seed)
    return atoms


# (id, config, structure, tolerances): tiny systems so the whole table runs in seconds.
CASES = [
    ("emt-Cu", OracleConfig(name="emt"), rattled(bulk("Cu", cubic=True)), {}),
    ("emt-CH4", OracleConfig(name="emt"), rattled(molecule("CH4")), {}),
    (
        "emt+d3-Cu",
        OracleConfig(name="emt", d3=True),
        rattled(bulk("Cu", cubic=True)),
        {"stress_rtol": 2e-3},
    ),
    ("sw-Si", OracleConfig(name="sw"), rattled(bulk("Si", "diamond", 5.431, cubic=True)), {}),
    ("sw-Ge", OracleConfig(name="sw"), rattled(bulk("Ge", "diamond", 5.654, cubic=True)), {}),
    (
        "tersoff-Si",
        OracleConfig(name="tersoff"),
        rattled(bulk("Si", "diamond", 5.432, cubic=True)),
        {},
    ),
    ("xtb-GFN2-H2O", OracleConfig(name="xtb"), rattled(molecule("H2O")), {}),
    (
        "xtb-GFN1-NH3",
        OracleConfig(name="xtb", params={"method": "GFN1-xTB", "charge": 0}),
        rattled(molecule("NH3")),
        {},
    ),
    (
        "pyscf-LDA-H2O",
        OracleConfig(name="pyscf", params={"xc": "LDA", "basis": "sto-3g"}),
        rattled(molecule("H2O")),
        # DFT grids (no grid response in the gradient) break exactness at the 1e-4 level.
        {"max_fd_components": 3, "force_tol": 2e-3, "energy_tol": 1e-5},
    ),
    (
        "ase-EMT-Cu",
        OracleConfig(name="ase", params={"calculator": "ase.calculators.emt:EMT"}),
        rattled(bulk("Cu", "fcc", 3.7, cubic=True), seed=2),
        {},
    ),
]


@pytest.mark.parametrize(
    ("config", "atoms", "tolerances"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_backend_passes_contract(config, atoms, tolerances):
    calc = make_calculator(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matscipy's Tersoff np.power(where=) warning
        report = check_oracle_contract(calc, atoms, rng=np.random.default_rng(0), **tolerances)
        # The rattled structures have real forces, so the finite differences are not vacuous.
        probe = atoms.copy()
        probe.calc = calc
        max_force = np.abs(probe.get_forces()).max()
    assert max_force > 1e-2
    if atoms.pbc.all():
        assert report.stress_fd_error is not None


def test_contract_catches_a_wrong_force_sign():
    class Flipped(type(make_calculator(OracleConfig(name="emt")))):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = -self.results["forces"]

    with pytest.raises(AssertionError, match="finite differences"):
        check_oracle_contract(
            Flipped(), rattled(bulk("Cu", cubic=True)), rng=np.random.default_rng(0)
        )


def test_emt_copper_lattice_constant_from_eos():
    config = OracleConfig(name="emt")
    volumes, energies = [], []
    for a in np.linspace(3.45, 3.75, 9):
        result = label_one(bulk("Cu", "fcc", a), config)
        assert result.ok
        volumes.append(result.atoms.get_volume())
        energies.append(result.energy)
    v0, _, _ = EquationOfState(volumes, energies).fit()
    a0 = (4 * v0) ** (1 / 3)  # primitive fcc cell holds a quarter of the cubic cell
    assert abs(a0 - 3.59) / 3.59 < 0.01


def test_sw_silicon_cohesive_energy():
    result = label_one(bulk("Si", "diamond", 5.431), OracleConfig(name="sw"))
    assert result.energy / 2 == pytest.approx(-4.3366, abs=1e-4)
    assert np.abs(result.stress).max() < 1e-4  # 5.431 Å is SW's equilibrium


def test_sw_germanium_cohesive_energy_ding_andersen():
    # -2 epsilon = -3.86 eV/atom at the equilibrium a = 5.431 Å x 2.181/2.0951.
    result = label_one(bulk("Ge", "diamond", 5.431 * 2.181 / 2.0951), OracleConfig(name="sw"))
    assert result.energy / 2 == pytest.approx(-3.86, abs=1e-3)


def test_tersoff_silicon_cohesive_energy():
    # Tersoff (1989) Si: cohesive energy 4.63 eV/atom at a = 5.432 Å.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = label_one(bulk("Si", "diamond", 5.432), OracleConfig(name="tersoff"))
    assert result.energy / 2 == pytest.approx(-4.63, abs=0.01)


def test_tersoff_parameter_sets_match_matscipy():
    from matscipy.calculators.manybody.explicit_forms import tersoff_brenner

    for name, elements in TERSOFF_PARAMETER_SETS.items():
        assert set(getattr(tersoff_brenner, name)["el"]) == elements


def test_d3_adds_attraction():
    atoms = bulk("Cu", cubic=True)
    plain = label_one(atoms, OracleConfig(name="emt"))
    with_d3 = label_one(atoms, OracleConfig(name="emt", d3=True))
    assert with_d3.energy < plain.energy - 0.1  # D3(BJ) binds: several 0.1 eV per Cu atom
    assert with_d3.oracle == "emt"


def test_xtb_settings_reach_the_calculator():
    water = molecule("H2O")
    gfn2 = label_one(water, OracleConfig(name="xtb"))
    gfn1 = label_one(water, OracleConfig(name="xtb", params={"method": "GFN1-xTB"}))
    cation = label_one(water, OracleConfig(name="xtb", params={"charge": 1, "multiplicity": 2}))
    assert gfn1.energy != pytest.approx(gfn2.energy, abs=0.1)
    assert cation.energy > gfn2.energy + 5  # ionisation costs ~10 eV


def test_ase_backend_imports_from_python_path():
    config = OracleConfig(
        name="ase",
        params={
            "calculator": "test_oracle_helpers:ProgrammableCalculator",
            "python_path": [HERE],
        },
    )
    emt = label_one(bulk("Cu", cubic=True), OracleConfig(name="emt"))
    via_ase = label_one(bulk("Cu", cubic=True), config)
    assert via_ase.energy == pytest.approx(emt.energy, abs=1e-12)
