"""The loop's steps, in order: one module each, a ``run(ctx)`` over an
:class:`chemgap.agent.loop.context.IterationContext` (docs/architecture.md, "The loop").

Each step reads what the steps before it wrote in ``iterations/NNN`` and ends by recording
itself in ``state.json`` (``ctx.finish(name)``), so a killed run resumes at the next step.
Adding a step is one module here and one entry in :data:`STEPS` (and its name in
:data:`chemgap.agent.store.LOOP_STEPS`, the names ``state.json`` may hold).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.loop.steps import calibrate, evaluate, explore, label, probe, select, train
from chemgap.agent.store import LOOP_STEPS

StepFn = Callable[[IterationContext], Any]

STEPS: dict[str, StepFn] = {
    "train": train.run,
    "calibrate": calibrate.run,
    "explore": explore.run,
    "probe": probe.run,
    "select": select.run,
    "label": label.run,
    "evaluate": evaluate.run,
}
"""Step name -> its ``run``, in the order an iteration runs them."""

STEP_NAMES: tuple[str, ...] = tuple(STEPS)
if STEP_NAMES != LOOP_STEPS:  # state.json validates step names against LOOP_STEPS
    raise ImportError(f"STEPS {STEP_NAMES} must match chemgap.agent.store.LOOP_STEPS")

__all__ = ["STEPS", "STEP_NAMES", "StepFn"]
