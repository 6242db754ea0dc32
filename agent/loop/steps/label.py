"""Label: the oracle on the selected batch, each label written to ``data.db`` as it arrives
(:func:`chemgap.agent.loop.labels.label`).
"""

from __future__ import annotations

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.labels import label
from chemgap.agent.structio import read_extxyz


def run(ctx: IterationContext) -> None:
    """Label ``selection.extxyz``."""
    chosen = read_extxyz(ctx.dir.selection)
    ctx.begin("label", n=len(chosen))
    label(ctx.loop, chosen, iteration=ctx.it)
    ctx.finish("label")
