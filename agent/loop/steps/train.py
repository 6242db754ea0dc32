"""Train: the iteration's ensemble on the train split, early stopping on the holdout.

Writes ``iterations/NNN/models/`` (K members as tasks on the executor). The isolated atoms of
the reference energies E0 are labelled first, once per run (:mod:`chemgap.agent.
reference_energies`). The members know every element of the spec's seeds, also those the labels
lack so far (their reference energy is 0 and their embedding untrained until labels arrive): a
model trained on Si alone is explored, scored and diagnosed on Ge, where it fails.
"""

from __future__ import annotations

import logging
from typing import Any

from chemgap.agent.loop.context import IterationContext
from chemgap.common.keys import HOLDOUT_SPLIT, TRAIN_SPLIT

log = logging.getLogger(__name__)


def run(ctx: IterationContext) -> None:
    """Train iteration ``ctx.it``'s ensemble (see the module docstring)."""
    from chemgap.agent.reference_energies import label_isolated_atoms, training_e0
    from chemgap.models.ensemble import train_ensemble

    loop, spec = ctx.loop, ctx.spec
    train = loop.labelled(TRAIN_SPLIT)
    valid = loop.labelled(HOLDOUT_SPLIT)
    elements = sorted(spec.elements(loop.base_dir))

    def progress(event: Any) -> None:
        ctx.report("train", event=event)

    def say(text: str) -> None:
        log.info("%s", text)
        ctx.report("note", text=text)

    label_isolated_atoms(ctx.store, elements, executor=loop.executor, say=say)
    e0 = training_e0(ctx.store, elements)
    ctx.begin("train", n=len(train))
    train_ensemble(
        train,
        e0.model,
        spec.ensemble,
        ctx.dir.models,
        seed=ctx.seed,
        valid=valid,
        elements=elements,
        progress=progress,
        task_tag=f"iter {ctx.it}",
        executor=loop.executor,
        **e0.kwargs,
    )
    ctx.finish("train")
