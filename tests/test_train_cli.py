"""``chemgap train`` / ``chemgap predict`` through click's CliRunner."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner

from chemgap.agent.cli.train import predict, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMALL = [
    "--set", "model.num_channels=8",
    "--set", "model.max_L=1",
    "--set", "model.r_max=4.0",
    "--set", "model.radial_mlp=[16, 16]",
    "--set", "ensemble.max_epochs=3",
    "--set", "ensemble.batch_size=8",
]  # fmt: skip


def write_cu(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat((2, 1, 1))
        a.rattle(0.05, seed=int(rng.integers(2**31)))
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = None
        a.info["REF_energy"] = e
        a.arrays["REF_forces"] = f
        out.append(a)
    ase.io.write(path, out, format="extxyz")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_cu(root / "train.xyz", 12, 0)
    write_cu(root / "test.xyz", 4, 1)
    write_cu(root / "valid.xyz", 3, 2)
    result = CliRunner().invoke(
        train,
        [str(root / "train.xyz"), "-o", str(root / "model"), "--members", "2", "--no-ray",
         "--calibrate", str(root / "test.xyz"), "--valid", str(root / "valid.xyz"),
         "--oracle", "emt", *SMALL],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root, result


def test_train_writes_model_dir(trained):
    root, result = trained
    assert (root / "model" / "ensemble.json").exists()
    assert (root / "model" / "member_01.model").exists()
    assert "saved 2 member(s)" in result.output
    # the calibration is scored on --valid, not on the structures it was fitted on (broken
    # variant: quality figures of the fitting data, where the spread is right by construction)
    assert "fitted on 4 --calibrate structures" in result.output
    assert "on --valid (3 structures)" in result.output


def test_isolated_e0_from_the_oracle_gives_the_free_atom_its_energy(trained):
    """``--e0 isolated`` (the default) with ``--oracle emt``: E0 is EMT's isolated Cu atom
    (3.51 eV, computed in the test with ASE), said in one line and recorded, and the model
    predicts an atom without neighbours at it (a least-squares E0 from these bulk cells would
    be the bulk energy per atom, ~0 eV).
    """
    from ase import Atoms

    from chemgap.models.ensemble import Ensemble

    root, result = trained
    atom = Atoms("Cu", positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=False)
    atom.calc = EMT()
    e_atom = atom.get_potential_energy()
    assert e_atom == pytest.approx(3.51, abs=0.01)
    assert f"E0: emt's isolated atoms: Cu {e_atom:.3f} eV" in result.output
    ens = Ensemble.load(root / "model")
    assert ens.metadata["e0"]["method"] == "isolated"
    assert ens.metadata["e0"]["values"]["Cu"] == pytest.approx(e_atom)
    pred = ens.predict([Atoms("Cu", positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3)])
    assert abs(float(pred.energy_mean[0]) - e_atom) < 0.05


def test_isolated_e0_without_an_oracle_is_one_clear_sentence(tmp_path):
    write_cu(tmp_path / "d.xyz", 6, 0)
    result = CliRunner().invoke(train, [str(tmp_path / "d.xyz"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "--e0: isolated (the default) needs the isolated-atom energy of Cu" in result.output
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(train, [str(tmp_path / "d.xyz"), "-o", str(tmp_path / "m"),
                                     "--e0", "Cu=abc"])  # fmt: skip
    assert bad.exit_code == 2 and "--e0: 'Cu=abc' is not ELEMENT=eV" in bad.output


def test_predict_writes_extxyz_with_uncertainty(trained):
    root, _ = trained
    out = root / "pred.xyz"
    result = CliRunner().invoke(
        predict, [str(root / "model"), str(root / "test.xyz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "max force std" in result.output and "(calibrated)" in result.output
    frames = ase.io.read(out, index=":")
    # DP-GEN's name goes with the raw spread; the calibrated one is printed under its own name
    raw = max(a.info["pred_max_force_std"] for a in frames)
    cal = max(a.info["pred_max_force_std_cal"] for a in frames)
    assert "max force std (max_devi_f): mean" in result.output
    assert f"max {raw:.4g} eV/Å" in result.output.split("calibrated max force σ")[0]
    assert (
        "calibrated max force σ: mean" in result.output and f"max {cal:.4g} eV/Å" in result.output
    )
    assert len(frames) == 4
    assert frames[0].info["pred_max_force_std"] > 0
    assert frames[0].arrays["pred_force_std"].shape == (8,)
    assert frames[0].arrays["pred_forces"].shape == (8, 3)


def test_predict_writes_exactly_what_the_ensemble_predicts(trained, tmp_path):
    """Every written number equals ``Ensemble.predict`` on the same structures: per structure
    the energy, its std, the max force std and their calibrated versions, the stress and its
    std; per atom the mean forces, the force std and the calibrated force std. Structures of
    three sizes, two of each, so a mix-up of order shows in the values even between equal sizes.
    Per-atom columns are written with 8 decimals (tolerance 1e-8 eV/Å); info values exactly.

    Broken variants caught (verified with a patched ``Prediction.annotate``): one member's
    forces written instead of the mean; the per-structure values in reverse order; the raw std
    written in the ``*_cal`` fields.
    """
    from chemgap.models.ensemble import Ensemble

    root, _ = trained
    rng = np.random.default_rng(5)
    structures = []
    for reps in ((1, 1, 1), (2, 1, 1), (2, 2, 1)) * 2:
        a = bulk("Cu", cubic=True).repeat(reps)
        a.rattle(0.05, seed=int(rng.integers(2**31)))
        structures.append(a)
    src, out = tmp_path / "in.xyz", tmp_path / "pred.xyz"
    ase.io.write(src, structures, format="extxyz")
    result = CliRunner().invoke(
        predict, [str(root / "model"), str(src), "-o", str(out), "--stress"]
    )
    assert result.exit_code == 0, result.output

    ens = Ensemble.load(root / "model")
    assert ens.calibration is not None and ens.calibration.force_scale != 1.0
    pred = ens.predict(ase.io.read(src, index=":"), compute_stress=True)
    assert pred.calibrated
    frames = ase.io.read(out, index=":")
    assert len(frames) == len(structures)
    per_structure = {
        "pred_energy": pred.energy_mean,
        "pred_energy_std": pred.energy_std,
        "pred_energy_std_cal": pred.energy_std_cal,
        "pred_max_force_std": pred.max_force_std,
        "pred_max_force_std_cal": pred.max_force_std_cal,
        "pred_stress": pred.stress_mean,
        "pred_stress_std": pred.stress_std,
    }
    per_atom = {
        "pred_forces": pred.forces_mean,
        "pred_force_std": pred.force_std_atom,
        "pred_force_std_cal": pred.force_std_atom_cal,
    }
    for i, (frame, atoms) in enumerate(zip(frames, structures, strict=True)):
        np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-8)
        for key, want in per_structure.items():
            np.testing.assert_allclose(frame.info[key], want[i], rtol=1e-12, atol=0, err_msg=key)
        sl = pred.per_structure(i)
        for key, want in per_atom.items():
            np.testing.assert_allclose(frame.arrays[key], want[sl], rtol=0, atol=1e-8, err_msg=key)
    # the calibrated fields carry the stored scale: not the raw std
    assert np.abs(pred.force_std_atom_cal - pred.force_std_atom).max() > 1e-4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "model.max_L=9"], "model.max_L"),
        (["--set", "model.nonsense=1"], "model.nonsense: unknown key"),
        (["--set", "oops"], "KEY=VALUE"),
        (["--map", "Si=Ge"], "--init-from"),
    ],
)
def test_train_bad_input_exits_2(tmp_path, args, needle):
    write_cu(tmp_path / "d.xyz", 3, 0)
    result = CliRunner().invoke(train, [str(tmp_path / "d.xyz"), "-o", str(tmp_path / "m"), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_predict_missing_model_dir_exits_2(tmp_path):
    write_cu(tmp_path / "d.xyz", 1, 0)
    result = CliRunner().invoke(predict, [str(tmp_path / "nope"), str(tmp_path / "d.xyz")])
    assert result.exit_code == 2


def test_every_set_problem_is_named_before_any_work(tmp_path):
    # DATA does not even exist: the options are checked before anything is read or trained
    result = CliRunner().invoke(
        train,
        [str(tmp_path / "data.xyz"), "-o", str(tmp_path / "m"),
         "--set", "bogus=1", "--set", "ensemble.members=-1", "--set", "oops"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    out = result.output
    assert "--set: 3 problems" in out
    assert "bogus: unknown key (got '1')" in out
    assert "ensemble.members:" in out and "(got -1)" in out
    assert "expected KEY=VALUE (got 'oops')" in out
    assert "Traceback" not in out and not (tmp_path / "m").exists()


def test_done_when_with_a_labelled_file(tmp_path):
    write_cu(tmp_path / "data.xyz", 2, 0)
    result = CliRunner().invoke(
        train,
        [str(tmp_path / "data.xyz"), "-o", str(tmp_path / "m"),
         "--set", "bogus=1", "--set", "ensemble.members=-1"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "bogus" in result.output and "ensemble.members" in result.output


def test_predict_reports_errors_against_labels(trained):
    root, _ = trained
    result = CliRunner().invoke(predict, [str(root / "model"), str(root / "test.xyz")])
    assert result.exit_code == 0, result.output
    assert "vs labels: energy RMSE" in result.output
    same = CliRunner().invoke(
        predict, [str(root / "model"), str(root / "test.xyz"), "-o", str(root / "test.xyz")]
    )
    assert same.exit_code == 2 and "differ" in same.output


def test_member_eta_is_the_pace_so_far_capped_by_the_wall_time():
    from chemgap.agent.cli.train import member_eta

    assert member_eta(10, 200, 20.0, 600.0) == pytest.approx(380.0)  # 190 epochs at 2 s
    assert member_eta(10, 200, 500.0, 600.0) == pytest.approx(100.0)  # the cap comes first
    assert member_eta(0, 200, 5.0, 600.0) == pytest.approx(595.0)  # no pace yet: the cap
    assert member_eta(200, 200, 40.0, 600.0) == 0.0


def test_the_first_train_states_its_scaled_budget_and_what_stopped_each_member(trained):
    """SMALL sets max_epochs=3 and leaves patience and the wall cap to the data: 12 training
    structures of 8 atoms (the --valid file is separate) -> patience max(5, 0.2*3) = 5 and a
    wall cap of max(60, 0.015 s * 96 atoms * 3 epochs) = 60 s; each member ran its 3 epochs.
    """
    from chemgap.models.ensemble import Ensemble

    root, result = trained
    out = " ".join(result.output.split())
    assert "budget: ≤ 3 epochs, patience 5, ≤ 60 s per member" in out
    assert "(patience and wall cap scaled to the data; --set ensemble.* to choose)" in out
    assert "member 1/2: ran all 3 epochs kept epoch 3 (stage two from 3)" in out
    assert "stage two: the last 1 epoch at energy : forces 1000 : 100" in out
    assert "early stopping: 0 of 2 member(s) stopped before the cap" in out
    cfg = Ensemble.load(root / "model").ens_cfg  # the model records the values it trained with
    assert (cfg.max_epochs, cfg.patience, cfg.wall_time_s) == (3, 5, 60.0)


def test_budgets_scale_with_the_data_and_keep_what_the_user_set():
    """Epochs from a budget of optimiser steps (400 / ceil(n / batch)), within [20, 200];
    patience a fifth of them (at least 5); the wall cap 15 ms per training atom-epoch within
    [60, 3600] s; a field the user set is kept as it is.
    """
    from chemgap.models.config import EnsembleConfig

    cfg = EnsembleConfig(batch_size=8)
    assert cfg.unscaled == ["max_epochs", "patience", "wall_time_s"]
    small = cfg.scaled_to(36, 36 * 8)  # the 40-cell example: 5 steps an epoch
    assert (small.max_epochs, small.patience, small.wall_time_s) == (80, 16, 346.0)
    assert small.unscaled == [] and small.scaled_to(1000, 10**6) == small  # idempotent
    tiny = cfg.scaled_to(4, 4 * 8)  # one step an epoch: capped at 200 epochs
    assert (tiny.max_epochs, tiny.patience, tiny.wall_time_s) == (200, 40, 96.0)
    large = cfg.scaled_to(4000, 4000 * 64)  # 500 steps an epoch: the 20-epoch floor
    assert (large.max_epochs, large.patience, large.wall_time_s) == (20, 5, 3600.0)
    snap = EnsembleConfig(batch_size=8, mode="snapshot", members=4).scaled_to(36, 36 * 8)
    assert (snap.max_epochs, snap.wall_time_s) == (320, 1382.0)  # 4 cycles of 80 in one run
    mine = EnsembleConfig(batch_size=8, max_epochs=7, wall_time_s=9.0).scaled_to(36, 288)
    assert (mine.max_epochs, mine.patience, mine.wall_time_s) == (7, 5, 9.0)


def test_stop_lines_say_what_early_stopping_did():
    from chemgap.agent.cli.train import stop_lines
    from chemgap.models.config import EnsembleConfig

    cfg = EnsembleConfig(max_epochs=120, patience=24, wall_time_s=173.0)
    common = {"valid_rmse_e_per_atom": 0.002, "valid_rmse_f": 0.05}
    metrics = [
        {"epochs_run": 61, "epochs": 37, "stopped": "patience", **common},
        {"epochs_run": 120, "epochs": 118, "stopped": "epochs", **common},
        {"epochs_run": 90, "epochs": 90, "stopped": "wall_time", **common},
    ]
    lines = stop_lines(metrics, cfg)
    assert lines[:2] == [
        "member 1/3: stopped early at epoch 61 of 120 (no validation gain in 24)",
        "  kept epoch 37: valid RMSE E 2 meV/atom, F 50 meV/Å",
    ]
    assert lines[2] == "member 2/3: ran all 120 epochs"
    assert lines[3].startswith("  kept epoch 118:")
    assert lines[4] == "member 3/3: hit the 173 s wall-time cap at epoch 90"
    assert lines[6] == (
        "early stopping: 1 of 3 member(s) stopped before the cap; 59 of 360 epochs saved"
    )
    assert max(len(line) for line in lines) <= 80
    # the wall-capped member's 30 unrun epochs are not early stopping's: 120 - 61 = 59
