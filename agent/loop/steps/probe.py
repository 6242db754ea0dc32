"""Probe: the physical probes on the iteration's ensemble, when due (:mod:`chemgap.agent.loop.
probing`); otherwise the step just passes. Writes ``iterations/NNN/probes/`` and the run's
``probes.json``.
"""

from __future__ import annotations

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.probing import probes_due, run_probes


def run(ctx: IterationContext) -> None:
    """Run the probes when due."""
    due = probes_due(ctx)
    ctx.begin("probe", n=len(ctx.spec.probes.names) if due else 0)
    if due:
        run_probes(ctx)
    ctx.finish("probe")
