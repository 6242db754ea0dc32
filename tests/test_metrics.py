"""chemgap.common.metrics pinned on a hand-computed example: each metric's definition, once."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from chemgap.common.keys import ENERGY_KEY, FORCES_KEY
from chemgap.common.metrics import (
    breakdown,
    energy_errors_per_atom,
    error_report,
    force_error_norms,
    mae,
    rmse,
    score,
)

# two structures: H2 (2 atoms) and an O atom (1 atom)
PRED_E = np.array([-1.0, -5.0])  # eV
REF_E = np.array([-1.4, -4.7])
N_AT = np.array([2, 1])
PRED_F = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # eV/Å
REF_F = np.zeros((3, 3))
Z = np.array([1, 1, 8])


def test_hand_computed_example():
    # energy per atom: (-1.0 + 1.4)/2 = 0.2, (-5.0 + 4.7)/1 = -0.3
    np.testing.assert_allclose(energy_errors_per_atom(PRED_E, REF_E, N_AT), [0.2, -0.3])
    # force error norms: |(3,4,0)| = 5, 0, 1
    np.testing.assert_allclose(force_error_norms(PRED_F, REF_F), [5.0, 0.0, 1.0])
    r = error_report(
        pred_energy=PRED_E, ref_energy=REF_E, n_atoms=N_AT, pred_forces=PRED_F,
        ref_forces=REF_F, numbers=Z,
    )  # fmt: skip
    assert r.energy_mae_per_atom == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert r.energy_rmse_per_atom == pytest.approx(np.sqrt((0.04 + 0.09) / 2))
    assert r.force_mae == pytest.approx(8.0 / 9.0)  # |3|+|4|+|1| over 9 components
    assert r.force_rmse == pytest.approx(np.sqrt(26.0 / 9.0))  # 9 + 16 + 1 over 9
    assert r.force_error_norm_mean == pytest.approx(2.0)  # (5 + 0 + 1) / 3 atoms
    assert r.force_mae_per_element == pytest.approx({"H": 7.0 / 6.0, "O": 1.0 / 3.0})
    assert (r.n_structures, r.n_atoms) == (2, 3)


def test_generic_reductions_and_breakdown():
    assert mae(np.array([-1.0, 3.0])) == 2.0
    assert rmse(np.array([-1.0, 3.0])) == pytest.approx(np.sqrt(5.0))
    assert np.isnan(mae(np.array([]))) and np.isnan(rmse(np.array([])))
    assert breakdown(np.array([1.0, 3.0, 7.0]), ["b", "a", "b"]) == {"a": 3.0, "b": 4.0}


def test_score_reads_the_label_keys():
    class Pred:
        energy_mean, forces_mean, numbers = PRED_E, PRED_F, Z

    h2 = Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)])
    o = Atoms("O")
    for atoms, e, f in ((h2, REF_E[0], REF_F[:2]), (o, REF_E[1], REF_F[2:])):
        atoms.info[ENERGY_KEY] = e
        atoms.arrays[FORCES_KEY] = f
    assert score(Pred(), [h2, o]).force_mae == pytest.approx(8.0 / 9.0)


def test_model_quality_against_the_force_rms():
    """A model predicting zero force has MAE/RMS = √(2/π) ≈ 0.80 on Gaussian forces (far above
    the 15 % target); one with a tenth of the RMS as MAE passes; the sentence names the ratio.
    """
    from ase import Atoms

    from chemgap.agent.evaluation import model_quality, quality_text

    rng = np.random.default_rng(0)
    structures = []
    for _ in range(50):
        atoms = Atoms("Cu8", positions=rng.normal(size=(8, 3)))
        atoms.arrays["REF_forces"] = rng.normal(scale=0.7, size=(8, 3))
        structures.append(atoms)
    forces = np.concatenate([a.arrays["REF_forces"] for a in structures])
    zero_mae = float(np.abs(forces).mean())
    bad = model_quality(zero_mae, structures, 0.15, "holdout")
    assert bad["force_rms"] == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert bad["ratio"] == pytest.approx(np.sqrt(2 / np.pi), abs=0.02) and not bad["ready"]
    assert quality_text(bad).startswith("tentative: the in-distribution force MAE (")
    assert "on the holdout) is 80 % of the force RMS there (target ≤ 15 %)" in quality_text(bad)
    good = model_quality(0.1 * bad["force_rms"], structures, 0.15, "holdout")
    assert good["ready"] and quality_text(good) is None
    assert model_quality(None, structures, 0.15, "holdout") is None
