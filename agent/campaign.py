"""The active-learning loop: a resumable state machine over train → calibrate → explore → select →
label → evaluate, each step's output persisted in the run directory before the next starts.

```
iteration 0:  seeds -> initial labels (a holdout fraction kept out of training)
iteration i:  train      iterations/NNN/models/           (K members as Ray tasks)
              calibrate  iterations/NNN/calibration.json  (std scales, trust levels)
              explore    iterations/NNN/exploration.json, candidates.extxyz, md_failures.extxyz
              select     iterations/NNN/selection.extxyz  (the batch the oracle will label)
              label      data.db, one row per result as it arrives
              evaluate   state.json history: validation MAE, accurate fraction; stop or go on
```

``state.json`` names the last *finished* step; :func:`run_campaign` on an existing run continues
with the next one. The label step skips every selected structure ``data.db`` already holds, so a
label in flight when a run died is redone once and never duplicated. Stop reasons: iteration cap,
oracle-call budget, wall-time budget (summed over resumes), convergence (accurate fraction above
its level and validation force MAE changing less than the tolerance for ``patience`` iterations).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.store import RunStatus, RunStore, atomic_write_text
from chemgap.common.metrics import score
from chemgap.common.tasks import Executor

log = logging.getLogger(__name__)

STEPS = ("train", "calibrate", "explore", "select", "label", "evaluate")
INIT_STEP = "init"  # before the initial labels are done
INITIAL_DONE = "initial_labels"

Reporter = Callable[[str, dict[str, Any]], None]


def _noop(event: str, payload: dict[str, Any]) -> None:
    return None


def _write_extxyz(path: Path, structures: list[Atoms]) -> None:
    """Extxyz written to a temp file and renamed: a crash leaves the old file or none."""
    from ase.io import write

    tmp = path.with_suffix(".tmp.extxyz")
    write(tmp, structures, format="extxyz")
    tmp.replace(path)


def _read_extxyz(path: Path) -> list[Atoms]:
    from ase.io import read

    if not path.exists() or path.stat().st_size == 0:
        return []
    images = read(path, index=":", format="extxyz")
    for atoms in images:
        atoms.calc = None
    return images


class Campaign:
    """Drives one run directory through the loop. Use :func:`run_campaign`."""

    def __init__(
        self,
        store: RunStore,
        *,
        report: Reporter = _noop,
        num_cpus: int = 1,
        executor: Executor | None = None,
    ):
        self.store = store
        self.spec = store.spec
        self.report = report
        self.num_cpus = max(1, num_cpus)
        self.executor = executor
        self._t0 = time.monotonic()
        self._elapsed0 = float(store.state.elapsed_s)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def elapsed_s(self) -> float:
        """Campaign wall time so far, s, summed over resumes."""
        return self._elapsed0 + time.monotonic() - self._t0

    def _finish_step(self, iteration: int, step: str, **changes: Any) -> None:
        self.store.write_state(
            iteration=iteration,
            step=step,
            elapsed_s=self.elapsed_s,
            status=RunStatus.RUNNING,
            **changes,
        )

    def _idir(self, iteration: int) -> Path:
        return self.store.iteration_dir(iteration)

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, *keys])

    def _base_dir(self) -> Path:
        return self.store.root

    def oracle_calls(self) -> int:
        """Oracle calls made so far (labels and failures in data.db)."""
        counts = self.store.label_counts()
        return counts["ok"] + counts["failed"]

    def labelled(self, split: str | None = None) -> list[Atoms]:
        """Labelled structures (status ok) of ``split`` (all splits for None)."""
        query = {"status": "ok"} if split is None else {"status": "ok", "split": split}
        return self.store.structures(**query)

    # ------------------------------------------------------------------ iteration 0
    def seeds(self) -> list[Atoms]:
        """The seed structures of the spec (the same for the same master seed)."""
        from chemgap.agent.seeds import generate_seeds

        return generate_seeds(self.spec.system, self._rng(0), self._base_dir())

    def initial_labels(self) -> None:
        """Draw the initial set from the seeds marked ``initial`` and label it."""
        seeds = self.seeds()
        pool = [a for a in seeds if self.spec.system.seeds[a.info["seed_index"]].initial]
        rng = self._rng(0, 1)
        n = min(self.spec.system.initial_labels, len(pool))
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
        n_hold = max(1, round(self.spec.system.holdout_fraction * n))
        hold = set(rng.choice(n, size=n_hold, replace=False).tolist())
        for i, atoms in enumerate(chosen):
            atoms.info["split"] = "holdout" if i in hold else "train"
        self.report("step", {"iteration": 0, "step": "label", "n": len(chosen)})
        self._label(chosen, iteration=0)
        if not self.labelled("train") or not self.labelled("holdout"):
            raise RuntimeError(
                "the oracle labelled too few initial structures to train and calibrate on "
                f"({self.store.label_counts()}); see 'ase db {self.store.root / 'data.db'}'"
            )
        self._finish_step(0, INITIAL_DONE)

    # ------------------------------------------------------------------ steps
    def step_train(self, it: int) -> None:
        """Train iteration ``it``'s ensemble on the train split (holdout for early stopping)."""
        from chemgap.models.ensemble import train_ensemble

        train = self.labelled("train")
        valid = self.labelled("holdout")

        def progress(event: Any) -> None:
            self.report("train", {"iteration": it, "event": event})

        self.report("step", {"iteration": it, "step": "train", "n": len(train)})
        train_ensemble(
            train,
            self.spec.model,
            self.spec.ensemble,
            self._idir(it) / "models",
            seed=self.spec.seed * 1000 + it,
            valid=valid,
            progress=progress,
            task_tag=f"iter {it}",
            executor=self.executor,
        )
        self._finish_step(it, "train")

    def _ensemble(self, it: int):
        from chemgap.models.ensemble import Ensemble

        return Ensemble.load(self._idir(it) / "models")

    def step_calibrate(self, it: int) -> None:
        """Calibrate the ensemble on the holdout; store scales and trust levels."""
        from chemgap.agent.trust import trust_levels

        self.report("step", {"iteration": it, "step": "calibrate"})
        ensemble = self._ensemble(it)
        holdout = self.labelled("holdout")
        cal = ensemble.calibrate(holdout)
        pred = ensemble.predict(holdout)
        levels = trust_levels(
            self.spec.exploration.trust,
            force_std_atom_cal=pred.force_std_atom_cal,
            numbers=pred.numbers,
            system_idx=pred.system_idx,
        )
        atomic_write_text(
            self._idir(it) / "calibration.json",
            json.dumps(
                {"calibration": cal.to_dict(), "trust": levels.to_dict()}, indent=2, default=float
            ),
        )
        self._finish_step(it, "calibrate")

    def _levels(self, it: int):
        from chemgap.agent.trust import TrustLevels

        data = json.loads((self._idir(it) / "calibration.json").read_text())["trust"]
        return TrustLevels(**data)

    def step_explore(self, it: int) -> None:
        """Run the walkers; store candidates, md_failures and the summary."""
        from chemgap.agent.explore import explore_groups

        cfg = self.spec.exploration
        seeds = self.seeds()
        rng = self._rng(it, 2)
        order = rng.permutation(len(seeds))
        starts = [seeds[order[i % len(seeds)]].copy() for i in range(cfg.walkers)]
        temps = [cfg.temperatures_K[i % len(cfg.temperatures_K)] for i in range(cfg.walkers)]
        groups = [f"{a.info['seed_kind']} {t:g} K" for a, t in zip(starts, temps, strict=True)]
        self.report("step", {"iteration": it, "step": "explore", "n": cfg.walkers})
        ensemble = self._ensemble(it)
        result = explore_groups(
            ensemble,
            starts,
            cfg,
            n_tasks=min(self.num_cpus, cfg.walkers),
            task_tag=f"iter {it}",
            temperatures_K=temps,
            groups=groups,
            levels=self._levels(it),
            seed=self.spec.seed * 1000 + it,
            executor=self.executor,
        )
        for frame in result.candidates:
            frame.info.update(iteration=it, source="explore")
        failures = []
        for f in result.failures:
            for k, frame in enumerate(f.frames):
                frame.info.update(iteration=it, md_failure=f.reason, failure_step=f.step, frame=k)
                failures.append(frame)
        idir = self._idir(it)
        _write_extxyz(idir / "candidates.extxyz", result.candidates)
        _write_extxyz(idir / "md_failures.extxyz", failures)
        fractions = result.fractions()
        total = {
            k: sum(c[k] for c in result.counts.values())
            for k in ("accurate", "candidate", "failed")
        }
        n = max(sum(total.values()), 1)
        summary = {
            "walkers": cfg.walkers,
            "steps": cfg.steps,
            "walker_steps": result.steps,
            "graph_builds": result.rebuilds,
            "candidates": len(result.candidates),
            "md_failures": len(result.failures),
            "counts": result.counts,
            "fractions": fractions,
            "overall": {k: v / n for k, v in total.items()},
        }
        atomic_write_text(idir / "exploration.json", json.dumps(summary, indent=2))
        self._finish_step(it, "explore")

    def step_select(self, it: int) -> None:
        """Pick the labelling batch from the candidates within the oracle budget."""
        from chemgap.agent.selection import Candidates, select
        from chemgap.oracle import cost_model

        idir = self._idir(it)
        candidates = _read_extxyz(idir / "candidates.extxyz")
        left = self.spec.budget.max_oracle_calls - self.oracle_calls()
        n_batch = max(0, min(self.spec.selection.batch_size, left))
        chosen: list[Atoms] = []
        info: dict[str, Any] = {"candidates": len(candidates), "batch": n_batch}
        self.report("step", {"iteration": it, "step": "select", "n": len(candidates)})
        if candidates and n_batch:
            ensemble = self._ensemble(it)
            labelled = self.labelled()
            cost = cost_model(self.spec.oracle)
            costs = np.array([cost(len(a)) for a in candidates])
            mean_cost = float(np.mean(costs))
            sel = select(
                Candidates(
                    uncertainty=[a.info["uncertainty"] for a in candidates],
                    descriptors=ensemble.descriptors(candidates),
                    elements=[frozenset(a.get_chemical_symbols()) for a in candidates],
                    cost=costs / mean_cost,
                ),
                budget=float(n_batch),
                strategy=self.spec.selection.strategy,
                quotas=self.spec.selection.per_element_quota,
                labelled_descriptors=ensemble.descriptors(labelled) if labelled else None,
                dedup_distance=self.spec.selection.dedup_distance,
                rng=self._rng(it, 3),
            )
            chosen = [candidates[i] for i in sel.indices][:n_batch]
            hold = self._rng(it, 4).random(len(chosen)) < self.spec.system.holdout_fraction
            for atoms, h in zip(chosen, hold, strict=True):
                atoms.info["split"] = "holdout" if h else "train"
            info.update(
                selected=len(chosen),
                duplicates=len(sel.duplicates),
                reasons=[sel.reason[i] for i in sel.indices][:n_batch],
            )
        _write_extxyz(idir / "selection.extxyz", chosen)
        atomic_write_text(idir / "selection.json", json.dumps(info, indent=2))
        self._finish_step(it, "select")

    def _label(self, structures: list[Atoms], *, iteration: int) -> None:
        from chemgap.oracle import check_backend, label_batch

        todo = [a for a in structures if not self.store.has(a)]
        if len(todo) < len(structures):
            log.info(
                "%d of %d already in data.db (resumed)",
                len(structures) - len(todo),
                len(structures),
            )
        if not todo:
            return
        check_backend(self.spec.oracle)
        done = 0

        def on_result(index: int, result: Any) -> None:
            nonlocal done
            src = todo[index]
            atoms = result.atoms
            self.store.add(
                atoms,
                iteration=iteration,
                source=src.info.get("source", "seed"),
                seed_kind=src.info.get("seed_kind"),
                walker=src.info.get("walker"),
                group=src.info.get("group"),
                temperature_K=src.info.get("temperature_K"),
                uncertainty=src.info.get("uncertainty"),
                split=src.info.get("split", "train"),
                oracle=str(self.spec.oracle.name),
                status=result.status,
                seconds=round(float(result.seconds), 6),
            )
            done += 1
            self.report(
                "label",
                {"iteration": iteration, "done": done, "total": len(todo), "status": result.status},
            )

        summary = label_batch(
            todo,
            self.spec.oracle,
            on_result=on_result,
            iteration=iteration,
            executor=self.executor,
        )
        log.info("iteration %d labels: %s", iteration, summary.describe())

    def step_label(self, it: int) -> None:
        """Label the selected batch (each label written to data.db as it arrives)."""
        chosen = _read_extxyz(self._idir(it) / "selection.extxyz")
        self.report("step", {"iteration": it, "step": "label", "n": len(chosen)})
        self._label(chosen, iteration=it)
        self._finish_step(it, "label")

    def step_evaluate(self, it: int) -> dict[str, Any]:
        """Validation errors of this iteration's ensemble on the holdout, and the stop check."""
        self.report("step", {"iteration": it, "step": "evaluate"})
        ensemble = self._ensemble(it)
        holdout = self.labelled("holdout")
        errors = score(ensemble.predict(holdout), holdout)
        cal = json.loads((self._idir(it) / "calibration.json").read_text())["calibration"]
        expl = json.loads((self._idir(it) / "exploration.json").read_text())
        counts = self.store.label_counts()
        row = {
            "iteration": it,
            "labels_ok": counts["ok"],
            "labels_failed": counts["failed"],
            "energy_mae_per_atom": errors.energy_mae_per_atom,
            "force_mae": errors.force_mae,
            "spearman_atom": cal.get("metrics", {}).get("calibrated", {}).get("spearman_atom"),
            "accurate": expl["overall"]["accurate"],
            "candidate": expl["overall"]["candidate"],
            "failed": expl["overall"]["failed"],
            "elapsed_s": self.elapsed_s,
        }
        row.update(self._diagnose(it))
        history = [h for h in self.store.state.history if h["iteration"] != it] + [row]
        reason = self.stop_reason(history)
        status = RunStatus.DONE if reason else RunStatus.RUNNING
        self.store.write_state(
            iteration=it,
            step="evaluate",
            history=history,
            stop_reason=reason,
            status=status,
            elapsed_s=self.elapsed_s,
        )
        self.report("iteration", row)
        return row

    def _diagnose(self, it: int) -> dict[str, Any]:
        """Failure regions of this iteration's ensemble on data it was not trained on: the
        holdout and the structures labelled in this iteration (the ones it was unsure about).
        Writes ``regions.json`` in the run and in ``iterations/NNN``. A diagnosis that cannot be
        made (too few structures for a statistic, say) is logged and recorded, not fatal.
        """
        from chemgap.agent.diagnostics import REGIONS_FILE
        from chemgap.agent.diagnostics.diagnose import diagnose, load_regions, write_regions

        self.report("step", {"iteration": it, "step": "diagnose"})
        unseen = [
            a
            for a in self.labelled()
            if a.info.get("split") == "holdout" or a.info.get("iteration") == it
        ]
        # the previous iteration's own file: the run-level one may already be this iteration's
        # if a run was killed between writing it and recording the step
        previous = None
        before = self.store.iteration_dir(it - 1, create=False) / REGIONS_FILE
        if before.exists():
            try:
                previous, _ = load_regions(before)
            except ValueError:
                log.warning("ignoring an unreadable %s", before)
        try:
            result = diagnose(
                unseen,
                self._ensemble(it),
                self.spec.diagnostics,
                seed=self.spec.seed,
                iteration=it,
                previous=previous,
            )
        except Exception as exc:
            log.warning("iteration %d: diagnosis failed: %s", it, exc, exc_info=True)
            return {
                "regions": None,
                "silent_regions": None,
                "diagnosis_error": f"{type(exc).__name__}: {exc}",
            }
        write_regions(result, self._idir(it))
        write_regions(result, self.store.root)
        regions = result.regions
        top = regions[0] if regions else None
        return {
            "regions": len(regions),
            "silent_regions": sum(bool(getattr(r, "silent", False)) for r in regions),
            "top_region": getattr(top, "rule", None),
            "diagnosed_structures": len(unseen),
        }

    # ------------------------------------------------------------------ stopping
    def stop_reason(self, history: list[dict[str, Any]]) -> str | None:
        """Why the campaign stops after ``history``'s last iteration, or None to go on."""
        b = self.spec.budget
        it = history[-1]["iteration"] if history else 0
        conv = b.convergence
        recent = history[-(conv.patience + 1) :]
        if (
            len(recent) == conv.patience + 1
            and all(h["accurate"] >= conv.accurate_fraction for h in recent[1:])
            and all(
                abs(b2["force_mae"] - b1["force_mae"]) < conv.force_mae_tol
                for b1, b2 in itertools.pairwise(recent)
            )
        ):
            return (
                f"converged: accurate fraction ≥ {conv.accurate_fraction:g} and force MAE "
                f"change < {conv.force_mae_tol:g} eV/Å for {conv.patience} iterations"
            )
        if it >= b.max_iterations:
            return f"iteration cap ({b.max_iterations})"
        if self.oracle_calls() >= b.max_oracle_calls:
            return f"oracle-call budget ({b.max_oracle_calls})"
        # another iteration is started only if one more like the last fits in the budget
        last = (
            history[-1]["elapsed_s"] - (history[-2]["elapsed_s"] if len(history) > 1 else 0)
            if history
            else 0.0
        )
        if self.elapsed_s + last > b.wall_time_s:
            return (
                f"wall-time budget ({b.wall_time_s:g} s; another iteration of ~{last:.0f} s "
                "would exceed it)"
            )
        return None

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        """Continue from where ``state.json`` says; return the stop reason."""
        state = self.store.state
        if state.status == RunStatus.DONE:
            return state.stop_reason or "done"
        if state.step == INIT_STEP:
            self.initial_labels()
        it, last = self.store.state.iteration, self.store.state.step
        if last in (INITIAL_DONE, "evaluate"):
            it, nxt = it + 1, 0
            reason = self.stop_reason(self.store.state.history) if last == "evaluate" else None
            if reason:
                self.store.write_state(status=RunStatus.DONE, stop_reason=reason)
                return reason
        else:
            nxt = STEPS.index(last) + 1
        while True:
            for step in STEPS[nxt:]:
                getattr(self, f"step_{step}")(it)
            reason = self.store.state.stop_reason
            if reason:
                log.info("stopping: %s", reason)
                return reason
            it, nxt = it + 1, 0


def run_campaign(
    store: RunStore,
    *,
    report: Reporter = _noop,
    num_cpus: int = 1,
    executor: Executor | None = None,
) -> str:
    """Drive ``store``'s run to its end (or its next interruption), holding the run's lock.

    Training, exploration and labelling run their tasks on ``executor`` (the CLI passes the Ray
    runtime's; None runs everything in this process, see :mod:`chemgap.common.tasks`).

    A ``KeyboardInterrupt`` marks the run ``interrupted`` (resumable) and propagates; any other
    exception marks it ``failed`` with the error as the stop reason and propagates.
    """
    with store.lock():
        campaign = Campaign(store, report=report, num_cpus=num_cpus, executor=executor)
        try:
            reason = campaign.run()
        except KeyboardInterrupt:
            store.write_state(status=RunStatus.INTERRUPTED, elapsed_s=campaign.elapsed_s)
            raise
        except Exception as exc:
            store.write_state(
                status=RunStatus.FAILED,
                stop_reason=f"{type(exc).__name__}: {exc}",
                elapsed_s=campaign.elapsed_s,
            )
            raise
        return reason
