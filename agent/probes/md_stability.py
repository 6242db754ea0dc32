"""MD-stability probe: NVT at the campaign's temperatures until the step cap or a failure.

Every start (the crystal's smallest supercell with ``min_atoms`` atoms, and every molecule) runs
BAOAB Langevin dynamics at every temperature with the ensemble mean — and with each member, for
a band, and the oracle when asked — sharing velocities and noise (:mod:`.dynamics`). A walker
that explodes stops there; the score is MLIPAudit's stability score (instadeepai/mlipaudit,
``docs/source/benchmarks/general/stability.rst``), with its hydrogen loss generalised to any
atom leaving its neighbours: S = ½ f_e/N after an explosion at step f_e of N, 0.5 + ½ f_h/N
when an atom detached at step f_h, 1 for a run that survives intact. The time survived (ps) is
reported beside it.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .dynamics import Run, paired_md
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.MD_STABILITY


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    s = ctx.system
    return None if s.molecules or s.crystal is not None else "needs molecules or a crystal"


def starts(ctx: ProbeContext, min_atoms: int) -> list[tuple[str, Atoms]]:
    """``(label, structure)`` MD starts: the crystal supercell, then the molecules."""
    out = []
    if ctx.system.crystal is not None:
        cell = ctx.system.supercell(min_atoms)
        out.append((cell.get_chemical_formula(), cell))
    out += [(m.get_chemical_formula(), m) for m in ctx.system.molecules]
    return out


def stability_score(run: Run, steps: int) -> float:
    """MLIPAudit's score of one run of ``steps`` steps."""
    if run.exploded is not None:
        return 0.5 * run.exploded / steps
    if run.detached is not None:
        return 0.5 + 0.5 * run.detached / steps
    return 1.0


def rows_of(ctx: ProbeContext, members: bool, oracle: bool) -> list[int]:
    """The rows an MD probe runs: members (optional), the mean, the oracle (optional)."""
    pot = ctx.pot
    return [
        *(range(pot.k) if members else []),
        pot.model_row,
        *([pot.oracle_row] if oracle else []),
    ]


def run(ctx: ProbeContext) -> ProbeResult:
    """Score and time survived per start and temperature, for each row that ran."""
    cfg = ctx.cfg.md_stability
    pot = ctx.pot
    temps = cfg.temperatures_K or ctx.temperatures_K
    rows = rows_of(ctx, cfg.members, cfg.oracle)
    begin = starts(ctx, cfg.min_atoms)
    runs = paired_md(
        pot,
        [a for _, a in begin],
        temps,
        rows,
        steps=cfg.steps,
        timestep_fs=cfg.timestep_fs,
        friction_per_fs=cfg.friction_per_fs,
        seed=ctx.seed,
    )
    result = ProbeResult(name=NAME)
    failed_frames, keys = [], []
    for g, (label, t) in enumerate((lab, t) for lab, _ in begin for t in temps):
        group = {r.row: r for r in runs if r.group == g}
        score = np.full(pot.n_rows, np.nan)
        time_ps = np.full(pot.n_rows, np.nan)
        for row, r in group.items():
            score[row] = stability_score(r, cfg.steps)
            survived = r.exploded if r.exploded is not None else cfg.steps
            time_ps[row] = survived * cfg.timestep_fs / 1000
            if r.reason:
                result.notes.append(
                    f"{label} {t:g} K row {row}: {r.reason} at step "
                    f"{r.exploded if r.exploded is not None else r.detached}"
                )
                failed_frames.append(r.last_good)
                keys.append(1.0 - score[row])
        where = f"{label} {t:g} K"
        kw = {"oracle": cfg.oracle, "members": cfg.members}
        result.metrics += [
            ctx.metric(
                NAME, "score", score, unit="", label=f"score {where}", judge=Judge.VALUE, **kw
            ),
            ctx.metric(
                NAME, "time_ps", time_ps, unit="ps", label=f"time {where}", bounded=False, **kw
            ),
        ]
    result.payload = {
        "kind": "table",
        "columns": ["start", "T (K)", "row", "score", "time (ps)", "reason"],
        "rows": [
            [
                begin[r.group // len(temps)][0],
                r.temperature_K,
                r.row,
                stability_score(r, cfg.steps),
                (r.exploded or cfg.steps) * cfg.timestep_fs / 1000,
                r.reason,
            ]
            for r in runs
        ],
    }
    result.candidates = pick_candidates(
        failed_frames, keys, None, probe=NAME, n=ctx.cfg.candidates_per_probe, failed=False
    )
    result.notes.append(
        f"{cfg.steps} steps of {cfg.timestep_fs:g} fs per run; starts: "
        + ", ".join(f"{lab} ({len(a)} atoms)" for lab, a in begin)
    )
    return result
