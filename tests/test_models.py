"""MACE ensembles: physics contracts, persistence, uncertainty, calibration, transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from chemgap.models.build import DataStats, build_model, compute_stats
from chemgap.models.config import EnsembleConfig, EnsembleMode, ModelConfig
from chemgap.models.data import data_hash, element_list, symbols_to_z
from chemgap.models.ensemble import Ensemble, plan_jobs, train_ensemble
from chemgap.models.testing import Tolerances, check_model_contract
from chemgap.models.train import freeze_blocks, train_member
from chemgap.models.transfer import parse_element_map, transfer_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# E0 by least squares: these tests train without an oracle (isolated E0s: test_isolated_e0_*)
SMALL = ModelConfig(
    num_channels=8, max_L=1, num_interactions=2, r_max=4.0, radial_mlp=[16, 16], e0="average"
)


def label(atoms: Atoms, calc) -> Atoms:
    """Attach REF_* labels from ``calc`` and detach it (stored data carry no calculator)."""
    atoms.calc = calc
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = None
    atoms.info["REF_energy"] = float(e)
    atoms.arrays["REF_forces"] = np.array(f)
    atoms.info["REF_stress"] = np.array(s)
    return atoms


def cu_cells(n: int, seed: int, *, rattle: float = 0.05, strain: float = 0.0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat((2, 1, 1))
        a.set_cell(a.cell * (1 + strain), scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(2**31)))
        out.append(label(a, EMT()))
    return out


@pytest.fixture(scope="module")
def cu_data():
    return {
        "train": cu_cells(24, 0),
        "test": cu_cells(8, 1),
        "ood": cu_cells(8, 2, rattle=0.2, strain=0.07),
    }


@pytest.fixture(scope="module")
def cu_ensemble(cu_data, tmp_path_factory):
    """Three deep-ensemble members, trained once in-process for the whole module."""
    cfg = EnsembleConfig(members=3, max_epochs=12, batch_size=6, lr=1e-2, patience=50)
    out = tmp_path_factory.mktemp("cu_ens")
    return train_ensemble(cu_data["train"], SMALL, cfg, out, seed=0)


# ---------------------------------------------------------------- physics contracts


def test_trained_ensemble_passes_the_model_contract(cu_ensemble, cu_data):
    """The contract (tests/test_model_contract.py runs it in float64 on untrained members) on a
    trained float32 ensemble: finite-difference forces, rotation and permutation invariance,
    batched = single.
    """
    report = check_model_contract(
        cu_ensemble, cu_data["test"][:3], tolerances=Tolerances.for_dtype("float32")
    )
    assert report.rotation_force_error < 2e-4


# ---------------------------------------------------------------- persistence


def test_save_load_gives_identical_predictions(cu_ensemble, cu_data):
    path = cu_ensemble.path
    assert sorted(p.name for p in path.glob("member_*.model")) == [
        f"member_0{k}.model" for k in range(3)
    ]
    meta = json.loads((path / "ensemble.json").read_text())
    assert meta["elements"] == ["Cu"]
    assert meta["data_hash"] and meta["n_members"] == 3
    member = json.loads((path / "member_01.json").read_text())
    assert {"metrics", "stats", "versions", "model", "ensemble", "data_hash"} <= set(member)
    loaded = Ensemble.load(path)
    a, b = cu_ensemble.predict(cu_data["test"]), loaded.predict(cu_data["test"])
    np.testing.assert_array_equal(a.energy_members, b.energy_members)
    np.testing.assert_array_equal(a.forces_members, b.forces_members)


def test_mace_calculator_loads_member_and_agrees(cu_ensemble, cu_data):
    from mace.calculators import MACECalculator

    atoms = cu_data["test"][2].copy()
    pred = cu_ensemble.predict([atoms])
    calc = MACECalculator(
        model_paths=[str(cu_ensemble.path / "member_00.model")],
        device="cpu",
        default_dtype="float32",
    )
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(pred.energy_members[0, 0], abs=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), pred.forces_members[0], atol=1e-4)


# ---------------------------------------------------------------- uncertainty and calibration


def test_std_larger_out_of_distribution(cu_ensemble, cu_data):
    iid = cu_ensemble.predict(cu_data["test"])
    ood = cu_ensemble.predict(cu_data["ood"])
    assert np.median(ood.max_force_std) > 2 * np.median(iid.max_force_std)
    assert np.median(ood.force_std_atom) > np.median(iid.force_std_atom)


def test_calibration_stored_and_applied(cu_ensemble, cu_data):
    cal = cu_ensemble.calibrate(cu_data["test"])
    assert cal.force_scale > 0 and "Cu" in cal.force_scale_per_element
    assert cal.uncalibrated is None
    keys = ("spearman_atom", "miscalibration_area_forces", "coverage_68_forces", "mean_z2_forces")
    for key in keys:
        assert key in cal.metrics["raw"] and key in cal.metrics["calibrated"]
    # the stored metrics are on the fitting data (a measurement, not a target: variance
    # matching fixes the RMS, below, not the mean z²)
    assert np.isfinite(cal.metrics["calibrated"]["mean_z2_forces"])
    assert cal.metrics["calibrated"]["n_structures"] == len(cu_data["test"])
    reloaded = Ensemble.load(cu_ensemble.path)
    assert reloaded.calibration is not None
    pred = reloaded.predict(cu_data["ood"])
    assert pred.calibrated
    np.testing.assert_allclose(pred.forces_std_cal, pred.forces_std * cal.force_scale, rtol=1e-9)
    np.testing.assert_allclose(pred.energy_std_cal, pred.energy_std * cal.energy_scale)
    # variance matching makes the calibrated spread's RMS the RMS error of the calibration data
    # (per element: Cu is the only one here)
    cal_pred = reloaded.predict(cu_data["test"])
    f_ref = np.concatenate([a.arrays["REF_forces"] for a in cu_data["test"]])
    err2 = np.mean((cal_pred.forces_mean - f_ref) ** 2)
    assert np.mean(cal_pred.forces_std_cal**2) == pytest.approx(err2, rel=1e-4)


def test_descriptors_shape_and_invariance(cu_ensemble, cu_data):
    d = cu_ensemble.descriptors(cu_data["test"])
    assert d.shape == (8, 16)  # 8 invariant channels x 2 layers, member 0
    shifted = [a.copy() for a in cu_data["test"]]
    for a in shifted:
        a.translate([0.3, -0.2, 0.1])
    np.testing.assert_allclose(cu_ensemble.descriptors(shifted), d, atol=1e-4)


def test_unknown_element_is_a_value_error(cu_ensemble):
    with pytest.raises(ValueError, match="not in the model"):
        cu_ensemble.predict([bulk("Ag", cubic=True)])


# ---------------------------------------------------------------- modes, training details


def test_plan_jobs_per_mode(cu_data):
    train = cu_data["train"]
    deep = plan_jobs(train, EnsembleConfig(members=3, mode="deep"), seed=1)
    assert [j.members for j in deep] == [[0], [1], [2]]
    assert len({j.seed for j in deep}) == 3
    assert all(data_hash(j.train) == data_hash(train) for j in deep)
    bag = plan_jobs(train, EnsembleConfig(members=3, mode="bagging"), seed=1)
    assert len({data_hash(j.train) for j in bag}) == 3
    assert all(len(j.train) == len(train) for j in bag)
    snap = plan_jobs(train, EnsembleConfig(members=3, mode=EnsembleMode.SNAPSHOT), seed=1)
    assert len(snap) == 1 and snap[0].snapshots == 3 and snap[0].members == [0, 1, 2]


def test_snapshot_run_returns_distinct_members(cu_data):
    cfg = EnsembleConfig(members=2, mode="snapshot", max_epochs=4, batch_size=8)
    res = train_member(cu_data["train"][:12], SMALL, cfg, seed=0, snapshots=2, threads=1)
    assert len(res.models) == 2
    w0 = torch.cat([p.flatten() for p in res.models[0].parameters()])
    w1 = torch.cat([p.flatten() for p in res.models[1].parameters()])
    assert not torch.allclose(w0, w1)
    lrs = [h["lr"] for h in res.history]
    assert lrs[1] < lrs[0] and lrs[2] > lrs[1]  # cosine annealing, then a warm restart


def test_freeze_blocks_keeps_weights(cu_data):
    stats = compute_stats(cu_data["train"], [29], SMALL.r_max)
    model = build_model(SMALL, stats, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = EnsembleConfig(members=1, max_epochs=2, batch_size=8, ema_decay=0.0)
    res = train_member(
        cu_data["train"][:10], SMALL, cfg, init_model=model, freeze=["interactions.0"], threads=1
    )
    after = dict(res.models[0].named_parameters())
    frozen = [n for n in before if n.startswith("interactions.0.")]
    assert frozen
    for n in frozen:
        assert torch.equal(before[n], after[n].detach())
    assert not torch.equal(before["readouts.0.linear.weight"], after["readouts.0.linear.weight"])
    with pytest.raises(ValueError, match="names no parameters"):
        freeze_blocks(model, ["nonsense"])


def test_skips_structures_that_failed_labelling(cu_data):
    bad = cu_data["train"][0].copy()
    bad.info["label_status"] = "scf_failed"
    bad.info["REF_energy"] = 1e6  # would wreck the fit if used
    stats = compute_stats(cu_data["train"], [29], SMALL.r_max)
    cfg = EnsembleConfig(members=1, max_epochs=1, batch_size=8)
    res = train_member([bad, *cu_data["train"][:8]], SMALL, cfg, stats=stats, threads=1)
    assert res.metrics[0]["n_train"] + res.metrics[0]["n_valid"] == 8


# ---------------------------------------------------------------- transfer


def _sw_calc(element: str):
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si as SI,
    )

    params = dict(SI)
    if element == "Ge":  # Ding & Andersen, Phys. Rev. B 34, 6987 (1986)
        params.update(el="Ge", epsilon=1.93, sigma=2.181, lambda1=31.0)
    return Manybody(**StillingerWeber(params))


def diamond_cells(element: str, a0: float, n: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk(element, "diamond", a=a0 * (1 + rng.uniform(-0.02, 0.02)), cubic=True)
        atoms.rattle(0.08, seed=int(rng.integers(2**31)))
        out.append(label(atoms, _sw_calc(element)))
    return out


def test_element_map_parsing():
    assert parse_element_map("Si=Ge") == {"Si": "Ge"}
    assert parse_element_map(["Si->Ge", "O=O"]) == {"Si": "Ge", "O": "O"}
    with pytest.raises(ValueError, match="chemical symbol"):
        parse_element_map("Si=Xx")
    with pytest.raises(ValueError, match="SRC=DST"):
        parse_element_map("SiGe")


def test_transfer_maps_every_element_indexed_weight():
    """Swapping Cu<->Au through the map must reproduce the source on swapped structures."""
    cfg = SMALL.model_copy(update={"dtype": "float64"})
    stats = DataStats(
        z_table=[29, 79], atomic_energies=[-1.0, -3.0], avg_num_neighbors=12.0, shift=0.1, scale=0.5
    )
    source = build_model(cfg, stats, seed=1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    target = transfer_model(source, cfg, {"Cu": "Au", "Au": "Cu"})
    atoms = bulk("Cu", "fcc", a=3.8, cubic=True)
    atoms.numbers[[1, 2]] = 79
    atoms.rattle(0.1, seed=0)
    swapped = atoms.copy()
    swapped.numbers = np.where(atoms.numbers == 29, 79, 29)
    a = Ensemble([source], model_cfg=cfg).predict([atoms])
    b = Ensemble([target], model_cfg=cfg).predict([swapped])
    np.testing.assert_allclose(b.energy_mean, a.energy_mean, rtol=1e-10)
    np.testing.assert_allclose(b.forces_mean, a.forces_mean, atol=1e-10)


def test_transfer_into_a_model_that_already_has_the_target_element():
    """A campaign's members know Ge before any Ge label: Si=Ge must start Ge from Si's
    weights (not refuse, not keep the untrained Ge) and keep Si as it was.
    """
    cfg = SMALL.model_copy(update={"dtype": "float64"})
    stats = DataStats(
        z_table=[14, 32], atomic_energies=[-4.0, -3.0], avg_num_neighbors=4.0, shift=0.0, scale=1.0
    )
    source = build_model(cfg, stats, seed=2)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    target = transfer_model(source, cfg, "Si=Ge", target_elements=["Si", "Ge"])
    assert target.atomic_numbers.tolist() == [14, 32]
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    ge = si.copy()
    ge.numbers[:] = 32
    before = Ensemble([source], model_cfg=cfg).predict([si])
    after = Ensemble([target], model_cfg=cfg).predict([si, ge])
    np.testing.assert_allclose(after.energy_mean, np.repeat(before.energy_mean, 2), rtol=1e-10)
    np.testing.assert_allclose(after.forces_mean[: len(si)], before.forces_mean, atol=1e-10)
    np.testing.assert_allclose(after.forces_mean[len(si) :], before.forces_mean, atol=1e-10)


def test_transfer_si_to_ge_starts_lower(tmp_path):
    si_train = diamond_cells("Si", 5.431, 20, seed=0)
    ge = diamond_cells("Ge", 5.658, 12, seed=1)
    cfg = EnsembleConfig(members=1, max_epochs=15, batch_size=5, lr=1e-2, patience=50)
    source = train_ensemble(si_train, SMALL, cfg, tmp_path / "si", seed=0)
    f_ref = np.concatenate([a.arrays["REF_forces"] for a in ge])

    def rmse_f(model) -> float:
        pred = Ensemble([model], model_cfg=SMALL).predict(ge)
        return float(np.sqrt(np.mean((pred.forces_mean - f_ref) ** 2)))

    transferred = transfer_model(source.members[0], SMALL, "Si=Ge", target_elements=["Ge"])
    stats = compute_stats(ge, symbols_to_z(element_list(ge)), SMALL.r_max)
    fresh = build_model(SMALL, stats, seed=0)
    assert transferred.atomic_numbers.tolist() == [32]
    assert rmse_f(transferred) < 0.7 * rmse_f(fresh)

    # the same through train_ensemble(init_from=..., element_map=...): fine-tuning starts there
    tuned = train_ensemble(
        ge[:8],
        SMALL,
        EnsembleConfig(members=1, max_epochs=2, batch_size=4),
        tmp_path / "ge",
        valid=ge[8:],
        init_from=source.path,
        element_map="Si=Ge",
    )
    assert tuned.elements == ["Ge"]
    assert json.loads((tuned.path / "ensemble.json").read_text())["element_map"] == "Si=Ge"
    assert rmse_f(tuned.members[0]) < rmse_f(fresh)


# ---------------------------------------------------------------- Ray


def test_train_ensemble_on_ray(ray_session, cu_data, tmp_path):
    from chemgap.agent.runtime import RayExecutor

    events = []
    cfg = EnsembleConfig(members=2, max_epochs=2, batch_size=8)
    ens = train_ensemble(
        cu_data["train"][:10],
        SMALL,
        cfg,
        tmp_path / "ray",
        seed=0,
        progress=events.append,
        task_tag="iter 0",
        executor=RayExecutor(),
    )
    assert ens.n_members == 2
    assert {e.member for e in events} == {0, 1}
    assert sum(e.done for e in events) == 2
    pred = Ensemble.load(tmp_path / "ray").predict(cu_data["test"][:2])
    assert np.all(pred.max_force_std > 0)  # different seeds give different members


def test_model_element_set_may_name_elements_the_data_lack(cu_data, tmp_path):
    """An element split trains without the held-out element but must still score it."""
    cfg = EnsembleConfig(members=2, max_epochs=1, batch_size=8, mode=EnsembleMode.BAGGING)
    ens = train_ensemble(cu_data["train"][:8], SMALL, cfg, tmp_path, elements=["Cu", "Ag"])
    assert ens.elements == ["Cu", "Ag"]
    silver = label(bulk("Ag", cubic=True), EMT())
    assert np.isfinite(ens.predict([silver]).energy_mean).all()


# ---------------------------------------------------------------- reference energies, stage two


def _lone_cu() -> Atoms:
    return Atoms("Cu", positions=[[6.0, 6.0, 6.0]], cell=[12.0] * 3, pbc=False)


def _emt_atom_energy() -> float:
    atom = _lone_cu()
    atom.calc = EMT()
    return float(atom.get_potential_energy())


QUICK = EnsembleConfig(members=1, max_epochs=4, batch_size=6, patience=50)


def test_isolated_e0_gives_the_free_atom_its_oracle_energy(cu_data, tmp_path):
    """E0 from the oracle's isolated atom (ASE's EMT: 3.51 eV): an atom without neighbours is
    predicted at exactly its E0 (no shift, no residual first block, as mace-torch's MACE model);
    recorded in ensemble.json. With least-squares E0s from these bulk cells the same atom sits
    near the bulk energy per atom (~0 eV): the failure the isolated E0 removes.
    """
    e_atom = _emt_atom_energy()
    assert e_atom == pytest.approx(3.51, abs=0.01)
    cfg = SMALL.model_copy(update={"e0": "isolated"})
    ens = train_ensemble(
        cu_data["train"], cfg, QUICK, tmp_path / "iso", seed=0,
        isolated_atom_energies={"Cu": e_atom}, isolated_source="oracle emt",
    )  # fmt: skip
    assert abs(float(ens.predict([_lone_cu()]).energy_mean[0]) - e_atom) < 0.05
    loaded = Ensemble.load(tmp_path / "iso")
    assert loaded.metadata["e0"] == {
        "method": "isolated",
        "values": {"Cu": pytest.approx(e_atom)},
        "sources": {"Cu": "oracle emt"},
        "note": "",
    }
    average = train_ensemble(cu_data["train"], SMALL, QUICK, tmp_path / "avg", seed=0)
    assert abs(float(average.predict([_lone_cu()]).energy_mean[0]) - e_atom) > 1.0


def test_isolated_atom_frames_are_used_as_mace_uses_them(cu_data, tmp_path):
    """An ``IsolatedAtom`` frame in the data (mace-torch's convention) gives E0 and is never a
    training or validation frame.
    """
    frame = _lone_cu()
    frame.info.update(config_type="IsolatedAtom", REF_energy=2.5)
    frame.arrays["REF_forces"] = np.zeros((1, 3))
    cfg = SMALL.model_copy(update={"e0": "isolated"})
    data = [frame, *cu_data["train"][:12]]
    ens = train_ensemble(data, cfg, QUICK, tmp_path, seed=0)
    assert ens.metadata["e0"]["sources"] == {"Cu": "IsolatedAtom frame"}
    assert ens.metadata["n_train"] + ens.metadata["n_valid"] == 12
    assert float(ens.predict([_lone_cu()]).energy_mean[0]) == pytest.approx(2.5, abs=1e-4)


def test_e0_average_and_given_values_still_work(cu_data, tmp_path):
    """``average``: least squares on the training energies (the E0 mace-torch's ``average``
    computes, here by hand); ``{Cu: eV}``: that value, and the lone atom at it.
    """
    train = cu_data["train"][:12]
    ens = train_ensemble(train, SMALL, QUICK, tmp_path / "a", seed=0)
    used = Ensemble.load(tmp_path / "a").metadata
    counts = np.array([[len(a)] for a in usable_train(ens, train)], dtype=float)
    energies = np.array([a.info["REF_energy"] for a in usable_train(ens, train)])
    want = np.linalg.lstsq(counts, energies, rcond=None)[0][0]
    assert used["e0"]["method"] == "average"
    assert used["e0"]["values"]["Cu"] == pytest.approx(want, rel=1e-9)
    given = SMALL.model_copy(update={"e0": {"Cu": 1.25}})
    ens = train_ensemble(train, given, QUICK, tmp_path / "g", seed=0)
    assert ens.metadata["e0"]["method"] == "given"
    assert float(ens.predict([_lone_cu()]).energy_mean[0]) == pytest.approx(1.25, abs=1e-4)


def usable_train(ens: Ensemble, train: list[Atoms]) -> list[Atoms]:
    """The structures the ensemble trained on (its seeded validation split removed)."""
    from chemgap.models.data import split_valid

    fit, _ = split_valid(train, ens.ens_cfg.valid_fraction, np.random.default_rng(0))
    return fit


def test_isolated_e0_without_energies_says_how_to_give_them(cu_data, tmp_path):
    cfg = SMALL.model_copy(update={"e0": "isolated"})
    with pytest.raises(ValueError, match="'isolated' needs the isolated-atom energy of Cu"):
        train_ensemble(cu_data["train"][:8], cfg, QUICK, tmp_path, seed=0)
    with pytest.raises(ValueError, match="is not a chemical symbol"):
        ModelConfig(e0={"Qq": 1.0})
    with pytest.raises(ValueError, match="not isolated, average"):
        ModelConfig(e0="free")


def test_stage_two_ends_training_with_the_energy_weighted(cu_data):
    """mace-torch's stage two: the last quarter of the epochs (rounded up) with the energy
    weight raised (1000 : 100) at the stage-two learning rate, from stage one's best weights;
    stage one stopping on patience starts it at once; fraction 0 turns it off. The validation
    loss of a stage-two epoch is the stage-two loss (recomputed here from its errors).
    """
    train = cu_data["train"][:12]
    cfg = EnsembleConfig(max_epochs=8, batch_size=6, patience=50)
    res = train_member(train, SMALL, cfg, seed=0, threads=1)
    stages = [row["stage"] for row in res.history]
    assert stages == [1] * 6 + [2] * 2
    assert res.metrics[0]["stage_two_from"] == 7
    assert res.metrics[0]["stage_one_stopped"] == "epochs"
    two = res.history[-1]
    assert two["lr"] == pytest.approx(cfg.stage_two_lr)
    # loss = w_E mean((ΔE/N)²) + w_F mean(ΔF²): with one validation batch, from the RMSEs
    w_e, w_f, _ = cfg.loss_weights(2)
    assert two["loss"] == pytest.approx(
        w_e * two["rmse_e_per_atom"] ** 2 + w_f * two["rmse_f"] ** 2, rel=1e-4
    )
    early = train_member(
        train, SMALL, cfg.model_copy(update={"patience": 1, "max_epochs": 40}), seed=0, threads=1
    )
    first_two = early.metrics[0]["stage_two_from"]
    assert early.metrics[0]["stage_one_stopped"] == "patience" and first_two < 31
    assert early.metrics[0]["epochs_run"] <= first_two - 1 + 10  # stage two: ceil(40/4) epochs
    off = train_member(
        train, SMALL, cfg.model_copy(update={"stage_two_fraction": 0.0}), seed=0, threads=1
    )
    assert {row["stage"] for row in off.history} == {1} and off.metrics[0]["stage_two_from"] is None
