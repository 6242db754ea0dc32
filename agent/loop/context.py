"""What every loop step works with: the run, its spec, the executor, the clock and the labels.

:class:`LoopContext` is the campaign's run-wide services (the store and its layout, the spec,
the reporter, the executor, the wall clock summed over resumes, the structures by role);
:class:`IterationContext` is one iteration's view of it, the ``ctx`` a step's ``run(ctx)``
takes (docs/architecture.md, "The loop"). A step reads what the steps before it wrote through
``ctx.dir`` (:class:`chemgap.agent.layout.IterationLayout`) and ends with :meth:`finish`, which
records it in ``state.json``; nothing else in a step touches the state machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.layout import IterationLayout, RunLayout
from chemgap.agent.store import RunStatus, RunStore
from chemgap.common.keys import ISOLATED_ATOM_SPLIT, TEST_SPLIT
from chemgap.common.tasks import Executor

if TYPE_CHECKING:
    from chemgap.agent.trust import TrustLevels
    from chemgap.models.ensemble import Ensemble

Reporter = Callable[[str, dict[str, Any]], None]
"""``report(event, payload)``: the CLI's progress (``step``, ``train``, ``label``, ``note``,
``iteration``, ``remedy`` events)."""


def no_report(event: str, payload: dict[str, Any]) -> None:
    """A reporter that reports nothing (library use and tests)."""
    return None


class LoopContext:
    """The campaign's run-wide services, shared by every step of every iteration.

    Args:
        store: the run directory's store (state, labels, spec).
        report: progress callback (:data:`Reporter`).
        num_cpus: CPUs the exploration spreads its walkers over (>= 1).
        executor: where training, exploration and labelling tasks run (None: in-process).
    """

    def __init__(
        self,
        store: RunStore,
        *,
        report: Reporter = no_report,
        num_cpus: int = 1,
        executor: Executor | None = None,
    ):
        self.store = store
        self.spec = store.spec
        self.layout = RunLayout(store.root)
        self.report = report
        self.num_cpus = max(1, num_cpus)
        self.executor = executor
        self._t0 = time.monotonic()
        self._elapsed0 = float(store.state.elapsed_s)
        self._step_t0 = self._t0

    # ------------------------------------------------------------------ the clock
    @property
    def elapsed_s(self) -> float:
        """Campaign wall time so far, s, summed over resumes."""
        return self._elapsed0 + time.monotonic() - self._t0

    def begin(self, iteration: int, step: str, **payload: Any) -> None:
        """Start timing ``step`` and tell the reporter."""
        self._step_t0 = time.monotonic()
        self.report("step", {"iteration": iteration, "step": step, **payload})

    def step_seconds(self) -> float:
        """Wall seconds since the current step began."""
        return time.monotonic() - self._step_t0

    def timings(self, iteration: int, **seconds: float) -> dict[str, dict[str, float]]:
        """``state.json``'s timings with ``seconds`` (step -> s) set for ``iteration``."""
        timings = {k: dict(v) for k, v in self.store.state.timings.items()}
        timings.setdefault(str(iteration), {}).update(seconds)
        return timings

    def finish(self, iteration: int, step: str, **changes: Any) -> None:
        """Record ``step`` of ``iteration`` as finished (with its wall time) in ``state.json``."""
        took = self.step_seconds()
        self.record_cluster(iteration)  # before the state: a resume redoes this step's tasks
        self.store.write_state(
            iteration=iteration,
            step=step,
            elapsed_s=self.elapsed_s,
            status=RunStatus.RUNNING,
            timings=self.timings(iteration, **{step: round(took, 3)}),
            **changes,
        )

    def record_cluster(self, it: int | str) -> None:
        """``cluster.json``: the Ray nodes and where iteration ``it``'s tasks ran (or the
        experiment's, ``"remedies"``); a Ray executor only: in-process runs have no cluster.
        """
        record = getattr(self.executor, "record", None)
        if record is not None:
            record(self.layout.cluster, it)

    # ------------------------------------------------------------------ randomness
    def rng(self, *keys: int) -> np.random.Generator:
        """A generator seeded by the spec's master seed and ``keys`` (the same on resume)."""
        return np.random.default_rng([self.spec.seed, *keys])

    # ------------------------------------------------------------------ the labels
    @property
    def base_dir(self) -> Path:
        """Where the spec's relative paths (seed files, test files) are resolved."""
        return self.store.root

    def oracle_calls(self) -> int:
        """Oracle calls made so far (labels and failures in data.db, the test set's included)."""
        counts = self.store.label_counts()
        return counts["ok"] + counts["failed"]

    def test_calls(self) -> int:
        """Oracle calls spent on the test set (labels and failures)."""
        return self.store.db.count(split=TEST_SPLIT)

    def labelled(self, split: str | None = None) -> list[Atoms]:
        """Labelled structures (status ok) of ``split``; None: every split but the test set,
        which is never trained on, selected against or calibrated on, and the isolated atoms
        of the reference energies.
        """
        if split is not None:
            return self.store.structures(status="ok", split=split)
        return [
            a
            for a in self.store.structures(status="ok")
            if a.info.get("split") not in (TEST_SPLIT, ISOLATED_ATOM_SPLIT)
        ]

    def test_set(self) -> list[Atoms]:
        """The fixed labelled test set, in the order it was stored."""
        return self.store.structures(status="ok", split=TEST_SPLIT)

    def seeds(self) -> list[Atoms]:
        """The seed structures of the spec (the same for the same master seed)."""
        from chemgap.agent.seeds import generate_seeds

        return generate_seeds(self.spec.system, self.rng(0), self.base_dir)

    def known_keys(self) -> set[str]:
        """Structure keys of every row of data.db, labelled or failed (not pending)."""
        rows = self.store.db.select(include_data=False)
        return {row.get("key") for row in rows if row.get("status") != "pending"}

    def iteration(self, number: int) -> IterationContext:
        """Iteration ``number``'s context (its directory is made)."""
        return IterationContext(self, number)


@dataclass
class IterationContext:
    """One iteration's view of the loop: ``ctx.it``, ``ctx.dir``, ``ctx.ensemble()``, ...

    The loop's services are reached as ``ctx.loop`` (and ``ctx.spec``, ``ctx.store``).
    """

    loop: LoopContext
    it: int

    def __post_init__(self) -> None:
        self.loop.store.iteration_dir(self.it)  # made on first use, as the steps expect

    @property
    def spec(self) -> Any:
        """The campaign spec (:class:`chemgap.campaigns.spec.CampaignSpec`)."""
        return self.loop.spec

    @property
    def store(self) -> RunStore:
        """The run's store."""
        return self.loop.store

    @property
    def dir(self) -> IterationLayout:
        """``iterations/NNN``'s paths."""
        return self.loop.layout.iteration(self.it)

    @property
    def seed(self) -> int:
        """The iteration's seed for training, exploration and probes."""
        return self.spec.seed * 1000 + self.it

    def rng(self, *keys: int) -> np.random.Generator:
        """The loop's generator for this iteration and ``keys``."""
        return self.loop.rng(self.it, *keys)

    def begin(self, step: str, **payload: Any) -> None:
        """Start timing ``step`` of this iteration."""
        self.loop.begin(self.it, step, **payload)

    def finish(self, step: str, **changes: Any) -> None:
        """Record ``step`` of this iteration as finished."""
        self.loop.finish(self.it, step, **changes)

    def report(self, kind: str, /, **payload: Any) -> None:
        """Tell the reporter event ``kind`` of this iteration, with ``payload``."""
        self.loop.report(kind, {"iteration": self.it, **payload})

    def ensemble(self) -> Ensemble:
        """This iteration's trained ensemble (after the train step)."""
        from chemgap.models.ensemble import Ensemble

        return Ensemble.load(self.dir.models)

    def levels(self) -> TrustLevels:
        """The trust levels the calibrate step fitted."""
        from chemgap.agent.records import CalibrationRecord
        from chemgap.agent.trust import TrustLevels

        return TrustLevels(**CalibrationRecord.read(self.dir.calibration).trust)

    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON file a step before this one wrote."""
        return json.loads(path.read_text())
