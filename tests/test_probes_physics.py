"""The probes' numbers against ASE routines run here: EOS, elastic constants, vacancy and
surface energies, vibrations (EMT Cu / CO), and NVE drift on a harmonic solid.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule, surface
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.optimize import FIRE
from ase.units import GPa
from ase.vibrations import Vibrations

from chemgap.agent.probes import ProbesConfig, ProbeSystem, run_probes
from chemgap.agent.probes.vibrations import displacements, frequencies
from chemgap.models.reference import ReferenceModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

A0 = 3.59  # near EMT Cu's equilibrium (3.5897 Å): no pre-stress between the routes


def cu() -> Atoms:
    return bulk("Cu", "fcc", a=A0, cubic=True)


def values(report, probe: str) -> dict[str, float]:
    """Label -> the oracle's value (model values equal them: the model is the oracle)."""
    return {m.label: m.oracle for m in report[probe].metrics}


@pytest.fixture(scope="module")
def emt_report():
    model = ReferenceModel(EMT, elements=["Cu"], n_members=2, r_max=4.5)
    cfg = ProbesConfig(vacancy={"sizes": [2]}, surface={"facets": [(1, 1, 1)]})
    system = ProbeSystem.from_structures([cu()])
    return run_probes(model, EMT(), system, cfg, names=["eos", "elastic", "vacancy", "surface"])


def test_eos_matches_ase_equation_of_state(emt_report):
    volumes, energies = [], []
    for s in np.linspace(0.94, 1.06, 9):
        a = cu()
        a.set_cell(a.cell * s ** (1 / 3), scale_atoms=True)
        a.calc = EMT()
        volumes.append(a.get_volume() / 4)
        energies.append(a.get_potential_energy() / 4)
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    got = values(emt_report, "eos")
    assert got["V0"] == pytest.approx(v0, rel=1e-9)
    assert got["E0"] == pytest.approx(e0, abs=1e-9)
    assert got["B0"] == pytest.approx(b / GPa, rel=1e-9)
    assert 130 < got["B0"] < 140  # EMT Cu, GPa


def _energy(atoms: Atoms, strain: np.ndarray) -> float:
    a = atoms.copy()
    a.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    a.calc = EMT()
    return a.get_potential_energy()


def test_elastic_constants_match_energy_second_derivatives(emt_report):
    """C44 and C11 − C12 from E(strain) second differences (independent of the stress route),
    B from ASE's EOS fit.
    """
    cell, h = cu(), 0.004
    vol = cell.get_volume()
    e0 = _energy(cell, np.zeros((3, 3)))
    shear = np.zeros((3, 3))
    shear[0, 1] = shear[1, 0] = h / 2  # engineering shear h: E = E0 + V C44 h² / 2
    c44 = (_energy(cell, shear) + _energy(cell, -shear) - 2 * e0) / (vol * h**2) / GPa
    ortho = np.diag([h, -h, 0.0])  # E = E0 + V (C11 − C12) h²
    c11_c12 = (_energy(cell, ortho) + _energy(cell, -ortho) - 2 * e0) / (2 * vol * h**2) / GPa
    got = values(emt_report, "elastic")
    assert got["C44"] == pytest.approx(c44, rel=2e-3)
    assert got["C11"] - got["C12"] == pytest.approx(c11_c12, rel=2e-3)
    assert got["B_voigt"] == pytest.approx(values(emt_report, "eos")["B0"], rel=0.02)
    assert got["Cij_mae"] == 0.0


def test_vacancy_and_surface_energies_match_ase_relaxations(emt_report):
    perfect = cu() * (2, 2, 2)
    perfect.calc = EMT()
    e_bulk = perfect.get_potential_energy()
    defect = perfect[1:]
    defect.calc = EMT()
    FIRE(defect, logfile=None).run(fmax=0.05, steps=200)
    e_vac = defect.get_potential_energy() - 31 / 32 * e_bulk
    assert values(emt_report, "vacancy")["E_vac N=32"] == pytest.approx(e_vac, abs=1e-9)
    assert 1.0 < e_vac < 1.4  # EMT Cu, eV
    slab = surface(cu(), (1, 1, 1), 3, vacuum=8.0, periodic=True)
    slab.pbc = (True, True, False)
    slab.calc = EMT()
    FIRE(slab, logfile=None).run(fmax=0.05, steps=200)
    unit = cu()
    unit.calc = EMT()
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    gamma = (slab.get_potential_energy() - len(slab) * unit.get_potential_energy() / 4) / (2 * area)
    assert values(emt_report, "surface")["γ(111)"] == pytest.approx(gamma, abs=1e-9)


def test_frequencies_match_ase_vibrations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    co = molecule("CO")
    co.center(vacuum=5.0)
    co.calc = EMT()
    FIRE(co, logfile=None).run(fmax=1e-4, steps=500)
    vib = Vibrations(co, delta=0.01)
    vib.run()
    ase_w = vib.get_frequencies()
    forces = []
    for a in displacements(co, 0.01):
        a.calc = EMT()
        forces.append(a.get_forces())
    ours = frequencies(co, np.array(forces), 0.01, rigid=5)
    assert len(ours) == 1
    assert ours[0] == pytest.approx(ase_w[-1].real, rel=1e-9)


class Einstein(Calculator):
    """Independent harmonic springs to fixed sites: E = ½ k Σ |r − r₀|² (no drift possible)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, sites: np.ndarray, k: float):
        super().__init__()
        self.sites, self.k = sites, k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.sites
        e = 0.5 * self.k * float((d**2).sum())
        self.results = {"energy": e, "free_energy": e, "forces": -self.k * d, "stress": np.zeros(6)}


def test_nve_drift_is_zero_for_a_harmonic_solid_and_flags_a_too_large_timestep():
    """Hydrogen on springs of 20 eV/Å²: ω ≈ 0.44 fs⁻¹, so velocity Verlet is stable below
    2/ω ≈ 4.5 fs; 0.5 fs conserves energy (ratio ~ 0) and 8 fs blows up.
    """
    crystal = bulk("H", "fcc", a=3.0, cubic=True)
    sites = (crystal * (2, 2, 2)).positions.copy()
    system = ProbeSystem.from_structures([crystal])

    def drift(dt: float):
        model = ReferenceModel(Einstein(sites, 20.0), elements=["H"], n_members=2)
        cfg = ProbesConfig(nve_drift={"timestep_fs": dt, "steps": 200, "members": False})
        report = run_probes(model, Einstein(sites, 20.0), system, cfg, names=["nve_drift"])
        return report["nve_drift"]

    good = drift(0.5)
    ratio = good.metrics[0]
    assert ratio.model < 0.05 and ratio.passed
    assert abs(good.metrics[1].model) < 1e-3  # eV/atom/ps
    bad = drift(8.0)
    assert bad.passed is False
    assert bad.metrics[0].model == np.inf
    assert any("at step" in n for n in bad.notes)
    assert bad.candidates and bad.candidates[0].info["probe"] == "nve_drift"


def test_md_stability_scores_an_explosion_like_mlipaudit():
    """NVT with the same too-large timestep: the walker explodes at step f_e of N and scores
    ½ f_e/N (MLIPAudit); the frame before the failure is proposed for labelling.
    """
    crystal = bulk("H", "fcc", a=3.0, cubic=True)
    sites = (crystal * (2, 2, 2)).positions.copy()
    model = ReferenceModel(Einstein(sites, 20.0), elements=["H"], n_members=2)
    cfg = ProbesConfig(md_stability={"timestep_fs": 8.0, "steps": 100, "temperatures_K": [300]})
    system = ProbeSystem.from_structures([crystal])
    result = run_probes(model, Einstein(sites, 20.0), system, cfg, names=["md_stability"])[
        "md_stability"
    ]
    score, time_ps = result.metrics
    assert result.passed is False and score.model < 0.5
    failed_at = round(time_ps.model * 1000 / 8.0)  # steps survived
    assert 0 < failed_at < 100 and score.model == pytest.approx(0.5 * failed_at / 100)
    assert result.candidates and result.candidates[0].info["probe"] == "md_stability"
    assert any("at step" in note for note in result.notes)
