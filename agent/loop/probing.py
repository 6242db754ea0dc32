"""The loop's use of the probes (:mod:`chemgap.agent.probes`, the spec's ``probes`` section).

Probes run on the iteration's ensemble every ``probes.every`` iterations in the probe step, and
once more after the last iteration if it was not a probe iteration (``every`` = 0: only then).
A failed probe is a finding of the iteration (``probes_failed`` in its history row); the
structures of the probes that failed (or where the members disagree most), up to
``probes.candidates_per_probe`` each, are labelled first in the same iteration (at most
:data:`PROBE_SHARE` of the batch; ``source = probe`` in ``data.db``), so the loop learns the
physics it got wrong even where its uncertainty is low. The oracle calls a probe makes for its
reference curves are counted in ``probes.json``, not in the labelling budget. A probe that
raises is recorded, never fatal.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ase import Atoms

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.structio import read_extxyz
from chemgap.common.files import atomic_write_text

log = logging.getLogger(__name__)

PROBE_SHARE = 0.5  # the most of a labelling batch probe-sourced structures may take


def probes_due(ctx: IterationContext) -> bool:
    """Whether the probe step runs the probes in this iteration (every ``every``)."""
    cfg = ctx.spec.probes
    return bool(cfg.names) and cfg.every > 0 and ctx.it % cfg.every == 0


def run_probes(ctx: IterationContext) -> dict[str, Any]:
    """Probe the iteration's ensemble against the oracle; write ``probes/probes.json`` and the
    candidates there, and ``probes.json`` at the run's root. Never raises: a probe that raised
    is in the report, a run that could not start is recorded as an error.

    Returns:
        The history fields: ``probes_run``, ``probes_failed``, ``probes_passed``,
        ``probe_oracle_calls``, ``probe_s``.
    """
    from chemgap.agent.probes import ProbeSystem, write_report
    from chemgap.agent.probes import run_probes as run_all

    spec, it = ctx.spec, ctx.it
    out = ctx.dir.probes
    t0 = time.monotonic()
    try:
        system = ProbeSystem.from_config(spec.system, ctx.loop.base_dir, spec.name)
        report = run_all(
            ctx.ensemble(),
            spec.oracle,
            system,
            spec.probes,
            seed=ctx.seed,
            temperatures_K=spec.exploration.temperatures_K,
        )
    except Exception as exc:
        log.warning("iteration %d: probes could not run: %s", it, exc, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
        out.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"passed": False, "failed": [], "error": error, "iteration": it})
        atomic_write_text(out.report, text)
        atomic_write_text(ctx.loop.layout.probes_file, text)
        out.candidates.unlink(missing_ok=True)
        return {"probes_run": 0, "probes_failed": [], "probes_passed": False}
    report.meta["iteration"] = it
    write_report(report, out.path, per_probe=spec.probes.candidates_per_probe)
    atomic_write_text(ctx.loop.layout.probes_file, out.report.read_text())
    failed = report.failed()
    log.info(
        "iteration %d probes: %d run, failed: %s (%.1f s)",
        it,
        len(report.results),
        ", ".join(failed) or "none",
        report.seconds,
    )
    return {
        "probes_run": len(report.results),
        "probes_failed": failed,
        "probes_passed": report.passed,
        "probe_oracle_calls": report.meta.get("oracle_calls"),
        "probe_s": round(time.monotonic() - t0, 3),
    }


def probe_fields(ctx: IterationContext) -> dict[str, Any]:
    """The history fields of this iteration's probe run, from its ``probes.json``."""
    path = ctx.dir.probes.report
    if not path.exists():
        return {}
    payload = json.loads(path.read_text())
    if payload.get("error"):
        return {"probes_run": 0, "probes_failed": [], "probes_passed": False}
    return {
        "probes_run": len(payload.get("probes", [])),
        "probes_failed": list(payload.get("failed", [])),
        "probes_passed": bool(payload.get("passed")),
        "probe_oracle_calls": payload.get("meta", {}).get("oracle_calls"),
        "probe_s": payload.get("seconds"),
    }


def probe_candidates(ctx: IterationContext) -> list[Atoms]:
    """This iteration's probe-sourced structures (none when no probe ran), with the
    ensemble's calibrated uncertainty, as the explorer's candidates carry it; those the
    oracle would refuse as unphysical (:func:`chemgap.oracle.triage.check_geometry`) are
    dropped rather than spent.
    """
    from chemgap.oracle.triage import check_geometry

    path = ctx.dir.probes.candidates
    if not probes_due(ctx) or not path.exists():
        return []
    found = read_extxyz(path)
    factor = ctx.spec.oracle.min_distance_factor
    refused = [a for a in found if check_geometry(a, factor) is not None]
    if refused:  # e.g. a dimer's repulsive wall, closer than the oracle is asked about
        log.info("%d probe structures the oracle would refuse (too close)", len(refused))
        found = [a for a in found if check_geometry(a, factor) is None]
    if found:
        pred = ctx.ensemble().predict(found)
        for k, atoms in enumerate(found):
            atoms.info.update(uncertainty=float(pred.max_force_std_cal[k]), iteration=ctx.it)
    return found
