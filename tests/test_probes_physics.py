"""The probes' numbers against ASE routines run here: each row's relaxed lattice, EOS, elastic
constants, vacancy and surface energies (EMT Cu; a Morse model whose minimum is elsewhere),
vibrations (EMT CO), and NVE drift on a harmonic solid.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule, surface
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential
from ase.eos import EquationOfState
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from ase.units import GPa
from ase.vibrations import Vibrations

from chemgap.agent.probes import ProbesConfig, ProbeSystem, run_probes
from chemgap.agent.probes.eos import fit
from chemgap.agent.probes.potentials import Potentials
from chemgap.agent.probes.relax import relax_lattice
from chemgap.agent.probes.vibrations import displacements, frequencies
from chemgap.models.reference import ReferenceModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

A0 = 3.59  # the system's lattice constant, near EMT Cu's equilibrium (3.5898 Å)
SHIFTED_R0 = 2.946  # Å: a Girifalco-Weizer-like Morse Cu whose fcc lattice is 3.72 Å


def cu(a: float = A0) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True)


def morse(r0: float = SHIFTED_R0) -> MorsePotential:
    """A Morse Cu (L. A. Girifalco and V. G. Weizer, Phys. Rev. 114, 687 (1959): D = 0.3429 eV,
    α r0 = 3.894) with its pair minimum moved to ``r0``: a model whose lattice is not EMT's.
    """
    return MorsePotential(epsilon=0.3429, r0=r0, rho0=3.894)


def ase_relaxed(calc) -> Atoms:
    """The Cu cell relaxed by ASE (``FrechetCellFilter`` + BFGS, cell and atoms) with ``calc``."""
    a = cu()
    a.calc = calc
    BFGS(FrechetCellFilter(a), logfile=None).run(fmax=1e-6, steps=500)
    a.calc = None
    return a


def ase_eos(cell: Atoms, calc) -> tuple[float, float, float]:
    """ASE's Birch–Murnaghan V0 (Å³/atom), E0 (eV/atom), B0 (GPa) on 9 volumes ±6 % of ``cell``."""
    volumes, energies = [], []
    for s in np.linspace(0.94, 1.06, 9):
        a = cell.copy()
        a.set_cell(cell.cell[:] * s ** (1 / 3), scale_atoms=True)
        a.calc = calc
        volumes.append(a.get_volume() / len(a))
        energies.append(a.get_potential_energy() / len(a))
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return v0, e0, b / GPa


def ase_stiffness(cell: Atoms, calc, eps: float = 0.005) -> np.ndarray:
    """C_ij (GPa) of ``cell`` by central differences of ASE's stress over ± each Voigt strain."""
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    c = np.zeros((6, 6))
    for j, (p, q) in enumerate(pairs):
        sig = []
        for sign in (1.0, -1.0):
            e = np.zeros((3, 3))
            e[p, q] = e[q, p] = sign * eps * (1.0 if p == q else 0.5)
            a = cell.copy()
            a.set_cell(cell.cell[:] @ (np.eye(3) + e), scale_atoms=True)
            a.calc = calc
            sig.append(a.get_stress())
        c[:, j] = (sig[0] - sig[1]) / (2 * eps) / GPa
    return 0.5 * (c + c.T)


def values(report, probe: str) -> dict[str, float]:
    """Label -> the oracle's value (model values equal them: the model is the oracle)."""
    return {m.label: m.oracle for m in report[probe].metrics}


@pytest.fixture(scope="module")
def emt_report():
    model = ReferenceModel(EMT, elements=["Cu"], n_members=2, r_max=4.5)
    cfg = ProbesConfig(vacancy={"sizes": [2]}, surface={"facets": [(1, 1, 1)]})
    system = ProbeSystem.from_structures([cu()])
    return run_probes(model, EMT(), system, cfg, names=["eos", "elastic", "vacancy", "surface"])


def test_each_rows_lattice_is_where_ase_relaxes_the_cell():
    """The batched isotropic search ends where ASE's cell relaxation does, for the oracle (EMT)
    and a model (Morse) whose lattice is 3.6 % longer, starting from the system's 3.59 Å.
    """
    model = ReferenceModel(morse(), elements=["Cu"], n_members=2, r_max=4.5)
    lattice = relax_lattice(Potentials(model, EMT()), cu())
    assert lattice.found.all() and lattice.converged.all()
    assert lattice.reasons == [None] * 4
    a_morse, a_emt = (ase_relaxed(c).cell.lengths()[0] for c in (morse(), EMT()))
    assert A0 * lattice.scale[:3] == pytest.approx([a_morse] * 3, rel=1e-6)
    assert A0 * lattice.scale[3] == pytest.approx(a_emt, rel=1e-6)
    assert a_morse == pytest.approx(3.72, abs=0.01) and a_emt == pytest.approx(3.5898, abs=1e-4)
    assert lattice.evaluations.max() <= 30  # a handful of batched rounds


def test_eos_matches_ase_equation_of_state_at_the_relaxed_volume(emt_report):
    v0, e0, b0 = ase_eos(ase_relaxed(EMT()), EMT())
    got = values(emt_report, "eos")
    assert got["V0"] == pytest.approx(v0, rel=1e-7)
    assert got["E0"] == pytest.approx(e0, abs=1e-9)
    assert got["B0"] == pytest.approx(b0, rel=1e-5)
    assert 130 < got["B0"] < 140  # EMT Cu, GPa


def _energy(atoms: Atoms, strain: np.ndarray) -> float:
    a = atoms.copy()
    a.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    a.calc = EMT()
    return a.get_potential_energy()


def test_elastic_constants_match_energy_second_derivatives(emt_report):
    """C44 and C11 − C12 from E(strain) second differences at ASE's relaxed cell (independent
    of the stress route), B from ASE's EOS fit.
    """
    cell, h = ase_relaxed(EMT()), 0.004
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
    e_cut = defect.get_potential_energy()
    FIRE(defect, logfile=None).run(fmax=0.05, steps=200)
    e_vac = defect.get_potential_energy() - 31 / 32 * e_bulk
    vacancy = values(emt_report, "vacancy")
    assert vacancy["E_vac N=32"] == pytest.approx(e_vac, abs=1e-9)
    assert vacancy["E_vac unrelaxed N=32"] == pytest.approx(e_cut - 31 / 32 * e_bulk, abs=1e-9)
    assert 1.0 < e_vac < vacancy["E_vac unrelaxed N=32"] < 1.4  # EMT Cu, eV: relaxing lowers it
    slab = surface(cu(), (1, 1, 1), 3, vacuum=8.0, periodic=True)
    slab.pbc = (True, True, False)
    slab.calc = EMT()
    e_slab_cut = slab.get_potential_energy()
    FIRE(slab, logfile=None).run(fmax=0.05, steps=200)
    unit = cu()
    unit.calc = EMT()
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    e_unit = len(slab) * unit.get_potential_energy() / 4
    gamma = (slab.get_potential_energy() - e_unit) / (2 * area)
    surf = values(emt_report, "surface")
    assert surf["γ(111)"] == pytest.approx(gamma, abs=1e-9)
    assert surf["γ unrelaxed (111)"] == pytest.approx((e_slab_cut - e_unit) / (2 * area), abs=1e-9)
    assert surf["γ unrelaxed (111)"] >= gamma  # EMT (111): forces already below fmax
    for probe, label in (
        ("vacancy", "E error defect N=32"),
        ("surface", "E error slab (111)"),
    ):
        (error,) = [m for m in emt_report[probe].metrics if m.label == label]
        assert error.unit == "meV/atom" and error.oracle is None and error.bound is None
        assert error.model == 0.0 and error.members == [0.0, 0.0]  # the model is the oracle


@pytest.fixture(scope="module")
def shifted_report():
    """A Morse model (lattice 3.72 Å) against the EMT oracle (3.59 Å) on the 3.59 Å system."""
    model = ReferenceModel(morse(), elements=["Cu"], n_members=2, r_max=4.5)
    cfg = ProbesConfig(vacancy={"sizes": [2]}, surface={"facets": [(1, 1, 1)]})
    system = ProbeSystem.from_structures([cu()])
    names = ["eos", "elastic", "vacancy", "surface"]
    return run_probes(model, EMT(), system, cfg, names=names)


def metric(report, probe: str, label: str):
    (m,) = [m for m in report[probe].metrics if m.label == label]
    return m


def test_eos_of_a_shifted_model_is_fitted_around_its_own_minimum(shifted_report):
    """The Morse model's V0 (12.87 Å³/atom) lies beyond the system's ±6 % grid (top 12.26):
    fitted there, ASE extrapolates; the probe samples around the model's own volume and
    matches ASE's fit on a grid around ASE's relaxed cell. The oracle's row is EMT's.
    """
    v0, e0, b0 = ase_eos(ase_relaxed(morse()), morse())
    for label, value, rel in (("V0", v0, 1e-7), ("E0", e0, 1e-9), ("B0", b0, 1e-5)):
        m = metric(shifted_report, "eos", label)
        assert m.model == pytest.approx(value, rel=rel), label
        assert m.members == pytest.approx([value] * 2, rel=rel)
    assert v0 > 1.06 * cu().get_volume() / 4
    assert metric(shifted_report, "eos", "V0").oracle == pytest.approx(
        ase_eos(ase_relaxed(EMT()), EMT())[0], rel=1e-7
    )
    v = metric(shifted_report, "eos", "V0")
    assert v.judged == pytest.approx(v0 / v.oracle - 1) and v.score == pytest.approx(
        1 - v.judged / 0.15
    )
    assert v.passed is False  # 11 % too large: scores 0.25
    (curve,) = shifted_report["eos"].payload["curves"]
    assert min(curve["x"]) < v0 < max(curve["x"])
    assert (
        min(curve["oracle_x"]) < metric(shifted_report, "eos", "V0").oracle < max(curve["oracle_x"])
    )
    assert curve["members_x"] == [curve["x"]] * 2 and curve["x"] != curve["oracle_x"]


def test_elastic_constants_of_a_shifted_model_are_ases_at_its_own_lattice(shifted_report):
    """The model's C_ij equal ASE's stress–strain constants at the model's relaxed cell, the
    oracle's EMT's at EMT's; at the system's (EMT's) lattice the Morse model is under 17 GPa
    of pressure and its constants differ by tens of GPa — what the probe reported before.
    """
    own = ase_stiffness(ase_relaxed(morse()), morse())
    for label, entry in (("C11", (0, 0)), ("C12", (0, 1)), ("C44", (3, 3))):
        m = metric(shifted_report, "elastic", label)
        assert m.model == pytest.approx(own[entry], rel=1e-5), label
        assert m.members == pytest.approx([own[entry]] * 2, rel=1e-5)
    emt = ase_stiffness(ase_relaxed(EMT()), EMT())
    assert metric(shifted_report, "elastic", "C11").oracle == pytest.approx(emt[0, 0], rel=1e-5)
    loaded = cu()
    loaded.calc = morse()
    assert -loaded.get_stress()[:3].mean() / GPa > 15  # compressed: its own cell is longer
    at_system = ase_stiffness(cu(), morse())
    assert np.abs(at_system - own).max() > 20
    assert not any("residual stress" in note for note in shifted_report["elastic"].notes)


def test_defect_and_slab_energy_errors_are_the_rows_energy_differences(shifted_report):
    """Each row's energy error on the unrelaxed defect cell and slab is E_model − E_oracle of
    that structure per atom (meV/atom), beside the relaxed and unrelaxed formation energies.
    """
    defect = (cu() * (2, 2, 2))[1:]
    slab = surface(cu(), (1, 1, 1), 3, vacuum=8.0, periodic=True)
    slab.pbc = (True, True, False)
    for probe, label, atoms in (
        ("vacancy", "E error defect N=32", defect),
        ("surface", "E error slab (111)", slab),
    ):
        energies = []
        for calc in (morse(), EMT()):
            a = atoms.copy()
            a.calc = calc
            energies.append(a.get_potential_energy())
        expected = (energies[0] - energies[1]) / len(atoms) * 1000
        m = metric(shifted_report, probe, label)
        assert m.model == pytest.approx(expected, rel=1e-9)
        assert m.members == pytest.approx([expected] * 2, rel=1e-9)
        assert abs(expected) > 100  # the Morse model is far off EMT's energies
    vac = metric(shifted_report, "vacancy", "E_vac unrelaxed N=32")
    assert vac.bound is None and vac.passed is None and vac.oracle is not None


def test_an_eos_whose_minimum_leaves_the_grid_fails_with_its_reason():
    """A Morse model whose lattice (5.05 Å) lies beyond the lattice search's limit (1.25 ×
    3.59 Å): its grid ends below its minimum, so V0, E0 and B0 are NaN (never ASE's
    extrapolation), the metrics fail, and the notes say why for each row.
    """
    model = ReferenceModel(morse(4.0), elements=["Cu"], n_members=2, r_max=4.5)
    system = ProbeSystem.from_structures([cu()])
    report = run_probes(model, EMT(), system, ProbesConfig(), names=["eos", "elastic"])
    eos, elastic = report["eos"], report["elastic"]
    assert eos.error is None and eos.passed is False
    for label in ("V0", "E0", "B0"):
        m = metric(report, "eos", label)
        assert np.isnan(m.model) and np.isnan(m.members).all() and m.score == 0.0
        assert np.isfinite(m.oracle)
    notes = "\n".join(eos.notes)
    assert "mean: no energy minimum for lattice scales 0.8–1.25" in notes
    assert "(lowest at the upper end)" in notes
    for row in ("member 0", "member 1", "mean"):
        assert f"{row}: minimum beyond the grid (V0 " in notes
    assert "oracle:" not in notes
    assert np.isnan(metric(report, "elastic", "C11").model) and elastic.passed is False
    assert "mean: no C_ij (no equilibrium lattice)" in elastic.notes


def test_fit_refuses_a_minimum_outside_the_samples():
    """The same curve ASE's fit extrapolates from: E(V) of the shifted Morse model sampled on
    the system's ±6 % grid (its minimum lies above the top volume), and a concave curve.
    """
    volumes, energies = [], []
    for s in np.linspace(0.94, 1.06, 9):
        a = cu()
        a.set_cell(a.cell * s ** (1 / 3), scale_atoms=True)
        a.calc = morse()
        volumes.append(a.get_volume() / 4)
        energies.append(a.get_potential_energy() / 4)
    v0_ase = EquationOfState(volumes, energies, eos="birchmurnaghan").fit(warn=False)[0]
    assert v0_ase > max(volumes)  # ASE returns the extrapolation
    v0, e0, b0, why = fit(np.array(volumes), np.array(energies))
    assert np.isnan([v0, e0, b0]).all()
    assert why == f"minimum beyond the grid (V0 {v0_ase:.4g} > {max(volumes):.4g} Å³/atom)"
    v = np.linspace(10.0, 12.0, 9)
    assert fit(v, -((v - 11.0) ** 2))[3].startswith(("no minimum", "fit failed"))
    assert fit(v, (v - 11.0) ** 2)[3] is None


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
