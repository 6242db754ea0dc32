"""MACE members with long-range terms (chemgap.models.longrange): the model contract,
charges, the −k/r tail beyond the cutoff, persistence, transfer, training and the ASE
calculator.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from mace.modules import ScaleShiftMACE

from chemgap.models import ChemgapCalculator
from chemgap.models.build import build_model, compute_stats
from chemgap.models.config import EnsembleConfig, ModelConfig
from chemgap.models.data import symbols_to_z
from chemgap.models.electrostatics import K_E, coulomb_energy
from chemgap.models.ensemble import Ensemble, train_ensemble
from chemgap.models.longrange import LongRangeMACE
from chemgap.models.testing import Tolerances, check_model_contract
from chemgap.models.transfer import refit_atomic_energies, transfer_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMALL = {
    "num_channels": 8,
    "max_L": 1,
    "num_interactions": 2,
    "r_max": 4.0,
    "radial_mlp": [16, 16],
    "e0": "average",
}


def config(long_range: str, dtype: str = "float64", **kw) -> ModelConfig:
    return ModelConfig(**SMALL, long_range=long_range, dtype=dtype, **kw)


def _fake_labels(structures: list[Atoms]) -> list[Atoms]:
    """Energies/forces only for the data statistics a member is built with."""
    rng = np.random.default_rng(0)
    out = []
    for a in structures:
        a = a.copy()
        a.info["REF_energy"] = -3.0 * len(a) + rng.normal()
        a.arrays["REF_forces"] = rng.normal(scale=0.5, size=(len(a), 3))
        out.append(a)
    return out


def members(
    structures: list[Atoms], long_range: str, k: int = 2, noise: float = 0.1, **cfg_kw
) -> Ensemble:
    """K untrained members with randomised weights (fresh readouts are near zero)."""
    cfg = config(long_range, **cfg_kw)
    z = symbols_to_z(sorted({s for a in structures for s in a.get_chemical_symbols()}))
    stats = compute_stats(_fake_labels(structures), z, cfg.r_max)
    out = []
    for seed in range(k):
        model = build_model(cfg, stats, seed=seed)
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        out.append(model)
    return Ensemble(out, model_cfg=cfg)


def nacl_structures() -> list[Atoms]:
    """A rattled primitive (non-orthogonal, 2-atom) rock-salt cell, a cation and a neutral
    cluster.
    """
    cell = bulk("NaCl", "rocksalt", a=5.64)
    cell.rattle(0.1, seed=1)
    cation = Atoms("Na2Cl", positions=[[0, 0, 0], [2.5, 0.2, 0], [4.6, 1.9, 0.4]])
    cation.info["charge"] = 1
    cluster = bulk("NaCl", "rocksalt", a=5.5, cubic=True)
    cluster.pbc, cluster.cell = False, np.zeros((3, 3))
    cluster.rattle(0.1, seed=2)
    return [cell, cation, cluster]


# --------------------------------------------------------------------------- spec and build


def test_long_range_values_in_the_spec_and_set_overrides():
    from chemgap.campaigns.spec import SpecError, parse_sections

    for value in ("none", "coulomb", "d3", "coulomb+d3"):
        assert ModelConfig(long_range=value).long_range == value
    assert ModelConfig(long_range="coulomb+d3").terms == ("coulomb", "d3")
    assert ModelConfig().terms == ()
    out = parse_sections(
        {"model": ModelConfig},
        {"model.long_range": "coulomb+d3", "model.d3_functional": "B3LYP"},
    )
    assert out["model"].long_range == "coulomb+d3"
    with pytest.raises(SpecError, match="coulomb\\+d3"):
        parse_sections({"model": ModelConfig}, {"model.long_range": "les"})
    with pytest.raises(SpecError, match="no D3\\(BJ\\) parameters"):
        parse_sections({"model": ModelConfig}, {"model.d3_functional": "nonsense"})


def test_none_stays_plain_mace_and_terms_add_to_the_same_mace_part():
    """long_range none builds exactly a ScaleShiftMACE (no extra work anywhere); with a term,
    the same seed gives the same MACE weights plus the term's own.
    """
    structures = nacl_structures()
    stats = compute_stats(_fake_labels(structures), [11, 17], 4.0)
    plain = build_model(config("none"), stats, seed=3)
    full = build_model(config("coulomb+d3"), stats, seed=3)
    assert type(plain) is ScaleShiftMACE
    assert isinstance(full, LongRangeMACE) and full.terms == ("coulomb", "d3")
    own = full.state_dict()
    for name, value in plain.state_dict().items():
        assert torch.equal(own[name], value), name
    assert any(n.startswith("charge_readout.") for n in own)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("long_range", ["coulomb+d3", "d3"])
def test_long_range_members_pass_the_model_contract(long_range, tmp_path):
    """Finite-difference forces and (periodic) stress, translation, rotation and permutation
    invariance, batched = single, charges sum to each total charge and are invariant, save ->
    load identical.
    """
    structures = nacl_structures()
    ens = members(structures, long_range)
    report = check_model_contract(
        ens, structures, load=Ensemble.load, save_dir=tmp_path, stress=True
    )
    assert report.force_fd_error < 1e-5
    assert report.stress_fd_error is not None and report.stress_fd_error < 1e-6
    assert report.reload_error == 0.0
    if "coulomb" in long_range:
        assert report.charge_sum_error < 1e-12
    else:
        assert report.charge_sum_error is None


def test_charges_sum_to_each_structures_total_charge():
    structures = [*nacl_structures(), Atoms("Cl", positions=[[0, 0, 0]])]
    structures[-1].info["charge"] = -1
    pred = members(structures, "coulomb").predict(structures)
    sums = np.bincount(pred.system_idx, weights=pred.charges_mean)
    assert sums == pytest.approx([0.0, 1.0, 0.0, -1.0], abs=1e-12)
    assert pred.charges_std.shape == pred.charges_mean.shape
    annotated = pred.annotate(structures)
    assert annotated[1].arrays["pred_charges"].sum() == pytest.approx(1.0)


def test_ion_pair_beyond_the_cutoff_follows_minus_k_over_r():
    """Na⁺/Cl⁻ pulled apart beyond r_max (4 Å): the coulomb member's energy is
    E∞ − k_e q² erf(r / 2σ) / r with its own (constant) charges ±q, the plain member's is flat.

    Members with a residual first block: in mace-torch's MACE convention (no residual, the
    default) an atom without neighbours has no features and so no learned charge — the pair
    dissociates to neutral atoms and there is no tail to test.
    """
    ref = [Atoms("NaCl", positions=[[0, 0, 0], [2.6, 0, 0]])]
    lr = members(ref, "coulomb", k=1, noise=0.3, residual_first=True)
    plain = members(ref, "none", k=1, noise=0.3, residual_first=True)
    default = members(ref, "coulomb", k=1, noise=0.3).predict([ref[0].copy()])
    lone = members(ref, "coulomb", k=1, noise=0.3).predict(
        [Atoms("NaCl", positions=[[0, 0, 0], [9.0, 0, 0]])]
    )
    assert np.abs(default.charges_mean).max() > 1e-3  # bonded: charged
    assert np.abs(lone.charges_mean).max() < 1e-12  # apart: neutral atoms
    rs = np.linspace(5.0, 12.0, 8)
    pairs = [Atoms("NaCl", positions=[[0, 0, 0], [r, 0.3 * r, -0.2 * r]]) for r in rs]
    dist = np.array([a.get_distance(0, 1) for a in pairs])
    p_lr, p_plain = lr.predict(pairs), plain.predict(pairs)
    assert np.ptp(p_plain.energy_mean) < 1e-10
    q = p_lr.charges_mean.reshape(-1, 2)
    assert np.ptp(q[:, 0]) < 1e-12 and np.allclose(q[:, 0], -q[:, 1])
    k = K_E * q[0, 0] ** 2
    assert k > 1e-3  # the test is not vacuous
    tail = p_lr.energy_mean + k * np.vectorize(math.erf)(dist / 2.0) / dist
    assert np.ptp(tail) < 1e-9
    assert np.ptp(p_lr.energy_mean) > 1e-3 * k


# --------------------------------------------------------------------------- persistence, transfer


def test_saved_members_carry_their_terms_and_reload_with_charges(tmp_path):
    structures = nacl_structures()
    ens = members(structures, "coulomb+d3")
    ens.save(tmp_path)
    meta = json.loads((tmp_path / "member_00.json").read_text())
    assert meta["model"]["long_range"] == "coulomb+d3"
    assert meta["model"]["d3_functional"] == "PBE" and meta["model"]["charge_width_A"] == 1.0
    again = Ensemble.load(tmp_path)
    assert all(isinstance(m, LongRangeMACE) for m in again.members)
    a, b = ens.predict(structures), again.predict(structures)
    assert np.array_equal(a.charges_mean, b.charges_mean)
    assert np.array_equal(a.energy_members, b.energy_members)
    descriptors = again.descriptors(structures)
    assert descriptors.shape[0] == len(structures)


def test_transfer_initialisation_keeps_the_terms_and_the_charge_readout():
    structures = nacl_structures()
    ens = members(structures, "coulomb")
    target = transfer_model(ens.members[0], ens.model_cfg, "Na=K")
    assert isinstance(target, LongRangeMACE) and target.terms == ("coulomb",)
    src = ens.members[0].charge_readout.state_dict()
    for name, value in target.charge_readout.state_dict().items():
        assert torch.equal(value, src[name])
    potassium = Atoms("KCl", positions=[[0, 0, 0], [3.0, 0, 0]])
    pred = Ensemble([target], model_cfg=ens.model_cfg).predict([potassium])
    assert pred.charges_mean.sum() == pytest.approx(0.0, abs=1e-12)
    potassium.info["REF_energy"] = float(pred.energy_mean[0]) - 1.0
    delta = refit_atomic_energies(target, [potassium])  # runs the member without forces
    assert delta.sum() == pytest.approx(-1.0)


def test_chemgap_calculator_loads_plain_and_long_range_member_files(tmp_path):
    structures = nacl_structures()
    for kind in ("none", "coulomb"):
        ens = members(structures, kind)
        out = ens.save(tmp_path / kind)
        files = sorted(out.glob("member_*.model"))
        calc = ChemgapCalculator([str(f) for f in files])
        atoms = structures[0].copy()
        atoms.calc = calc
        pred = ens.predict([structures[0]], compute_stress=True)
        assert atoms.get_potential_energy() == pytest.approx(pred.energy_mean[0], abs=1e-10)
        assert np.allclose(atoms.get_forces(), pred.forces_mean, atol=1e-10)
        assert np.allclose(atoms.get_stress(), pred.stress_mean[0], atol=1e-12)
        if kind == "coulomb":
            assert np.allclose(atoms.get_charges(), pred.charges_mean)
        assert calc.results["member_energies"].shape == (2,)


# --------------------------------------------------------------------------- training


def _labelled(atoms: Atoms) -> Atoms:
    """The test's oracle: fixed ±1 Gaussian charges (σ = 1 Å, Na⁺, Cl⁻) plus Born–Mayer
    repulsion 2750 eV exp(−r / 0.3 Å) between all pairs within 5 Å; energy, forces, stress.
    """
    from ase.stress import full_3x3_to_voigt_6_stress
    from matscipy.neighbours import neighbour_list

    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    eps = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    cell0 = torch.tensor(atoms.cell[:], dtype=torch.float64)
    p, cell = pos + pos @ eps, cell0 + cell0 @ eps
    q = torch.tensor(np.where(atoms.numbers == 11, 1.0, -1.0), dtype=torch.float64)
    energy = coulomb_energy(q, p, cell, atoms.pbc, width=1.0).sum()
    if any(atoms.pbc):
        i, j, shift = neighbour_list("ijS", atoms, 5.0)
        vec = p[j] - p[i] + torch.tensor(shift, dtype=torch.float64) @ cell
        half = 0.5
    else:
        i, j = np.triu_indices(len(atoms), 1)
        vec, half = p[j] - p[i], 1.0
    energy = energy + half * (2750.0 * torch.exp(-vec.norm(dim=1) / 0.3)).sum()
    g_pos, g_eps = torch.autograd.grad(energy, [pos, eps])
    atoms.info["REF_energy"] = float(energy.detach())
    atoms.arrays["REF_forces"] = -g_pos.numpy()
    if all(atoms.pbc):
        atoms.info["REF_stress"] = full_3x3_to_voigt_6_stress(g_eps.numpy() / atoms.get_volume())
    return atoms


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def nacl_dataset(seed: int) -> list[Atoms]:
    """Labelled ion pairs (some beyond r_max), charged triatomics (a bound pair and a distant
    Na⁺ or Cl⁻: the data that fix the sign of the charges, see ``ChargeReadout``), rattled
    Na4Cl4 clusters and periodic rock-salt cells.
    """
    rng = np.random.default_rng(seed)
    out = [
        Atoms("NaCl", positions=[np.zeros(3), rng.uniform(2.2, 8.0) * _unit(rng)]) for _ in range(4)
    ]
    for k in range(20):
        bond = rng.uniform(2.3, 2.8) * _unit(rng)
        ion, charge = ("Na", 1) if k % 2 == 0 else ("Cl", -1)
        extra = bond / 2 + rng.uniform(3.5, 8.0) * _unit(rng)
        triatomic = Atoms("NaCl" + ion, positions=[np.zeros(3), bond, extra])
        triatomic.info["charge"] = charge
        out.append(triatomic)
    for _ in range(6):
        cluster = bulk("NaCl", "rocksalt", a=rng.uniform(5.2, 5.8), cubic=True)
        cluster.pbc, cluster.cell = False, np.zeros((3, 3))
        cluster.rattle(0.1, seed=int(rng.integers(1 << 30)))
        out.append(cluster)
    for _ in range(4):
        cell = bulk("NaCl", "rocksalt", a=rng.uniform(5.4, 5.9), cubic=True)
        cell.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(cell)
    return [_labelled(a) for a in out]


@pytest.mark.slow
def test_trained_coulomb_members_learn_signed_charges_and_run_md(tmp_path):
    """Two coulomb members trained on energies, forces and stress of the fixed-charge oracle:
    Na positive and Cl negative on rock salt; calibration and descriptors run; the model
    directory loads in ChemgapCalculator and ase's velocity Verlet runs 100 steps.
    """
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    train, valid = nacl_dataset(0), nacl_dataset(1)[::3]
    ens_cfg = EnsembleConfig(
        members=2, max_epochs=30, batch_size=8, lr=1e-2, patience=100, stress_weight=1.0
    )
    # a residual first block: with the MACE convention's (none) these 30 epochs learn charges
    # of only ~0.04 e (measured; the charges come from neighbour features alone)
    cfg = config("coulomb", "float32", residual_first=True)
    ens = train_ensemble(train, cfg, ens_cfg, tmp_path / "m", valid=valid)
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cluster = crystal.copy()
    cluster.pbc = False
    pred = ens.predict([crystal, cluster])
    na = pred.numbers == 11
    assert (pred.charges_mean[na] > 0.3).all() and (pred.charges_mean[~na] < -0.3).all()
    cal = ens.calibrate(valid)
    assert cal.energy_scale > 0
    assert ens.descriptors([crystal]).shape[0] == 1
    rattled = crystal.copy()
    rattled.rattle(0.05, seed=3)
    report = check_model_contract(
        ens, [rattled, cluster], tolerances=Tolerances.for_dtype("float32"), stress=True
    )
    assert report.charge_sum_error < 1e-5

    atoms = cluster.copy()
    atoms.rattle(0.05, seed=0)
    atoms.calc = ChemgapCalculator(tmp_path / "m")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(100)
    assert np.isfinite(atoms.positions).all()
    assert abs(atoms.get_total_energy() - e0) < 0.5  # eV over 100 fs: no blow-up
    charges = atoms.get_charges()
    assert (charges[atoms.numbers == 11] > 0).all() and (charges[atoms.numbers == 17] < 0).all()
