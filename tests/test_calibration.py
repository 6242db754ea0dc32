"""Uncertainty calibration on stored residuals: σ-scaling, its quality, and where it is scored.

Synthetic Gaussian residuals from a seeded RNG (no model training): errors are drawn as
``factor · σ · N(0, 1)`` with heterogeneous reported stds σ, so the true σ-scale is ``factor``.
The point of the last tests: a calibration scored only on the data it was fitted on looks
perfect by construction (mean z² = 1); only scoring it on other, and shifted, data shows an
ensemble that is overconfident out of distribution.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from ase import Atoms

from chemgap.models.calibration import (
    Calibration,
    Residuals,
    calibration_quality,
    fit_calibration,
    miscalibration_area,
)
from chemgap.models.predict import Prediction

CU, H, OX = 29, 1, 8
KEYS = {
    "spearman_atom",
    "spearman_struct",
    "miscalibration_area_forces",
    "miscalibration_area_energy",
    "mean_z2_forces",
    "mean_z2_energy",
    "coverage_68_forces",
    "coverage_95_forces",
    "coverage_68_energy",
    "coverage_95_energy",
    "n_structures",
    "n_atoms",
}


def synthetic(
    seed: int,
    *,
    n_struct: int = 2000,
    numbers: tuple[int, ...] = (CU, CU, CU, CU),
    force_factor: dict[int, float] | float = 2.0,
    energy_factor: float = 0.5,
) -> Residuals:
    """Residuals whose errors are ``factor · σ · N(0, 1)``; every structure has ``numbers``."""
    rng = np.random.default_rng(seed)
    per = len(numbers)
    z = np.tile(np.asarray(numbers), n_struct)
    table = force_factor if isinstance(force_factor, dict) else {int(k): force_factor for k in z}
    factor = np.array([table[int(k)] for k in z])
    f_std = rng.lognormal(math.log(0.05), 0.5, size=(len(z), 3))
    e_std = rng.lognormal(math.log(0.02), 0.5, size=n_struct)
    return Residuals(
        energy_error=energy_factor * e_std * rng.standard_normal(n_struct),
        energy_std=e_std,
        n_atoms=np.full(n_struct, per),
        force_error=factor[:, None] * f_std * rng.standard_normal(f_std.shape),
        force_std=f_std,
        numbers=z,
        system_idx=np.repeat(np.arange(n_struct), per),
    )


def assert_rmv_equals_rmse(res: Residuals, cal: Calibration) -> None:
    """The calibrated std's mean variance equals the mean squared error: forces (pooled over
    elements when ``cal`` has one global scale) and energies.
    """
    f_scaled = res.force_std * cal.force_scales_for(res.numbers)[:, None]
    assert np.mean(f_scaled**2) == pytest.approx(np.mean(res.force_error**2), rel=1e-9)
    e_scaled = res.energy_std * cal.energy_scale
    assert np.mean(e_scaled**2) == pytest.approx(np.mean(res.energy_error**2), rel=1e-9)


def two_member_residuals(seed: int, *, n_atoms: int = 4000, scale: float = 3.0) -> Residuals:
    """Force residuals of a 2-member ensemble: each member's prediction is the truth plus
    N(0, τ²) per component, τ from a lognormal; the ensemble mean's error (f1 + f2) / 2 and its
    std (ddof 0) |f1 - f2| / 2 are independent with E[error²] = E[std²] = τ²/2, so the right
    scale is 1; the errors are then multiplied by ``scale``, which the fit must recover.
    """
    rng = np.random.default_rng(seed)
    tau = rng.lognormal(math.log(0.05), 0.3, size=(n_atoms, 3))
    f1, f2 = tau * rng.standard_normal(tau.shape), tau * rng.standard_normal(tau.shape)
    n_struct = n_atoms // 4
    e_tau = rng.lognormal(math.log(0.02), 0.3, size=n_struct)
    e1, e2 = e_tau * rng.standard_normal(n_struct), e_tau * rng.standard_normal(n_struct)
    return Residuals(
        energy_error=scale * (e1 + e2) / 2,
        energy_std=np.abs(e1 - e2) / 2,
        n_atoms=np.full(n_struct, 4),
        force_error=scale * (f1 + f2) / 2,
        force_std=np.abs(f1 - f2) / 2,
        numbers=np.full(n_atoms, CU),
        system_idx=np.repeat(np.arange(n_struct), 4),
    )


def test_two_member_stds_get_the_scale_of_their_errors():
    """With two members error/std is a ratio of independent normals (Cauchy): σ-scaling's
    sqrt(mean z²) has no finite target and comes out many times the right scale, ruled by the
    components whose members happen to agree. Variance matching recovers it.

    Broken variant caught: σ-scaling (``sqrt(mean((err/std)²))``): verified, its scale here is
    > 10x the true 3.0, and the calibrated std overstates the typical error by as much.
    """
    res = two_member_residuals(30)
    cal = fit_calibration(res, per_element=False)
    assert cal.force_scale == pytest.approx(3.0, rel=0.08)
    assert cal.energy_scale == pytest.approx(3.0, rel=0.15)
    sigma_scaling = math.sqrt(float(np.mean((res.force_error / res.force_std) ** 2)))
    assert sigma_scaling > 10 * 3.0  # what the old estimator gives on the same residuals
    # on fresh residuals of the same ensemble the calibrated std reads as the error it predicts
    fresh = two_member_residuals(31)
    scaled = fresh.force_std * cal.force_scale
    rms_ratio = math.sqrt(np.mean(fresh.force_error**2) / np.mean(scaled**2))
    assert rms_ratio == pytest.approx(1.0, abs=0.08)


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------------- fitting


def test_sigma_scaling_recovers_a_known_scale():
    res = synthetic(0)  # 2000 structures, 8000 atoms: 24000 force components
    cal = fit_calibration(res, per_element=False)
    # relative SE of s = sqrt(Σerr²/Σstd²) is sqrt(E[σ⁴]/E[σ²]² / 2n) = sqrt(e / 2n) for these
    # lognormal stds: 0.8 % for forces, 2.6 % for energies
    assert cal.force_scale == pytest.approx(2.0, rel=0.03)
    assert cal.energy_scale == pytest.approx(0.5, rel=0.08)
    assert cal.uncalibrated is None and cal.force_scale_per_element == {}
    assert (cal.n_structures, cal.n_atoms) == (2000, 8000)

    q = calibration_quality(res, cal)
    assert set(q) == KEYS
    # variance matching makes the calibrated RMS std equal the RMS error of the fitting data,
    # exactly; with Gaussian errors the mean squared z-score is then about one
    assert_rmv_equals_rmse(res, cal)
    assert q["mean_z2_forces"] == pytest.approx(1.0, abs=0.05)
    assert q["mean_z2_energy"] == pytest.approx(1.0, abs=0.15)
    n_f, n_e = 3 * res.n_atoms_total, res.n_structures
    assert abs(q["coverage_68_forces"] - 0.6827) < 5 * binomial_se(0.68, n_f)
    assert abs(q["coverage_95_forces"] - 0.95) < 5 * binomial_se(0.95, n_f)
    assert abs(q["coverage_68_energy"] - 0.6827) < 5 * binomial_se(0.68, n_e)
    assert abs(q["coverage_95_energy"] - 0.95) < 5 * binomial_se(0.95, n_e)
    assert q["miscalibration_area_forces"] < 0.02

    raw = calibration_quality(res, None)
    assert raw["mean_z2_forces"] == pytest.approx(4.0, rel=0.05)  # errors are 2σ wide
    assert raw["mean_z2_energy"] == pytest.approx(0.25, rel=0.15)  # ... and σ/2 wide
    assert raw["miscalibration_area_forces"] > 0.15
    assert raw["coverage_95_forces"] < 0.7
    # a global scale leaves the ranking alone
    assert raw["spearman_atom"] == pytest.approx(q["spearman_atom"])
    assert raw["spearman_struct"] == pytest.approx(q["spearman_struct"])
    assert calibration_quality(res, Calibration()) == pytest.approx(raw, nan_ok=True)


def test_two_elements_get_their_own_scales_and_rare_ones_the_global_scale():
    # per structure: 3 Cu (errors 2σ), 2 H (errors σ/2); O appears in only 3 structures
    res = Residuals.concat(
        [
            synthetic(1, n_struct=1000, numbers=(CU, CU, CU, H, H), force_factor={CU: 2.0, H: 0.5}),
            synthetic(2, n_struct=3, numbers=(OX, OX), force_factor=5.0),
        ]
    )
    cal = fit_calibration(res, min_atoms=10)
    assert set(cal.force_scale_per_element) == {"Cu", "H"}  # 6 O atoms < min_atoms
    # 9000 / 6000 components: relative SE of the scales 1.2 / 1.5 % (see above)
    assert cal.force_scale_per_element["Cu"] == pytest.approx(2.0, rel=0.05)
    assert cal.force_scale_per_element["H"] == pytest.approx(0.5, rel=0.06)
    assert 0.5 < cal.force_scale < 2.0
    scales = cal.force_scales_for(np.array([CU, H, OX]))
    np.testing.assert_allclose(
        scales,
        [cal.force_scale_per_element["Cu"], cal.force_scale_per_element["H"], cal.force_scale],
    )
    # per element, each element's RMS calibrated std is its RMS error
    for z, symbol in ((CU, "Cu"), (H, "H")):
        mask = res.numbers == z
        scaled = res.force_std[mask] * cal.force_scale_per_element[symbol]
        assert np.mean(scaled**2) == pytest.approx(np.mean(res.force_error[mask] ** 2), rel=1e-9)
    glob = fit_calibration(res, per_element=False)
    assert glob.force_scale == pytest.approx(cal.force_scale)
    per_q, glob_q = calibration_quality(res, cal), calibration_quality(res, glob)
    assert per_q["miscalibration_area_forces"] < 0.5 * glob_q["miscalibration_area_forces"]
    # min_atoms above every element's count: no per-element scales at all
    assert fit_calibration(res, min_atoms=10_000).force_scale_per_element == {}


# ------------------------------------------------------------------- scoring on other data


def test_coverage_on_held_out_data_from_the_same_distribution_is_nominal():
    cal = fit_calibration(synthetic(3))
    fresh = synthetic(4)  # a new draw: same σ distribution, same true scales
    q = calibration_quality(fresh, cal)
    n_f, n_e = 3 * fresh.n_atoms_total, fresh.n_structures
    # 5 binomial SEs of the scoring draw; the fitted scale's own noise (0.5 % forces, 1.6 %
    # energies) moves the coverages by less than 2 of them
    assert abs(q["coverage_68_forces"] - 0.6827) < 5 * binomial_se(0.68, n_f)
    assert abs(q["coverage_95_forces"] - 0.95) < 5 * binomial_se(0.95, n_f)
    assert abs(q["coverage_68_energy"] - 0.6827) < 5 * binomial_se(0.68, n_e)
    assert abs(q["coverage_95_energy"] - 0.95) < 5 * binomial_se(0.95, n_e)
    assert q["mean_z2_forces"] == pytest.approx(1.0, abs=0.05)
    assert q["mean_z2_energy"] == pytest.approx(1.0, abs=0.15)
    assert q["miscalibration_area_forces"] < 0.02


def only_element(res: Residuals, z: int) -> Residuals:
    """The force residuals of element ``z``'s atoms (every structure must hold some); the
    energies are kept as they are.
    """
    mask = res.numbers == z
    n_atoms = np.bincount(res.system_idx[mask], minlength=res.n_structures)
    assert (n_atoms > 0).all()
    return Residuals(
        energy_error=res.energy_error,
        energy_std=res.energy_std,
        n_atoms=n_atoms,
        force_error=res.force_error[mask],
        force_std=res.force_std[mask],
        numbers=res.numbers[mask],
        system_idx=res.system_idx[mask],
    )


def split_structures(res: Residuals, first: np.ndarray) -> tuple[Residuals, Residuals]:
    """``res`` cut into the structures where ``first`` (n_struct,) is True and the others."""
    from chemgap.agent.evaluation import subset_residuals

    return subset_residuals(res, first), subset_residuals(res, ~first)


def test_per_element_calibration_covers_each_element_on_held_out_data():
    """Two elements whose errors are 0.5x and 3x their ensemble std: a per-element fit on one
    half of the structures gives each element mean z² ≈ 1 and nominal 68 / 95 % coverage on the
    *other* half; one pooled force scale (s² ≈ (0.25 + 9) / 2) looks fine pooled but is
    underconfident for Cu (mean z² ≈ 0.05, every error inside its 68 % interval) and
    overconfident for O (mean z² ≈ 1.9, 95 % coverage ≈ 0.84).

    Broken variant caught: one pooled force scale (``per_element=False``, or per-element scales
    that are fitted but not applied): verified, the per-element assertions fail on it.
    """
    factors = {CU: 0.5, OX: 3.0}
    res = synthetic(20, n_struct=2000, numbers=(CU, CU, OX, OX), force_factor=factors)
    first = np.random.default_rng(21).permutation(res.n_structures) < res.n_structures // 2
    fit_half, held_out = split_structures(res, first)
    assert fit_half.n_structures == held_out.n_structures == 1000

    per_el = fit_calibration(fit_half)
    pooled = fit_calibration(fit_half, per_element=False)
    assert per_el.force_scale_per_element == pytest.approx(
        {"Cu": 0.5, "O": 3.0}, rel=0.05
    )  # 6000 components each: relative SE of a scale 1.4 % (40 seeds simulated)
    assert pooled.force_scale == pytest.approx(math.sqrt((0.25 + 9.0) / 2), rel=0.03)

    n = 3 * 2 * held_out.n_structures  # force components per element on the held-out half
    for z in (CU, OX):
        q = calibration_quality(only_element(held_out, z), per_el)
        assert q["n_atoms"] == 2 * held_out.n_structures
        assert q["mean_z2_forces"] == pytest.approx(1.0, abs=0.08), z  # SE ~0.026
        assert abs(q["coverage_68_forces"] - 0.6827) < 5 * binomial_se(0.68, n), z
        assert abs(q["coverage_95_forces"] - 0.95) < 5 * binomial_se(0.95, n), z
        assert q["miscalibration_area_forces"] < 0.02, z
    # pooled: the held-out mean z² over both elements is still about one ...
    both = calibration_quality(held_out, pooled)
    assert both["mean_z2_forces"] == pytest.approx(1.0, abs=0.06)
    # ... but neither element is covered as stated
    cu = calibration_quality(only_element(held_out, CU), pooled)
    ox = calibration_quality(only_element(held_out, OX), pooled)
    assert cu["mean_z2_forces"] < 0.1 and cu["coverage_68_forces"] > 0.99  # nominal 0.68
    assert ox["mean_z2_forces"] > 1.7 and ox["coverage_95_forces"] < 0.88  # nominal 0.95
    assert ox["coverage_68_forces"] < 0.58  # P(|N(0, 1)| <= 2.15 / 3) = 0.53
    assert ox["miscalibration_area_forces"] > 0.07 and cu["miscalibration_area_forces"] > 0.2


def test_a_shifted_set_shows_the_overconfidence_the_fitting_data_hides():
    """Fit on in-distribution residuals, score on a shifted set whose errors are 3x larger
    relative to σ (an ensemble overconfident out of distribution).

    Broken variant this catches: scoring a calibration only on the data it was fitted on (as
    ``Ensemble.calibrate``'s own metrics do) reports mean z² = 1 and 95 % coverage, whatever the
    ensemble does out of distribution.
    """
    in_dist = synthetic(5)
    shifted = synthetic(6, force_factor=6.0, energy_factor=1.5)  # 3x the in-distribution factors
    cal = fit_calibration(in_dist)
    id_q, ood_q = calibration_quality(in_dist, cal), calibration_quality(shifted, cal)

    assert_rmv_equals_rmse(in_dist, cal)
    assert id_q["mean_z2_forces"] == pytest.approx(1.0, abs=0.05)
    assert id_q["mean_z2_energy"] == pytest.approx(1.0, abs=0.15)
    assert id_q["coverage_95_forces"] == pytest.approx(0.95, abs=0.01)
    assert id_q["coverage_95_energy"] == pytest.approx(0.95, abs=0.025)

    assert ood_q["mean_z2_forces"] == pytest.approx(9.0, rel=0.06)
    assert ood_q["mean_z2_energy"] == pytest.approx(9.0, rel=0.2)
    # P(|3 N(0,1)| <= 1.96) = 0.49
    assert ood_q["coverage_95_forces"] < 0.6 and ood_q["coverage_95_energy"] < 0.6
    assert ood_q["coverage_68_forces"] < 0.35
    assert ood_q["miscalibration_area_forces"] > 10 * id_q["miscalibration_area_forces"]
    assert ood_q["miscalibration_area_forces"] > 0.2

    # a calibration fitted on residuals from the shifted region (what the campaign labels, as
    # predicted by the ensemble that selected it) transfers to fresh shifted data
    selected_cal = fit_calibration(synthetic(7, n_struct=500, force_factor=6.0, energy_factor=1.5))
    fresh_shifted = calibration_quality(
        synthetic(8, force_factor=6.0, energy_factor=1.5), selected_cal
    )
    assert fresh_shifted["mean_z2_forces"] == pytest.approx(1.0, abs=0.1)
    assert fresh_shifted["coverage_95_forces"] == pytest.approx(0.95, abs=0.015)


# ------------------------------------------------------------------- what cannot be fitted


def test_zero_stds_leave_the_scale_at_one_and_say_why(caplog):
    res = synthetic(9, n_struct=20)
    res.force_std[:] = 0.0
    with caplog.at_level(logging.WARNING, logger="chemgap.models.calibration"):
        cal = fit_calibration(res)
    assert cal.force_scale == 1.0
    assert cal.force_scale_per_element == {}
    assert cal.uncalibrated is not None and "forces: all stds are zero" in cal.uncalibrated
    assert "forces of Cu: all stds are zero" in cal.uncalibrated
    assert "energy" not in cal.uncalibrated  # the energy scale was fitted
    assert cal.energy_scale != 1.0
    assert "all stds are zero" in caplog.text
    assert Calibration.from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda r: r.energy_error.__setitem__(slice(None), np.nan), "energy: no finite errors"),
        (lambda r: r.energy_std.__setitem__(slice(1, None), 0.0), "energy: too few data"),
        (lambda r: r.energy_error.__setitem__(slice(None), 0.0), "energy: all errors are zero"),
    ],
)
def test_other_unfittable_scales_are_recorded(spoil, reason):
    res = synthetic(10, n_struct=20)
    spoil(res)
    cal = fit_calibration(res)
    assert cal.energy_scale == 1.0
    assert cal.uncalibrated is not None and reason in cal.uncalibrated
    assert cal.force_scale != 1.0 and "forces" not in cal.uncalibrated


def test_an_element_with_zero_stds_falls_back_to_the_global_scale():
    res = synthetic(11, n_struct=200, numbers=(CU, CU, H), force_factor={CU: 2.0, H: 2.0})
    res.force_std[res.numbers == H] = 0.0
    cal = fit_calibration(res)
    assert set(cal.force_scale_per_element) == {"Cu"}
    assert cal.uncalibrated is not None and "forces of H: all stds are zero" in cal.uncalibrated
    assert cal.force_scale == pytest.approx(2.0, rel=0.1)  # zero-std components are left out
    assert cal.force_scales_for(np.array([H]))[0] == cal.force_scale


def test_empty_residuals_calibrate_nothing():
    empty = Residuals.concat([])
    assert (empty.n_structures, empty.n_atoms_total) == (0, 0)
    cal = fit_calibration(empty)
    assert (cal.energy_scale, cal.force_scale) == (1.0, 1.0)
    assert cal.uncalibrated == "energy: no data; forces: no data"
    q = calibration_quality(empty, cal)
    assert q["n_structures"] == 0 and math.isnan(q["mean_z2_forces"])


def test_calibration_from_an_old_ensemble_json():
    old = {
        "energy_scale": 1.5,
        "force_scale": 2.0,
        "force_scale_per_element": {"Cu": 2.1},
        "metrics": {},
        "n_structures": 3,
        "n_atoms": 96,
    }
    cal = Calibration.from_dict(old)
    assert cal.uncalibrated is None and cal.force_scale_per_element == {"Cu": 2.1}


# ----------------------------------------------------------------------------- residuals


def test_residuals_save_load_round_trip(tmp_path):
    res = synthetic(12, n_struct=7, numbers=(CU, H, H))
    path = tmp_path / "residuals_003.npz"
    res.save(path)
    res.save(path)  # overwriting is fine
    back = Residuals.load(path)
    for name in ("energy_error", "energy_std", "n_atoms", "force_error", "force_std"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    np.testing.assert_array_equal(back.numbers, res.numbers)
    np.testing.assert_array_equal(back.system_idx, res.system_idx)
    assert back.system_idx.dtype == np.int64 and back.n_atoms.dtype == np.int64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residuals_003.npz"]  # no temp files


def test_concat_offsets_system_idx():
    a = synthetic(13, n_struct=3, numbers=(CU, CU))
    b = synthetic(14, n_struct=2, numbers=(H, H, H))
    ab = Residuals.concat([a, b])
    assert (ab.n_structures, ab.n_atoms_total) == (5, 12)
    np.testing.assert_array_equal(ab.system_idx, [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
    np.testing.assert_array_equal(ab.n_atoms, [2, 2, 2, 3, 3])
    np.testing.assert_array_equal(ab.numbers, [CU] * 6 + [H] * 6)
    np.testing.assert_array_equal(ab.force_error[6:], b.force_error)
    np.testing.assert_array_equal(ab.energy_std[3:], b.energy_std)


def test_residuals_reject_inconsistent_shapes():
    res = synthetic(15, n_struct=3)
    with pytest.raises(ValueError, match="force_std has 11 rows, expected 12"):
        Residuals(**{**vars(res), "force_std": res.force_std[:-1]})
    with pytest.raises(ValueError, match="n_atoms sums to 13"):
        Residuals(**{**vars(res), "n_atoms": np.array([4, 4, 5])})


def test_from_prediction_uses_the_raw_std_and_the_labels():
    structures = []
    for n, e in ((2, -3.0), (3, -4.5)):
        atoms = Atoms("Cu" * n, positions=np.arange(3 * n, dtype=float).reshape(n, 3))
        atoms.info["REF_energy"] = e
        atoms.arrays["REF_forces"] = np.full((n, 3), 0.1)
        structures.append(atoms)
    f_mean = np.full((5, 3), 0.3)
    f_std = np.full((5, 3), 0.05)
    pred = Prediction(
        energy_mean=np.array([-2.9, -4.7]),
        energy_std=np.array([0.02, 0.03]),
        forces_mean=f_mean,
        forces_std=f_std,
        force_std_atom=np.sqrt(3) * f_std[:, 0],
        max_force_std=np.sqrt(3) * np.array([0.05, 0.05]),
        system_idx=np.array([0, 0, 1, 1, 1]),
        numbers=np.full(5, CU),
        energy_members=np.zeros((2, 2)),
        forces_members=np.zeros((2, 5, 3)),
        calibrated=True,
        energy_std_cal=np.array([0.2, 0.3]),  # a stored calibration, x10: must not be used
        forces_std_cal=10 * f_std,
        force_std_atom_cal=10 * np.sqrt(3) * f_std[:, 0],
        max_force_std_cal=10 * np.sqrt(3) * np.array([0.05, 0.05]),
    )
    res = Residuals.from_prediction(pred, structures)
    np.testing.assert_allclose(res.energy_error, [0.1, -0.2])
    np.testing.assert_allclose(res.energy_std, [0.02, 0.03])
    np.testing.assert_allclose(res.force_error, np.full((5, 3), 0.2))
    np.testing.assert_allclose(res.force_std, f_std)
    np.testing.assert_array_equal(res.n_atoms, [2, 3])
    np.testing.assert_array_equal(res.system_idx, [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="prediction of 2 structures"):
        Residuals.from_prediction(pred, structures[:1])


def test_miscalibration_area_of_gaussian_errors_is_small():
    z = np.random.default_rng(0).normal(size=20000)
    assert miscalibration_area(z) < 0.01
    assert miscalibration_area(3 * z) > 0.2  # overconfident by 3x
