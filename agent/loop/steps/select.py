"""Select: the labelling batch, within the oracle budget.

The batch has two parts. The holdout and calibration labels (their fractions of the batch,
:func:`~chemgap.agent.loop.labels.role_counts`) are drawn uniformly at random from the frames
the walkers visited (``visited.extxyz``, a uniform sample of the trajectories whatever their
uncertainty; the candidates when it holds too few, in a run written before it existed): they
represent the distribution the model is used on, not the top of the selection
(:func:`~chemgap.agent.loop.labels.draw_roles`). The rest is training data: the probes'
structures first (up to :data:`chemgap.agent.loop.probing.PROBE_SHARE` of it), then the
explorer's candidates by the selection strategy (:func:`chemgap.agent.selection.select`). A
structure ``data.db`` holds (labelled or failed) is asked about once. Writes
``selection.extxyz`` and ``selection.json`` (:class:`chemgap.agent.records.SelectionRecord`).
"""

from __future__ import annotations

import logging

import numpy as np
from ase import Atoms

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.labels import draw_roles, role_counts
from chemgap.agent.loop.probing import PROBE_SHARE, probe_candidates
from chemgap.agent.records import SelectionRecord
from chemgap.agent.store import structure_key
from chemgap.agent.structio import read_extxyz, write_extxyz
from chemgap.common.keys import CALIBRATION_SPLIT, HOLDOUT_SPLIT, TRAIN_SPLIT

log = logging.getLogger(__name__)

_ROLE_NAMES = (HOLDOUT_SPLIT, CALIBRATION_SPLIT)


def run(ctx: IterationContext) -> None:
    """Choose and store iteration ``ctx.it``'s batch (see the module docstring)."""
    from chemgap.agent.selection import Candidates, select
    from chemgap.oracle import cost_model

    loop, spec = ctx.loop, ctx.spec
    known = loop.known_keys()  # labelled or failed: a structure is asked about once
    explored = read_extxyz(ctx.dir.candidates)
    probed = probe_candidates(ctx)
    n_found = len(probed) + len(explored)
    explored = [a for a in explored if structure_key(a) not in known]
    probed = [a for a in probed if structure_key(a) not in known]
    candidates = probed + explored
    if len(candidates) < n_found:
        log.info("%d candidates already in data.db", n_found - len(candidates))
    left = spec.budget.max_oracle_calls - loop.oracle_calls()
    n_batch = max(0, min(spec.selection.batch_size, left))
    roles, roles_from, roles_pool = _roles(ctx, n_batch, known, candidates)
    taken = {structure_key(a) for a in roles}
    candidates = [a for a in candidates if structure_key(a) not in taken]
    probed = [a for a in probed if structure_key(a) not in taken]
    record = SelectionRecord(
        candidates=len(candidates),
        already_in_db=n_found - len(candidates),
        probe_candidates=len(probed),
        batch=n_batch,
    )
    n_batch -= len(roles)  # the training part
    chosen: list[Atoms] = []
    ctx.begin("select", n=len(candidates))
    if candidates and n_batch:
        ensemble = ctx.ensemble()
        labelled = loop.labelled()
        cost = cost_model(spec.oracle)
        costs = np.array([cost(len(a)) for a in candidates])
        sel = select(
            Candidates(
                uncertainty=[a.info["uncertainty"] for a in candidates],
                descriptors=ensemble.descriptors(candidates),
                elements=[frozenset(a.get_chemical_symbols()) for a in candidates],
                cost=costs / float(np.mean(costs)),
            ),
            budget=float(n_batch),
            strategy=spec.selection.strategy,
            quotas=spec.selection.per_element_quota,
            labelled_descriptors=ensemble.descriptors(labelled) if labelled else None,
            dedup_distance=spec.selection.dedup_distance,
            rng=ctx.rng(3),
            priority=range(len(probed)),
            priority_budget=PROBE_SHARE * n_batch,
            priority_reason="probe",
        )
        chosen = [candidates[i] for i in sel.indices][:n_batch]
        for atoms in chosen:
            atoms.info["split"] = TRAIN_SPLIT
        record.duplicates = len(sel.duplicates)
        record.reasons = [sel.reason[i] for i in sel.indices][:n_batch]
    if chosen or roles:
        record.selected = len(chosen) + len(roles)
        record.reasons = [*(record.reasons or []), *(a.info["split"] for a in roles)]
        record.roles = {r: sum(a.info["split"] == r for a in roles) for r in _ROLE_NAMES}
        record.roles_from, record.roles_pool = roles_from, roles_pool
    chosen = [*chosen, *roles]
    write_extxyz(ctx.dir.selection, chosen)
    record.write(ctx.dir.selection_info)
    ctx.finish("select")


def _roles(
    ctx: IterationContext, n_batch: int, known: set[str], candidates: list[Atoms]
) -> tuple[list[Atoms], str, int]:
    """The iteration's holdout and calibration labels drawn at random from the visited frames
    (the candidates when those are too few), where they came from and how many frames that pool
    held.
    """
    counts = role_counts(ctx.loop, ctx.it, n_batch)
    if not sum(counts.values()):
        return [], "visited", 0
    visited = read_extxyz(ctx.dir.visited) if ctx.dir.visited.exists() else []
    pool = [a for a in visited if structure_key(a) not in known]
    source = "visited"
    if len(pool) < sum(counts.values()):
        log.info(
            "iteration %d: %d visited frames for %d holdout/calibration labels; drawing them "
            "from the candidates at random",
            ctx.it,
            len(pool),
            sum(counts.values()),
        )
        pool, source = list(candidates), "candidates"
    return draw_roles(pool, counts, ctx.rng(5)), source, len(pool)
