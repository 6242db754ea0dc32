"""The active-learning loop: a resumable state machine over train → calibrate → explore → probe →
select → label → evaluate, each step's output persisted in the run directory before the next
starts (docs/architecture.md, "The loop").

```
iteration 0:  seeds -> initial labels, the test set           (chemgap.agent.loop.labels)
iteration i:  train      iterations/NNN/models/                (K members as Ray tasks)
              calibrate  iterations/NNN/calibration.json       (std scales, trust levels)
              explore    iterations/NNN/exploration.json, candidates.extxyz, md_failures.extxyz
              probe      iterations/NNN/probes/probes.json, candidates.extxyz (when due)
              select     iterations/NNN/selection.extxyz       (the batch the oracle will label)
              label      data.db, one row per result as it arrives
              evaluate   state.json history: errors, regions, probes; stop or go on
              (report)   RUN/report.html (:mod:`chemgap.agent.report`), also after the experiment
```

Each step is a module of :mod:`chemgap.agent.loop.steps`; :class:`Campaign` holds only what
binds them: where the run stands, resuming, the report after each iteration, the remediation
experiment after the loop. ``state.json`` names the last *finished* step; :func:`run_campaign`
on an existing run continues with the next one.

Every label outside the test set has one role (its ``split``, :mod:`chemgap.common.keys`), so no
number is scored on the data it was fitted on: ``train`` (the members' training data),
``holdout`` (``system.holdout_fraction``: early stopping and the learning curve's validation
errors), ``calibration`` (``system.calibration_fraction``: the uncertainty calibration and the
trust levels, *scored* on the holdout and the test set) — in each iteration both drawn at random
from the frames the walkers visited, not from the selection's top (``steps/select.py``) —
``test`` (the fixed yardstick,
:mod:`chemgap.agent.testset`, never fitted on) and ``isolated_atom`` (the models' reference
energies E0, :mod:`chemgap.agent.reference_energies`, never trained on).
"""

from __future__ import annotations

import logging
from typing import Any

from chemgap.agent.layout import RunLayout
from chemgap.agent.loop.context import LoopContext, Reporter, no_report
from chemgap.agent.loop.labels import INITIAL_DONE, initial_labels
from chemgap.agent.loop.steps import STEP_NAMES, STEPS
from chemgap.agent.loop.stop import stop_reason
from chemgap.agent.report import try_write_report
from chemgap.agent.store import RunStatus, RunStore
from chemgap.common.files import atomic_write_text
from chemgap.common.tasks import Executor

log = logging.getLogger(__name__)

INIT_STEP = "init"  # state.json's step before the initial labels are done
LAST_STEP = STEP_NAMES[-1]


class Campaign:
    """Drives one run directory through the loop. Use :func:`run_campaign`.

    Args:
        store: the run directory's store.
        report: progress callback (:data:`chemgap.agent.loop.context.Reporter`).
        num_cpus: CPUs the exploration spreads its walkers over.
        executor: where tasks run (None: in this process).
    """

    def __init__(
        self,
        store: RunStore,
        *,
        report: Reporter = no_report,
        num_cpus: int = 1,
        executor: Executor | None = None,
    ):
        self.loop = LoopContext(store, report=report, num_cpus=num_cpus, executor=executor)
        self.store = store
        self.spec = store.spec

    @property
    def elapsed_s(self) -> float:
        """Campaign wall time so far, s, summed over resumes."""
        return self.loop.elapsed_s

    def stop_reason(self, history: list[dict[str, Any]]) -> str | None:
        """Why the campaign stops after ``history`` (:func:`chemgap.agent.loop.stop.stop_reason`
        with this run's budget, oracle calls and wall time).
        """
        return stop_reason(
            history,
            self.spec.budget,
            oracle_calls=self.loop.oracle_calls(),
            elapsed_s=self.loop.elapsed_s,
        )

    def run(self) -> str:
        """Continue from where ``state.json`` says; return the stop reason."""
        state = self.store.state
        if state.status == RunStatus.DONE:
            return state.stop_reason or "done"
        if state.step == INIT_STEP:
            initial_labels(self.loop)
        it, last = self.store.state.iteration, self.store.state.step
        if last in (INITIAL_DONE, LAST_STEP):
            it, nxt = it + 1, 0
            reason = self.stop_reason(self.store.state.history) if last == LAST_STEP else None
            if reason:
                self.store.write_state(status=RunStatus.DONE, stop_reason=reason)
                return reason
        else:
            nxt = STEP_NAMES.index(last) + 1
        while True:
            ctx = self.loop.iteration(it)
            for name in STEP_NAMES[nxt:]:
                STEPS[name](ctx)
            self.loop.record_cluster(it)
            try_write_report(self.store.root)  # RUN/report.html; a failure is only a warning
            reason = self.store.state.stop_reason
            if reason:
                log.info("stopping: %s", reason)
                return reason
            it, nxt = it + 1, 0

    def remediate(self) -> dict[str, Any] | None:
        """Run (or continue) the spec's remediation experiment on the finished loop, into
        ``RUN/remedies`` (:mod:`chemgap.agent.remedies`); None when the spec asks for none.

        An arm refused for want of data the loop did not produce (no failure region to
        target, say) does not fail the finished campaign: the refusal is logged and kept in
        ``remedies/refused.txt``. ``RUN/report.html`` is rewritten after the experiment.
        """
        from chemgap.agent.errors import RemedyRefused
        from chemgap.agent.remedies import run_experiment

        cfg = self.spec.remediation
        if not cfg.remedies or self.store.state.status != RunStatus.DONE:
            return None
        refused = self.loop.layout.remedies.refused
        report = self.loop.report

        def forward(event: str, payload: dict[str, Any]) -> None:
            report("remedy", {"event": event, **payload})

        report("remedy", {"event": "start", "remedies": [str(r) for r in cfg.remedies]})
        try:
            summary = run_experiment(self.store.root, cfg, executor=self.loop.executor,
                                     report=forward)  # fmt: skip
        except RemedyRefused as exc:
            log.warning("remediation experiment refused: %s", exc)
            refused.parent.mkdir(exist_ok=True)
            atomic_write_text(refused, f"{exc}\n")
            summary = None
        else:
            refused.unlink(missing_ok=True)
            report("remedy", {"event": "done", "summary": summary})
        self.loop.record_cluster("remedies")  # the experiment's tasks
        try_write_report(self.store.root)  # with the experiment; a failure is only a warning
        return summary


def preflight(spec: Any, *, trust_code: bool = False) -> None:
    """Refuse, in one sentence, a campaign that cannot run, before anything is written: an
    ``ase`` oracle the user did not trust (:func:`chemgap.oracle.require_trust`; checked before
    anything is imported), an oracle whose backend is missing, probes that cannot run on the
    system or with the oracle.

    Raises:
        BadInput: naming the section, the value and what is allowed.
    """
    from chemgap.agent.errors import BadInput
    from chemgap.oracle import UntrustedCode, check_backend, require_trust

    try:
        require_trust(spec.oracle, trust_code)
    except UntrustedCode as exc:
        raise BadInput(str(exc)) from None
    try:
        check_backend(spec.oracle)
    except ValueError as exc:
        raise BadInput(f"oracle: {exc}") from None
    if spec.remediation.remedies:
        from chemgap.agent.remedies.arms import check_spec

        check_spec(spec)
    if spec.probes.names:
        from chemgap.agent.probes import ProbeSystem, check_probes

        check_probes(
            ProbeSystem.from_config(spec.system, name=spec.name), spec.probes, oracle=spec.oracle
        )


def run_campaign(
    store: RunStore,
    *,
    report: Reporter = no_report,
    num_cpus: int = 1,
    executor: Executor | None = None,
) -> str:
    """Drive ``store``'s run to its end (or its next interruption), holding the run's lock.

    Training, exploration and labelling run their tasks on ``executor`` (the CLI passes the Ray
    runtime's; None runs everything in this process, see :mod:`chemgap.common.tasks`).

    A ``KeyboardInterrupt`` marks the run ``interrupted`` (resumable) and propagates; any other
    exception marks it ``failed`` with the error as the stop reason and propagates. When that
    record cannot be written (a full disk), the previous ``state.json`` is kept whole, a warning
    is logged and the original exception is still the one that propagates.

    Raises:
        RunDirError: the run is driven by another process, or its directory is read-only.
    """
    with store.lock():
        campaign = Campaign(store, report=report, num_cpus=num_cpus, executor=executor)
        try:
            reason = campaign.run()
            campaign.remediate()
        except KeyboardInterrupt:
            store.try_write_state(status=RunStatus.INTERRUPTED, elapsed_s=campaign.elapsed_s)
            raise
        except Exception as exc:
            store.try_write_state(
                status=RunStatus.FAILED,
                stop_reason=f"{type(exc).__name__}: {exc}",
                elapsed_s=campaign.elapsed_s,
            )
            raise
        return reason


def remediation_pending(store: RunStore) -> bool:
    """Whether ``store``'s loop is done but the spec's remediation experiment is not."""
    remedies = RunLayout(store.root).remedies
    return (
        bool(store.spec.remediation.remedies)
        and store.state.status == RunStatus.DONE
        and not remedies.results.exists()
        and not remedies.refused.exists()
    )
