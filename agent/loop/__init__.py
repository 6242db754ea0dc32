"""The campaign: the active-learning loop on top of every family (docs/architecture.md).

:mod:`.campaign` is the state machine (:func:`run_campaign`), :mod:`.context` what every step
works with, :mod:`.steps` one module per step in a registry, :mod:`.labels` the oracle's
labels and their roles, :mod:`.probing` the probes in the loop, :mod:`.diagnosis` the loop's
diagnosis, :mod:`.stop` the stop rule.
"""

from chemgap.agent.loop.campaign import (
    INIT_STEP,
    Campaign,
    preflight,
    remediation_pending,
    run_campaign,
)
from chemgap.agent.loop.context import IterationContext, LoopContext
from chemgap.agent.loop.steps import STEP_NAMES, STEPS

__all__ = [
    "INIT_STEP",
    "STEPS",
    "STEP_NAMES",
    "Campaign",
    "IterationContext",
    "LoopContext",
    "preflight",
    "remediation_pending",
    "run_campaign",
]
