"""Select: the labelling batch, within the oracle budget.

The probes' structures first (up to :data:`chemgap.agent.loop.probing.PROBE_SHARE` of the
batch), then the explorer's candidates by the selection strategy
(:func:`chemgap.agent.selection.select`); a structure ``data.db`` holds (labelled or failed) is
asked about once. Each chosen structure gets its role (train, holdout or calibration). Writes
``selection.extxyz`` and ``selection.json`` (:class:`chemgap.agent.records.SelectionRecord`).
"""

from __future__ import annotations

import logging

import numpy as np
from ase import Atoms

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.labels import selection_roles
from chemgap.agent.loop.probing import PROBE_SHARE, probe_candidates
from chemgap.agent.records import SelectionRecord
from chemgap.agent.store import structure_key
from chemgap.agent.structio import read_extxyz, write_extxyz

log = logging.getLogger(__name__)


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
    chosen: list[Atoms] = []
    record = SelectionRecord(
        candidates=len(candidates),
        already_in_db=n_found - len(candidates),
        probe_candidates=len(probed),
        batch=n_batch,
    )
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
        for atoms, role in zip(chosen, selection_roles(loop, ctx.it, len(chosen)), strict=True):
            atoms.info["split"] = role
        record.selected = len(chosen)
        record.duplicates = len(sel.duplicates)
        record.reasons = [sel.reason[i] for i in sel.indices][:n_batch]
    write_extxyz(ctx.dir.selection, chosen)
    record.write(ctx.dir.selection_info)
    ctx.finish("select")
