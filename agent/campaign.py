"""The active-learning loop: a resumable state machine over train → calibrate → explore → probe →
select → label → evaluate, each step's output persisted in the run directory before the next
starts.

```
iteration 0:  seeds -> initial labels, the test set
iteration i:  train      iterations/NNN/models/           (K members as Ray tasks)
              calibrate  iterations/NNN/calibration.json  (std scales, trust levels)
              explore    iterations/NNN/exploration.json, candidates.extxyz, md_failures.extxyz
              probe      iterations/NNN/probes/probes.json, candidates.extxyz (when due)
              select     iterations/NNN/selection.extxyz  (the batch the oracle will label)
              label      data.db, one row per result as it arrives
              evaluate   state.json history: validation MAE, accurate fraction; stop or go on
              (report)   RUN/report.html (:mod:`chemgap.agent.report`), also after the experiment
```

Probes (:mod:`chemgap.agent.probes`, the spec's ``probes`` section) run on the iteration's
ensemble every ``probes.every`` iterations in the probe step, and once more after the last
iteration if it was not a probe iteration (``every`` = 0: only then). A failed probe is a
finding of the iteration (``probes_failed`` in its history row); the structures of the probes
that failed (or where the members disagree most), up to ``probes.candidates_per_probe`` each,
are labelled first in the same iteration (at most half the batch; ``source = probe`` in
``data.db``), so the loop learns the physics it got wrong even where its uncertainty is low.
The oracle calls a probe makes for its reference curves are counted in ``probes.json``, not in
the labelling budget. A probe that raises is recorded, never fatal.

Every label outside the test set has one role (its ``split``), so no number is scored on the
data it was fitted on:

- ``train``: the members' training data;
- ``holdout`` (``system.holdout_fraction``): early stopping and the validation errors of the
  learning curve;
- ``calibration`` (``system.calibration_fraction``): the fit of the uncertainty calibration and
  of the calibrated trust levels; the calibration is *scored* on the holdout and the test set;
- ``test``: the fixed yardstick (:mod:`chemgap.agent.testset`), never fitted on;
- ``isolated_atom``: one isolated atom per element, whose energies are the models' reference
  energies E0 (:mod:`chemgap.agent.reference_energies`), never trained on.

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

from chemgap.agent.report import try_write_report
from chemgap.agent.store import RunStatus, RunStore, atomic_write_text, structure_key
from chemgap.agent.summary import PROBES_FILE  # at the run's root too: the last probe run
from chemgap.agent.testset import TEST_SPLIT
from chemgap.campaigns.spec import held_out_counts
from chemgap.common.files import atomic_write
from chemgap.common.keys import ISOLATED_ATOM_SPLIT
from chemgap.common.metrics import score
from chemgap.common.tasks import Executor

log = logging.getLogger(__name__)

STEPS = ("train", "calibrate", "explore", "probe", "select", "label", "evaluate")
INIT_STEP = "init"  # before the initial labels are done
INITIAL_DONE = "initial_labels"
TEST_RESIDUALS = "test_residuals.npz"  # the iteration's ensemble on the test set (raw spread)
SELECTED_RESIDUALS = "selected_residuals.npz"  # ... on the structures it chose, once labelled
HOLDOUT, CALIBRATION = "holdout", "calibration"  # the splits of the held-out roles
PROBES_DIR = "probes"  # iterations/NNN/probes/: probes.json, candidates.extxyz
PROBE_SHARE = 0.5  # the most of a labelling batch probe-sourced structures may take

Reporter = Callable[[str, dict[str, Any]], None]


def _noop(event: str, payload: dict[str, Any]) -> None:
    return None


def _write_extxyz(path: Path, structures: list[Atoms]) -> None:
    """Write extxyz atomically (:func:`chemgap.common.files.atomic_write`): a crash or a power
    cut leaves the old file or the new one, never a torn one.
    """
    from ase.io import write

    atomic_write(path, lambda handle: write(handle, structures, format="extxyz"))


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
        self._step_t0 = self._t0

    # ------------------------------------------------------------------ bookkeeping
    @property
    def elapsed_s(self) -> float:
        """Campaign wall time so far, s, summed over resumes."""
        return self._elapsed0 + time.monotonic() - self._t0

    def _begin(self, iteration: int, step: str, **payload: Any) -> None:
        """Start timing ``step`` and tell the reporter."""
        self._step_t0 = time.monotonic()
        self.report("step", {"iteration": iteration, "step": step, **payload})

    def _timings(self, iteration: int, **seconds: float) -> dict[str, dict[str, float]]:
        timings = {k: dict(v) for k, v in self.store.state.timings.items()}
        timings.setdefault(str(iteration), {}).update(seconds)
        return timings

    def _finish_step(self, iteration: int, step: str, **changes: Any) -> None:
        took = time.monotonic() - self._step_t0
        self._record_cluster(iteration)  # before the state: a resume redoes this step's tasks
        self.store.write_state(
            iteration=iteration,
            step=step,
            elapsed_s=self.elapsed_s,
            status=RunStatus.RUNNING,
            timings=self._timings(iteration, **{step: round(took, 3)}),
            **changes,
        )

    def _idir(self, iteration: int) -> Path:
        return self.store.iteration_dir(iteration)

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, *keys])

    def _base_dir(self) -> Path:
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
        n_hold, n_cal = held_out_counts(self.spec.system, n)
        roles = np.array(["train"] * n, dtype=object)
        roles[rng.choice(n, size=n_hold + n_cal, replace=False)] = [HOLDOUT] * n_hold + [
            CALIBRATION
        ] * n_cal
        for atoms, role in zip(chosen, roles, strict=True):
            atoms.info["split"] = str(role)
        self._begin(0, "label", n=len(chosen))
        self._label(chosen, iteration=0)
        self._label_test_set()
        if not all(self.labelled(split) for split in ("train", HOLDOUT, CALIBRATION)):
            raise RuntimeError(
                "the oracle labelled too few initial structures to train, validate and "
                "calibrate on "
                f"({self.store.label_counts()}); see 'ase db {self.store.root / 'data.db'}'"
            )
        self._finish_step(0, INITIAL_DONE)

    def _label_test_set(self) -> None:
        """Label the fixed test set (or store the user's labelled file as it is)."""
        from chemgap.agent.testset import draw_test_set, read_test_file

        cfg = self.spec.test_set
        if cfg.file is not None:
            for atoms in read_test_file(self.spec):
                if not self.store.has(atoms):
                    self.store.add(
                        atoms, iteration=0, oracle="file", status="ok", **_provenance(atoms)
                    )
            return
        if cfg.per_kind == 0:
            return
        test = draw_test_set(self.spec, self._rng(0, 9), self._base_dir())
        self.report("step", {"iteration": 0, "step": "test", "n": len(test)})
        self._label(test, iteration=0)

    # ------------------------------------------------------------------ steps
    def step_train(self, it: int) -> None:
        """Train iteration ``it``'s ensemble on the train split (holdout for early stopping).

        The members know every element of the spec's seeds, also those the labels lack so far
        (their reference energy is 0 and their embedding untrained until labels arrive): a
        model trained on Si alone is explored, scored and diagnosed on Ge, where it fails.
        """
        from chemgap.agent.reference_energies import label_isolated_atoms, training_e0
        from chemgap.models.ensemble import train_ensemble

        train = self.labelled("train")
        valid = self.labelled(HOLDOUT)
        elements = sorted(self.spec.elements(self._base_dir()))

        def progress(event: Any) -> None:
            self.report("train", {"iteration": it, "event": event})

        def say(text: str) -> None:
            log.info("%s", text)
            self.report("note", {"iteration": it, "text": text})

        label_isolated_atoms(self.store, elements, executor=self.executor, say=say)
        e0 = training_e0(self.store, elements)
        self._begin(it, "train", n=len(train))
        train_ensemble(
            train,
            e0.model,
            self.spec.ensemble,
            self._idir(it) / "models",
            seed=self.spec.seed * 1000 + it,
            valid=valid,
            elements=elements,
            progress=progress,
            task_tag=f"iter {it}",
            executor=self.executor,
            **e0.kwargs,
        )
        self._finish_step(it, "train")

    def _ensemble(self, it: int):
        from chemgap.models.ensemble import Ensemble

        return Ensemble.load(self._idir(it) / "models")

    def step_calibrate(self, it: int) -> None:
        """Fit the uncertainty calibration and the trust levels on the calibration split; score
        them on the holdout and the test set's ID and OOD parts (data the fit never saw), and
        against a calibration that also uses the loop's own labels; store scales, checks, trust
        levels, the holdout errors and which data each number comes from.
        """
        from chemgap.agent.evaluation import calibration_checks, compare_calibrations
        from chemgap.agent.trust import trust_levels
        from chemgap.models.calibration import Residuals, calibration_quality, fit_calibration

        self._begin(it, "calibrate")
        ensemble = self._ensemble(it)
        fit_set, holdout = self.labelled(CALIBRATION), self.labelled(HOLDOUT)
        if not fit_set:
            raise RuntimeError(
                f"iteration {it}: no labelled structure has split '{CALIBRATION}' to fit the "
                "calibration on (a run started by an older chemgap? start a new run)"
            )
        raw_fit = ensemble.predict(fit_set, calibrated=False)
        res = Residuals.from_prediction(raw_fit, fit_set)
        raw = ensemble.predict(holdout, calibrated=False)
        res_hold = Residuals.from_prediction(raw, holdout)
        cal = fit_calibration(res)
        cal.metrics = {
            "raw": calibration_quality(res_hold, None),
            "calibrated": calibration_quality(res_hold, cal),
            "scored_on": f"{HOLDOUT} ({len(holdout)} structures, not fitted on)",
        }
        ensemble.calibration = cal
        ensemble.save_metadata()
        levels = trust_levels(
            self.spec.exploration.trust,
            force_std_atom_cal=raw_fit.force_std_atom * cal.force_scales_for(raw_fit.numbers),
            numbers=raw_fit.numbers,
            system_idx=raw_fit.system_idx,
        )
        idir = self._idir(it)
        test = self.test_set()
        test_res = None
        if test:
            test_res = Residuals.from_prediction(ensemble.predict(test, calibrated=False), test)
            test_res.save(idir / TEST_RESIDUALS)
        checks = calibration_checks(
            cal, fitted_on=res, held_out=res_hold, test=test_res, test_structures=test
        )
        payload = {
            "calibration": cal.to_dict(),
            "trust": levels.to_dict(),
            "holdout_errors": score(raw, holdout).to_dict(),
            "checks": checks,
            "roles": {
                "early_stopping": f"{HOLDOUT} ({len(holdout)} structures)",
                "holdout_errors": f"{HOLDOUT} ({len(holdout)} structures)",
                "calibration_fit": f"{CALIBRATION} ({len(fit_set)} structures)",
                "trust_levels": f"{CALIBRATION} ({len(fit_set)} structures)",
                "calibration.metrics": f"{HOLDOUT} ({len(holdout)} structures)",
                "checks.fitted_on": f"{CALIBRATION} (the fitting data: describes the fit only)",
                "checks.held_out": f"{HOLDOUT} ({len(holdout)} structures)",
                "checks.test_id, checks.test_ood": f"{TEST_SPLIT} ({len(test)} structures)",
            },
            "loop": None,
        }
        earlier = [self._idir(j) / SELECTED_RESIDUALS for j in range(1, it)]
        parts = [Residuals.load(path) for path in earlier if path.exists()]
        if parts:
            both = Residuals.concat([res, *parts])
            cal_loop = fit_calibration(both)
            loop_checks = calibration_checks(
                cal_loop, fitted_on=both, held_out=res_hold, test=test_res, test_structures=test
            )
            payload["loop"] = {
                "calibration": cal_loop.to_dict(),
                "loop_structures": sum(part.n_structures for part in parts),
                "checks": loop_checks,
                **compare_calibrations(checks, loop_checks),
            }
        atomic_write_text(idir / "calibration.json", json.dumps(payload, indent=2, default=float))
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
        self._begin(it, "explore", n=cfg.walkers)
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

    def probes_due(self, it: int) -> bool:
        """Whether the probe step runs the probes in iteration ``it`` (every ``every``)."""
        cfg = self.spec.probes
        return bool(cfg.names) and cfg.every > 0 and it % cfg.every == 0

    def step_probe(self, it: int) -> None:
        """Run the probes when due (see the module docstring); otherwise just pass."""
        self._begin(it, "probe", n=len(self.spec.probes.names) if self.probes_due(it) else 0)
        if self.probes_due(it):
            self._run_probes(it)
        self._finish_step(it, "probe")

    def _run_probes(self, it: int) -> dict[str, Any]:
        """Probe iteration ``it``'s ensemble against the oracle; write ``probes/probes.json``
        and the candidates there, and ``probes.json`` at the run's root. Never raises: a probe
        that raised is in the report, a run that could not start is recorded as an error.

        Returns:
            The history fields: ``probes_run``, ``probes_failed``, ``probes_passed``,
            ``probe_oracle_calls``, ``probe_s``.
        """
        from chemgap.agent.probes import ProbeSystem, run_probes, write_report

        cfg = self.spec.probes
        out = self._idir(it) / PROBES_DIR
        t0 = time.monotonic()
        try:
            system = ProbeSystem.from_config(self.spec.system, self._base_dir(), self.spec.name)
            report = run_probes(
                self._ensemble(it),
                self.spec.oracle,
                system,
                cfg,
                seed=self.spec.seed * 1000 + it,
                temperatures_K=self.spec.exploration.temperatures_K,
            )
        except Exception as exc:
            log.warning("iteration %d: probes could not run: %s", it, exc, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"passed": False, "failed": [], "error": error, "iteration": it})
            atomic_write_text(out / PROBES_FILE, text)
            atomic_write_text(self.store.root / PROBES_FILE, text)
            (out / "candidates.extxyz").unlink(missing_ok=True)
            return {"probes_run": 0, "probes_failed": [], "probes_passed": False}
        report.meta["iteration"] = it
        write_report(report, out, per_probe=cfg.candidates_per_probe)
        text = (out / PROBES_FILE).read_text()
        atomic_write_text(self.store.root / PROBES_FILE, text)
        failed = report.failed()
        log.info(
            "iteration %d probes: %d run, failed: %s (%.1f s)",
            it,
            len(report.results),
            ", ".join(failed) or "none",
            report.seconds,
        )
        return {
            "probes_run": len(report.results),
            "probes_failed": failed,
            "probes_passed": report.passed,
            "probe_oracle_calls": report.meta.get("oracle_calls"),
            "probe_s": round(time.monotonic() - t0, 3),
        }

    def _probe_fields(self, it: int) -> dict[str, Any]:
        """The history fields of this iteration's probe run, from its ``probes.json``."""
        path = self._idir(it) / PROBES_DIR / PROBES_FILE
        if not path.exists():
            return {}
        payload = json.loads(path.read_text())
        if payload.get("error"):
            return {"probes_run": 0, "probes_failed": [], "probes_passed": False}
        return {
            "probes_run": len(payload.get("probes", [])),
            "probes_failed": list(payload.get("failed", [])),
            "probes_passed": bool(payload.get("passed")),
            "probe_oracle_calls": payload.get("meta", {}).get("oracle_calls"),
            "probe_s": payload.get("seconds"),
        }

    def _probe_candidates(self, it: int) -> list[Atoms]:
        """This iteration's probe-sourced structures (none when no probe ran), with the
        ensemble's calibrated uncertainty, as the explorer's candidates carry it; those the
        oracle would refuse as unphysical (:func:`chemgap.oracle.triage.check_geometry`) are
        dropped rather than spent.
        """
        from chemgap.oracle.triage import check_geometry

        path = self._idir(it) / PROBES_DIR / "candidates.extxyz"
        if not self.probes_due(it) or not path.exists():
            return []
        found = _read_extxyz(path)
        factor = self.spec.oracle.min_distance_factor
        refused = [a for a in found if check_geometry(a, factor) is not None]
        if refused:  # e.g. a dimer's repulsive wall, closer than the oracle is asked about
            log.info("%d probe structures the oracle would refuse (too close)", len(refused))
            found = [a for a in found if check_geometry(a, factor) is None]
        if found:
            pred = self._ensemble(it).predict(found)
            for k, atoms in enumerate(found):
                atoms.info.update(uncertainty=float(pred.max_force_std_cal[k]), iteration=it)
        return found

    def step_select(self, it: int) -> None:
        """Pick the labelling batch from the candidates within the oracle budget: the probes'
        structures first (up to :data:`PROBE_SHARE` of the batch), then the explorer's by the
        selection strategy.
        """
        from chemgap.agent.selection import Candidates, select
        from chemgap.oracle import cost_model

        idir = self._idir(it)
        known = self._known_keys()  # labelled or failed: a structure is asked about once
        explored = _read_extxyz(idir / "candidates.extxyz")
        probed = self._probe_candidates(it)
        n_found = len(probed) + len(explored)
        explored = [a for a in explored if structure_key(a) not in known]
        probed = [a for a in probed if structure_key(a) not in known]
        candidates = probed + explored
        if len(candidates) < n_found:
            log.info("%d candidates already in data.db", n_found - len(candidates))
        left = self.spec.budget.max_oracle_calls - self.oracle_calls()
        n_batch = max(0, min(self.spec.selection.batch_size, left))
        chosen: list[Atoms] = []
        info: dict[str, Any] = {
            "candidates": len(candidates),
            "already_in_db": n_found - len(candidates),
            "probe_candidates": len(probed),
            "batch": n_batch,
        }
        self._begin(it, "select", n=len(candidates))
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
                priority=range(len(probed)),
                priority_budget=PROBE_SHARE * n_batch,
                priority_reason="probe",
            )
            chosen = [candidates[i] for i in sel.indices][:n_batch]
            for atoms, role in zip(chosen, self._roles(it, len(chosen)), strict=True):
                atoms.info["split"] = role
            info.update(
                selected=len(chosen),
                duplicates=len(sel.duplicates),
                reasons=[sel.reason[i] for i in sel.indices][:n_batch],
            )
        _write_extxyz(idir / "selection.extxyz", chosen)
        atomic_write_text(idir / "selection.json", json.dumps(info, indent=2))
        self._finish_step(it, "select")

    def _known_keys(self) -> set[str]:
        """Structure keys of every row of data.db, labelled or failed (not pending)."""
        rows = self.store.db.select(include_data=False)
        return {row.get("key") for row in rows if row.get("status") != "pending"}

    def _roles(self, it: int, n: int) -> list[str]:
        """The split of each of ``n`` structures selected in iteration ``it``, drawn at random:
        holdout and calibration with their fractions, train otherwise.
        """
        system = self.spec.system
        u = self._rng(it, 4).random(n)
        cal_edge = system.holdout_fraction + system.calibration_fraction
        return [
            HOLDOUT if x < system.holdout_fraction else CALIBRATION if x < cal_edge else "train"
            for x in u
        ]

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
                oracle=str(self.spec.oracle.name),
                status=result.status,
                seconds=round(float(result.seconds), 6),
                **_provenance(src),
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
        self._begin(it, "label", n=len(chosen))
        self._label(chosen, iteration=it)
        self._finish_step(it, "label")

    def step_evaluate(self, it: int) -> dict[str, Any]:
        """This iteration's errors (holdout, and the fixed test set per part, kind and element),
        its diagnosis on the test set, the learning-curve row, and the stop check.
        """
        self._begin(it, "evaluate")
        idir = self._idir(it)
        calib = json.loads((idir / "calibration.json").read_text())
        expl = json.loads((idir / "exploration.json").read_text())
        counts = self.store.label_counts()
        test_calls = self.test_calls()
        e0_calls = self.store.db.count(split=ISOLATED_ATOM_SPLIT)
        holdout = calib["holdout_errors"]
        metrics = calib["calibration"].get("metrics", {}).get("calibrated", {})
        row = {
            "iteration": it,
            "labels_ok": counts["ok"],
            "labels_failed": counts["failed"],
            "oracle_calls": counts["ok"] + counts["failed"] - test_calls - e0_calls,
            "oracle_calls_test": test_calls,
            "oracle_calls_e0": e0_calls,
            "energy_mae_per_atom": holdout["energy_mae_per_atom"],
            "force_mae": holdout["force_mae"],
            "spearman_atom": metrics.get("spearman_atom"),
            "trust_pooled": self._levels(it).describe(),
            "accurate": expl["overall"]["accurate"],
            "candidate": expl["overall"]["candidate"],
            "failed": expl["overall"]["failed"],
        }
        row.update(self._test_row(it))
        quality = self._quality(it, row)
        row["model_quality"] = quality
        row["regions_tentative"] = quality is not None and not quality["ready"]
        row.update(self._probe_fields(it))
        self._save_selected_residuals(it)
        t_diag = time.monotonic()
        row.update(self._diagnose(it, quality))
        diag_s = time.monotonic() - t_diag
        row["elapsed_s"] = self.elapsed_s
        row.update(_memory())
        history = [h for h in self.store.state.history if h["iteration"] != it] + [row]
        reason = self.stop_reason(history)
        seconds = {"diagnose": round(diag_s, 3)}
        if reason and self.spec.probes.names and not self.probes_due(it):
            # the last iteration: the probes' verdict on the final model
            self.report(
                "step", {"iteration": it, "step": "probe", "n": len(self.spec.probes.names)}
            )
            t_probe = time.monotonic()
            row.update(self._run_probes(it))
            seconds["probe"] = round(time.monotonic() - t_probe, 3)
            row["elapsed_s"] = self.elapsed_s
        took = time.monotonic() - self._step_t0
        self.store.write_state(
            iteration=it,
            step="evaluate",
            history=history,
            stop_reason=reason,
            status=RunStatus.DONE if reason else RunStatus.RUNNING,
            elapsed_s=self.elapsed_s,
            timings=self._timings(it, evaluate=round(took - sum(seconds.values()), 3), **seconds),
        )
        self.report("iteration", row)
        return row

    def _test_row(self, it: int) -> dict[str, Any]:
        """The test-set errors of iteration ``it`` (from the residuals its calibrate step saved)."""
        from chemgap.agent.evaluation import score_test_set
        from chemgap.models.calibration import Residuals

        path = self._idir(it) / TEST_RESIDUALS
        test = self.test_set()
        if not test or not path.exists():
            return {}
        errors = score_test_set(Residuals.load(path), test)
        row: dict[str, Any] = {"test": errors}
        for part in ("all", "id", "ood"):
            report = errors.get(part)
            row[f"test_force_mae_{part}"] = report["force_mae"] if report else None
            row[f"test_energy_mae_{part}"] = report["energy_mae_per_atom"] if report else None
        return row

    def _quality(self, it: int, row: dict[str, Any]) -> dict[str, Any] | None:
        """Whether iteration ``it``'s model is good enough in distribution for its regions to
        be findings (:func:`chemgap.agent.evaluation.model_quality`): on the test set's ID
        part, or without one on the holdout it was scored on.
        """
        from chemgap.agent.evaluation import model_quality

        target = self.spec.diagnostics.id_force_target
        ident = [a for a in self.test_set() if a.info.get("in_distribution", True)]
        if ident and row.get("test_force_mae_id") is not None:
            return model_quality(
                row["test_force_mae_id"], ident, target, "test set, in distribution"
            )
        held = [a for a in self.labelled(HOLDOUT) if a.info.get("iteration", 0) < it]
        return model_quality(row.get("force_mae"), held, target, "holdout")

    def _save_selected_residuals(self, it: int) -> None:
        """The structures this iteration chose and labelled, as predicted by the ensemble that
        chose them (out of sample for it): the loop's own calibration data for later
        iterations (a later ensemble has trained on them).
        """
        from chemgap.models.calibration import Residuals

        chosen = [
            a
            for a in self.labelled()
            if a.info.get("iteration") == it and a.info.get("source") == "explore"
        ]
        if not chosen:
            return
        pred = self._ensemble(it).predict(chosen, calibrated=False)
        Residuals.from_prediction(pred, chosen).save(self._idir(it) / SELECTED_RESIDUALS)

    def _diagnose(self, it: int, quality: dict[str, Any] | None = None) -> dict[str, Any]:
        """Failure regions of this iteration's ensemble on the fixed test set (without one: on
        the holdout and this iteration's labels, data it was not trained on). The same
        structures every iteration, so a region's ratio per iteration is a history. Writes
        ``regions.json`` in the run and in ``iterations/NNN``, with the model's ``quality``
        (its regions are tentative when it misses its in-distribution target). A diagnosis
        that cannot be made (too few structures for a statistic, say) is logged and recorded,
        not fatal.
        """
        from chemgap.agent.diagnostics import REGIONS_FILE
        from chemgap.agent.diagnostics.diagnose import diagnose, load_previous, write_regions

        self.report("step", {"iteration": it, "step": "diagnose"})
        unseen = self.test_set() or [
            a
            for a in self.labelled()
            if a.info.get("split") == HOLDOUT or a.info.get("iteration") == it
        ]
        # the previous iteration's own file: the run-level one may already be this iteration's
        # if a run was killed between writing it and recording the step
        test = bool(self.store.db.count(split=TEST_SPLIT, status="ok"))
        previous = load_previous(self.store.iteration_dir(it - 1, create=False) / REGIONS_FILE)
        try:
            result = diagnose(
                unseen,
                self._ensemble(it),
                self.spec.diagnostics,
                seed=self.spec.seed,
                iteration=it,
                previous=previous,
                source="test set" if test else "holdout and this iteration's labels",
            )
        except Exception as exc:
            log.warning("iteration %d: diagnosis failed: %s", it, exc, exc_info=True)
            return {
                "regions": None,
                "silent_regions": None,
                "diagnosis_error": f"{type(exc).__name__}: {exc}",
            }
        result.quality = quality
        write_regions(result, self._idir(it))
        write_regions(result, self.store.root)
        regions = result.regions
        top = regions[0] if regions else None
        return {
            "regions": len(regions),
            "silent_regions": sum(bool(getattr(r, "silent", False)) for r in regions),
            "top_region": getattr(top, "rule", None),
            "resolved_regions": len(result.resolved),
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
            and (not conv.probes or _last_probes_passed(history))
        ):
            return (
                f"converged: accurate fraction ≥ {conv.accurate_fraction:g} and force MAE "
                f"change < {conv.force_mae_tol:g} eV/Å for {conv.patience} iterations"
                + (" and the last probes passed" if conv.probes else "")
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
            self._record_cluster(it)
            try_write_report(self.store.root)  # RUN/report.html; a failure is only a warning
            reason = self.store.state.stop_reason
            if reason:
                log.info("stopping: %s", reason)
                return reason
            it, nxt = it + 1, 0

    def _record_cluster(self, it: int | str) -> None:
        """RUN/cluster.json: the Ray nodes and where iteration ``it``'s tasks ran (or the
        experiment's, ``"remedies"``); a Ray executor only: in-process runs have no cluster.
        """
        from chemgap.agent.runtime import CLUSTER_FILE

        record = getattr(self.executor, "record", None)
        if record is not None:
            record(self.store.root / CLUSTER_FILE, it)

    # ------------------------------------------------------------------ after the loop
    def remediate(self) -> dict[str, Any] | None:
        """Run (or continue) the spec's remediation experiment on the finished loop, into
        ``RUN/remedies`` (:mod:`chemgap.agent.remedies`); None when the spec asks for none.

        An arm refused for want of data the loop did not produce (no failure region to
        target, say) does not fail the finished campaign: the refusal is logged and kept in
        ``remedies/refused.txt``. ``RUN/report.html`` is rewritten after the experiment.
        """
        from chemgap.agent.errors import RemedyRefused
        from chemgap.agent.remedies import REMEDIES_DIR, run_experiment

        cfg = self.spec.remediation
        if not cfg.remedies or self.store.state.status != RunStatus.DONE:
            return None
        refused = self.store.root / REMEDIES_DIR / "refused.txt"

        def forward(event: str, payload: dict[str, Any]) -> None:
            self.report("remedy", {"event": event, **payload})

        self.report("remedy", {"event": "start", "remedies": [str(r) for r in cfg.remedies]})
        try:
            summary = run_experiment(self.store.root, cfg, executor=self.executor, report=forward)
        except RemedyRefused as exc:
            log.warning("remediation experiment refused: %s", exc)
            refused.parent.mkdir(exist_ok=True)
            atomic_write_text(refused, f"{exc}\n")
            summary = None
        else:
            refused.unlink(missing_ok=True)
            self.report("remedy", {"event": "done", "summary": summary})
        self._record_cluster("remedies")  # the experiment's tasks
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
    report: Reporter = _noop,
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
    from chemgap.agent.remedies import REMEDIES_DIR, RESULTS_FILE

    return (
        bool(store.spec.remediation.remedies)
        and store.state.status == RunStatus.DONE
        and not (store.root / REMEDIES_DIR / RESULTS_FILE).exists()
        and not (store.root / REMEDIES_DIR / "refused.txt").exists()
    )


def _memory() -> dict[str, float | None]:
    """This process's resident memory now and at its peak, MiB (``rss_mib``, ``peak_rss_mib``;
    None where the platform does not say).

    The campaign's driver only: training, exploration and labelling run in Ray workers, whose
    memory ends with their tasks.
    """
    import os
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss: float | None = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        rss = None
    return {"rss_mib": rss, "peak_rss_mib": round(peak, 1)}


def _last_probes_passed(history: list[dict[str, Any]]) -> bool:
    """Whether the most recent probe run in ``history`` passed (False before any ran)."""
    runs = [h for h in history if h.get("probes_run")]
    return bool(runs) and bool(runs[-1].get("probes_passed"))


PROVENANCE = (
    "source",
    "probe",
    "probe_reason",
    "seed_kind",
    "walker",
    "group",
    "temperature_K",
    "uncertainty",
    "split",
    "test_kind",
    "in_distribution",
)


def _provenance(atoms: Atoms) -> dict[str, Any]:
    """The provenance of a structure to store with its label (``data.db`` key-value pairs)."""
    out = {key: atoms.info.get(key) for key in PROVENANCE}
    out["source"] = out["source"] or "seed"
    out["split"] = out["split"] or "train"
    return out
