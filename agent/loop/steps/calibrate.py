"""Calibrate: the uncertainty calibration and the trust levels, fitted on the calibration split.

Scored on the holdout and on the test set's ID and OOD parts (data the fit never saw), and
compared with a calibration that also uses the loop's own labels. Writes
``iterations/NNN/calibration.json`` (:class:`chemgap.agent.records.CalibrationRecord`: scales,
checks, trust levels, the holdout errors and which data each number comes from) and
``test_residuals.npz`` (the ensemble on the test set, raw spread).
"""

from __future__ import annotations

from typing import Any

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.records import CalibrationRecord
from chemgap.common.keys import CALIBRATION_SPLIT, HOLDOUT_SPLIT, TEST_SPLIT
from chemgap.common.metrics import score


def run(ctx: IterationContext) -> None:
    """Fit, score and store iteration ``ctx.it``'s calibration (see the module docstring)."""
    from chemgap.agent.evaluation import calibration_checks
    from chemgap.agent.trust import trust_levels
    from chemgap.models.calibration import Residuals, calibration_quality, fit_calibration

    loop, it = ctx.loop, ctx.it
    ctx.begin("calibrate")
    ensemble = ctx.ensemble()
    fit_set, holdout = loop.labelled(CALIBRATION_SPLIT), loop.labelled(HOLDOUT_SPLIT)
    if not fit_set:
        raise RuntimeError(
            f"iteration {it}: no labelled structure has split '{CALIBRATION_SPLIT}' to fit the "
            "calibration on (a run started by an older chemgap? start a new run)"
        )
    raw_fit = ensemble.predict(fit_set, calibrated=False)
    res = Residuals.from_prediction(raw_fit, fit_set)
    raw = ensemble.predict(holdout, calibrated=False)
    res_hold = Residuals.from_prediction(raw, holdout)
    cal = fit_calibration(res)
    cal.metrics = {
        "raw": calibration_quality(res_hold, None),
        "calibrated": calibration_quality(res_hold, cal),
        "scored_on": f"{HOLDOUT_SPLIT} ({len(holdout)} structures, not fitted on)",
    }
    ensemble.calibration = cal
    ensemble.save_metadata()
    levels = trust_levels(
        ctx.spec.exploration.trust,
        force_std_atom_cal=raw_fit.force_std_atom * cal.force_scales_for(raw_fit.numbers),
        numbers=raw_fit.numbers,
        system_idx=raw_fit.system_idx,
    )
    test = loop.test_set()
    test_res = None
    if test:
        test_res = Residuals.from_prediction(ensemble.predict(test, calibrated=False), test)
        test_res.save(ctx.dir.test_residuals)
    checks = calibration_checks(
        cal, fitted_on=res, held_out=res_hold, test=test_res, test_structures=test
    )
    record = CalibrationRecord(
        calibration=cal.to_dict(),
        trust=levels.to_dict(),
        holdout_errors=score(raw, holdout).to_dict(),
        checks=checks,
        roles=_roles(len(holdout), len(fit_set), len(test)),
        loop=_with_loop_labels(ctx, res, res_hold, test_res, test, checks),
    )
    record.write(ctx.dir.calibration)
    ctx.finish("calibrate")


def _roles(n_holdout: int, n_fit: int, n_test: int) -> dict[str, str]:
    """Which split each number of ``calibration.json`` comes from."""
    hold, cal = f"{HOLDOUT_SPLIT} ({n_holdout} structures)", CALIBRATION_SPLIT
    return {
        "early_stopping": hold,
        "holdout_errors": hold,
        "calibration_fit": f"{cal} ({n_fit} structures)",
        "trust_levels": f"{cal} ({n_fit} structures)",
        "calibration.metrics": hold,
        "checks.fitted_on": f"{cal} (the fitting data: describes the fit only)",
        "checks.held_out": hold,
        "checks.test_id, checks.test_ood": f"{TEST_SPLIT} ({n_test} structures)",
    }


def _with_loop_labels(
    ctx: IterationContext, res: Any, res_hold: Any, test_res: Any, test: list, checks: dict
) -> dict[str, Any] | None:
    """The same calibration fitted also on the structures earlier iterations chose (their
    ``selected_residuals.npz``), checked on the same held-out data; None before any.
    """
    from chemgap.agent.evaluation import calibration_checks, compare_calibrations
    from chemgap.models.calibration import Residuals, fit_calibration

    layout = ctx.loop.layout
    earlier = [layout.iteration(j).selected_residuals for j in range(1, ctx.it)]
    parts = [Residuals.load(path) for path in earlier if path.exists()]
    if not parts:
        return None
    both = Residuals.concat([res, *parts])
    cal_loop = fit_calibration(both)
    loop_checks = calibration_checks(
        cal_loop, fitted_on=both, held_out=res_hold, test=test_res, test_structures=test
    )
    return {
        "calibration": cal_loop.to_dict(),
        "loop_structures": sum(part.n_structures for part in parts),
        "checks": loop_checks,
        **compare_calibrations(checks, loop_checks),
    }
