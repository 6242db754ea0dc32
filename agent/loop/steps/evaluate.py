"""Evaluate: this iteration's errors, its diagnosis, its learning-curve row and the stop check.

The row (:class:`chemgap.agent.store.HistoryRow`): the holdout's errors and the calibration's
ranking quality (from ``calibration.json``), the explored fractions (``exploration.json``), the
test set's errors per part, kind and element (``test_residuals.npz``), whether the model meets
its in-distribution target, the probes' verdict, the diagnosis (:mod:`chemgap.agent.loop.
diagnosis`), wall time and memory. The stop rule (:mod:`chemgap.agent.loop.stop`) then decides;
on the last iteration the probes run once more if this was not a probe iteration, so the final
model always has a verdict.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.diagnosis import diagnose_iteration
from chemgap.agent.loop.probing import probe_fields, probes_due, run_probes
from chemgap.agent.loop.stop import stop_reason
from chemgap.agent.records import CalibrationRecord, ExplorationRecord
from chemgap.agent.store import RunStatus
from chemgap.common.keys import HOLDOUT_SPLIT, ISOLATED_ATOM_SPLIT


def run(ctx: IterationContext) -> dict[str, Any]:
    """Evaluate iteration ``ctx.it``, record its row and the stop decision; return the row."""
    loop, it, spec = ctx.loop, ctx.it, ctx.spec
    ctx.begin("evaluate")
    calib = CalibrationRecord.read(ctx.dir.calibration)
    expl = ExplorationRecord.read(ctx.dir.exploration)
    counts = ctx.store.label_counts()
    test_calls = loop.test_calls()
    e0_calls = ctx.store.db.count(split=ISOLATED_ATOM_SPLIT)
    holdout = calib.holdout_errors
    metrics = calib.calibration.get("metrics", {}).get("calibrated", {})
    row = {
        "iteration": it,
        "labels_ok": counts["ok"],
        "labels_failed": counts["failed"],
        "oracle_calls": counts["ok"] + counts["failed"] - test_calls - e0_calls,
        "oracle_calls_test": test_calls,
        "oracle_calls_e0": e0_calls,
        "energy_mae_per_atom": holdout["energy_mae_per_atom"],
        "force_mae": holdout["force_mae"],
        "spearman_atom": metrics.get("spearman_atom"),
        "trust_pooled": ctx.levels().describe(),
        "accurate": expl.overall["accurate"],
        "candidate": expl.overall["candidate"],
        "failed": expl.overall["failed"],
    }
    row.update(_test_row(ctx))
    quality = _quality(ctx, row)
    row["model_quality"] = quality
    row["regions_tentative"] = quality is not None and not quality["ready"]
    row.update(probe_fields(ctx))
    _save_selected_residuals(ctx)
    t_diag = time.monotonic()
    row.update(diagnose_iteration(ctx, quality))
    seconds = {"diagnose": round(time.monotonic() - t_diag, 3)}
    row["elapsed_s"] = loop.elapsed_s
    row.update(_memory())
    history = [h for h in ctx.store.state.history if h["iteration"] != it] + [row]
    reason = stop_reason(
        history, spec.budget, oracle_calls=loop.oracle_calls(), elapsed_s=loop.elapsed_s
    )
    if reason and spec.probes.names and not probes_due(ctx):
        # the last iteration: the probes' verdict on the final model
        ctx.report("step", step="probe", n=len(spec.probes.names))
        t_probe = time.monotonic()
        row.update(run_probes(ctx))
        seconds["probe"] = round(time.monotonic() - t_probe, 3)
        row["elapsed_s"] = loop.elapsed_s
    took = loop.step_seconds()
    ctx.store.write_state(
        iteration=it,
        step="evaluate",
        history=history,
        stop_reason=reason,
        status=RunStatus.DONE if reason else RunStatus.RUNNING,
        elapsed_s=loop.elapsed_s,
        timings=loop.timings(it, evaluate=round(took - sum(seconds.values()), 3), **seconds),
    )
    loop.report("iteration", row)
    return row


def _test_row(ctx: IterationContext) -> dict[str, Any]:
    """The test-set errors of this iteration (from the residuals its calibrate step saved)."""
    from chemgap.agent.evaluation import score_test_set
    from chemgap.models.calibration import Residuals

    path = ctx.dir.test_residuals
    test = ctx.loop.test_set()
    if not test or not path.exists():
        return {}
    errors = score_test_set(Residuals.load(path), test)
    row: dict[str, Any] = {"test": errors}
    for part in ("all", "id", "ood"):
        report = errors.get(part)
        row[f"test_force_mae_{part}"] = report["force_mae"] if report else None
        row[f"test_energy_mae_{part}"] = report["energy_mae_per_atom"] if report else None
    return row


def _quality(ctx: IterationContext, row: dict[str, Any]) -> dict[str, Any] | None:
    """Whether this iteration's model is good enough in distribution for its regions to be
    findings (:func:`chemgap.agent.evaluation.model_quality`): on the test set's ID part, or
    without one on the holdout it was scored on.
    """
    from chemgap.agent.evaluation import model_quality

    target = ctx.spec.diagnostics.id_force_target
    ident = [a for a in ctx.loop.test_set() if a.info.get("in_distribution", True)]
    if ident and row.get("test_force_mae_id") is not None:
        return model_quality(row["test_force_mae_id"], ident, target, "test set, in distribution")
    held = [a for a in ctx.loop.labelled(HOLDOUT_SPLIT) if a.info.get("iteration", 0) < ctx.it]
    return model_quality(row.get("force_mae"), held, target, "holdout")


def _save_selected_residuals(ctx: IterationContext) -> None:
    """The structures this iteration chose and labelled, as predicted by the ensemble that
    chose them (out of sample for it): the loop's own calibration data for later iterations
    (a later ensemble has trained on them).
    """
    from chemgap.models.calibration import Residuals

    chosen = [
        a
        for a in ctx.loop.labelled()
        if a.info.get("iteration") == ctx.it and a.info.get("source") == "explore"
    ]
    if not chosen:
        return
    pred = ctx.ensemble().predict(chosen, calibrated=False)
    Residuals.from_prediction(pred, chosen).save(ctx.dir.selected_residuals)


def _memory() -> dict[str, float | None]:
    """This process's resident memory now and at its peak, MiB (``rss_mib``, ``peak_rss_mib``;
    None where the platform does not say).

    The campaign's driver only: training, exploration and labelling run in Ray workers, whose
    memory ends with their tasks.
    """
    import os
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss: float | None = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        rss = None
    return {"rss_mib": rss, "peak_rss_mib": round(peak, 1)}
