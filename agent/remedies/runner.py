"""The experiment runner: arms × repeats from one base, resumable, as tasks.

```
EXP/                 (default RUN/remedies)
  experiment.json    the base and the settings; a second call with other settings is refused
  split.json         the test set's guidance and scoring parts (indices, data.db ids, seed)
  guidance/          the base ensemble's diagnosis on the guidance part: the regions that
                     steer the region arm (regions.json, regions/)
  plan/rK/           repeat K: pool.extxyz (the shared exploration pool), ARM.extxyz (the
                     structures each data arm labels) and ARM.json (notes on the pick)
  labels.db          every label as it arrives (ASE SQLite; a structure two arms chose is
                     labelled once)
  cells/KEY.json     one finished arm × repeat (× size): its scores and costs
  cells/KEY/models   its trained ensemble
  results.json       the summary: mean ± 95 % CI per arm, differences to the controls
```

Before anything: the run's test set is split once (seeded, stratified by test kind) into a
guidance part, on which the base ensemble is diagnosed to find the regions that steer the
``region`` arm, and a scoring part, on which every cell is scored (overall, ID/OOD, and inside
each guidance region by its rule): no structure both guides and scores
(:mod:`chemgap.agent.remedies.guidance`).

Stages, each skipping what is already on disk: plan every repeat (pool, then each data arm's
pick: exactly ``budget`` structures or a refusal), label what no arm has labelled yet (each
label committed as it arrives), train and score each cell as one task (``remedy ARM rK``, one
CPU, its members one after another), summarise. A killed experiment continues from its
finished cells and never relabels.

Every arm of repeat ``k`` uses the same seeds: the pool and the training seed are functions of
the campaign's seed and ``k`` only, so arms differ by their remedy alone (a paired design), and
repeats differ by their seeds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.errors import RunDirError
from chemgap.agent.layout import RemediesLayout, RunLayout
from chemgap.agent.records import RemedyResultsRecord
from chemgap.agent.remedies.arms import (
    CONTROL_ATOMS,
    Arm,
    ArmKind,
    check_arms,
    pick,
    training,
)
from chemgap.agent.remedies.base import Base
from chemgap.agent.store import row_to_atoms, structure_key
from chemgap.agent.structio import read_extxyz, write_extxyz
from chemgap.campaigns.spec import RemediationConfig, RemedyName
from chemgap.common.files import atomic_write_text
from chemgap.common.tasks import Executor, Task

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: scored on the scoring part of a guidance/scoring split of the test set
POOL_KEY, PICK_KEY, SPLIT_KEY, TRAIN_KEY = 7001, 7002, 7003, 500  # seed streams

Reporter = Callable[[str, dict[str, Any]], None]


def _noop(event: str, payload: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Cell:
    """One arm × repeat (× training-set size) of the experiment."""

    arm: str
    repeat: int
    size: int | None = None

    @property
    def key(self) -> str:
        """File name stem, e.g. ``region-r2`` or ``transfer-n20-r0``."""
        return f"{self.arm}" + (f"-n{self.size}" if self.size else "") + f"-r{self.repeat}"


def cells_of(arms: list[Arm], cfg: RemediationConfig) -> list[Cell]:
    """Every cell, repeat by repeat: data arms at the full base data, model arms and the
    baseline at each of ``cfg.sizes`` (or the full base data when there are none).
    """
    out = []
    for r in range(cfg.repeats):
        for arm in arms:
            sizes = cfg.sizes if cfg.sizes and arm.kind != ArmKind.DATA else [None]
            out.extend(Cell(arm.name, r, n) for n in sizes)
    return out


def train_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Train one cell's ensemble and score it on the test set's scoring part and the holdout
    (a task).

    Args:
        payload: ``train``, ``holdout``, ``test`` (labelled structures: the scoring part of
            the run's test set), ``training`` (:class:`Training`), ``elements``, ``seed``,
            ``out_dir``, ``threads``.

    Returns:
        ``{"test": score_test_set report, "holdout": ErrorReport dict, "atom_error": list
        (n_scoring_atoms,) eV/Å, "n_test", "train_s", "n_train"}``.
    """
    import torch

    from chemgap.agent.evaluation import score_test_set
    from chemgap.common.keys import reference_forces
    from chemgap.common.metrics import force_error_norms, score
    from chemgap.models.calibration import Residuals
    from chemgap.models.ensemble import train_ensemble

    torch.set_num_threads(int(payload["threads"]))
    t = payload["training"]
    t0 = time.perf_counter()
    ens = train_ensemble(
        payload["train"],
        t.model,
        t.ensemble,
        payload["out_dir"],
        seed=int(payload["seed"]),
        valid=payload["holdout"],
        init_from=t.init_from,
        element_map=t.element_map,
        elements=payload["elements"],
    )
    train_s = time.perf_counter() - t0
    test = payload["test"]
    pred = ens.predict(test, calibrated=False)
    hold = ens.predict(payload["holdout"], calibrated=False)
    out = {
        "test": score_test_set(Residuals.from_prediction(pred, test), test),
        "holdout": score(hold, payload["holdout"]).to_dict(),
        "atom_error": force_error_norms(pred.forces_mean, reference_forces(test)).tolist(),
        "n_test": len(test),
        "train_s": round(train_s, 3),
        "n_train": len(payload["train"]),
    }
    if payload.get("probes"):
        out["probes"] = probe_scores(ens, payload["probes"])
    return out


def probe_scores(ensemble: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Score one arm's ensemble on the experiment's probes (the same oracle, system, settings
    and MD seed for every arm, so the arms differ only by their models).

    Args:
        ensemble: the arm's trained ensemble.
        request: ``names``, ``oracle``, ``system``, ``cfg`` (the probes section), ``seed``,
            ``temperatures_K`` (see :meth:`Experiment._probes`).

    Returns:
        One dict per metric compared with the oracle by its error (``label``, ``unit``,
        ``model``, ``oracle``, ``error`` = |model − oracle| in ``unit``, or relative for a
        relative-error metric, None against a zero oracle value, ``passed``); a probe that
        raised gives ``{"label", "error": None, "raised"}``.
    """
    from chemgap.agent.probes import Judge, run_probes

    report = run_probes(
        ensemble, request["oracle"], request["system"], request["cfg"],
        seed=int(request["seed"]), names=request["names"],
        temperatures_K=request["temperatures_K"],
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    for result in report.results:
        if result.error:
            out.append({"label": result.name, "error": None, "raised": result.error})
            continue
        for m in result.metrics:
            if m.oracle is None or m.judge not in (Judge.ERROR, Judge.RELATIVE_ERROR):
                continue
            relative = m.judge == Judge.RELATIVE_ERROR
            error: float | None = abs(m.model - m.oracle)
            if relative:  # undefined against a zero oracle value: no score, not a wrong one
                error = error / abs(m.oracle) if m.oracle else None
            out.append(
                {
                    "label": f"{result.name}: {m.label}", "unit": "" if relative else m.unit,
                    "model": m.model, "oracle": m.oracle, "error": error,
                    "relative": relative, "passed": m.passed,
                }
            )  # fmt: skip
    return out


class Experiment:
    """One remediation experiment in directory ``out`` (see the module docstring)."""

    def __init__(
        self,
        base: Base,
        cfg: RemediationConfig,
        out: Path,
        *,
        executor: Executor | None = None,
        report: Reporter = _noop,
    ):
        from chemgap.agent.remedies.guidance import guide, split_test_set

        self.base, self.cfg, self.out = base, cfg, Path(out)
        self.layout = RemediesLayout(self.out)
        self.executor, self.report = executor, report
        self._db: Any = None
        self._ensemble: Any = None
        split = split_test_set(
            base.test,
            fraction=cfg.guidance_fraction,
            min_per_part=cfg.min_per_part,
            seed=self._seed(SPLIT_KEY),
        )
        self.guidance = guide(base, split, self.ensemble, self.layout)
        base.guided_by(self.guidance)
        self.arms = check_arms(base, cfg)
        self.cells = cells_of(self.arms, cfg)

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """What makes two runs of the experiment the same (``experiment.json``)."""
        split = self.guidance.split
        return {
            "format_version": FORMAT_VERSION,
            "run": str(self.base.root),
            "iteration": self.base.iteration,
            "arms": [a.name for a in self.arms],
            **self.cfg.model_dump(mode="json", exclude={"iteration", "remedies"}),
            "test_split": {  # the structures that guide and those that score
                "seed": split.seed,
                "guidance_db_ids": [split.db_ids[i] for i in split.guidance],
                "scoring_db_ids": [split.db_ids[i] for i in split.scoring],
            },
        }

    def check_settings(self) -> None:
        """Refuse ``out`` when it holds an experiment with other settings; write ours."""
        path = self.layout.experiment
        mine = self.settings()
        if path.exists():
            theirs = json.loads(path.read_text())
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if diff:
                raise RunDirError(
                    f"{self.out} holds an experiment with other settings ({', '.join(diff)}); "
                    "pass -o NEW_DIR, or the same settings to continue it"
                )
            log.info("continuing the experiment in %s", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(mine, indent=2))
        self.guidance.write(self.layout)  # split.json and the guidance diagnosis

    # ------------------------------------------------------------------ helpers
    def ensemble(self) -> Any:
        """The base model (loaded once)."""
        if self._ensemble is None:
            from chemgap.models.ensemble import Ensemble

            self._ensemble = Ensemble.load(self.base.models_dir)
        return self._ensemble

    @property
    def db(self) -> Any:
        """``labels.db``: every label of the experiment."""
        if self._db is None:
            from ase.db import connect

            self._db = connect(str(self.layout.labels_db), type="db", append=True)
        return self._db

    def plan_dir(self, repeat: int) -> Path:
        """``plan/rK`` of repeat ``repeat``."""
        path = self.layout.plan(repeat)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _seed(self, *keys: int) -> list[int]:
        return [self.base.spec.seed, *keys]

    # ------------------------------------------------------------------ stage 1: plan
    def plan(self) -> None:
        """Each repeat's pool and each data arm's structures (exactly ``budget`` each)."""
        from chemgap.agent.remedies.pool import explore_pool

        data = [a for a in self.arms if a.kind == ArmKind.DATA]
        pooled = {"random", "uncertainty", "diverse", "region", CONTROL_ATOMS}
        for r in range(self.cfg.repeats):
            self.plan_dir(r)  # made before the pool and the picks are written
            todo = [a for a in data if not self.layout.pick(r, a.name).exists()]
            if not todo:
                continue
            pool: list[Atoms] = []
            if any(a.name in pooled for a in todo):
                path = self.layout.pool(r)
                if path.exists():
                    pool = read_extxyz(path)
                else:
                    self.report("stage", {"stage": "explore", "repeat": r})
                    pool = explore_pool(self.base, self.ensemble(), self._seed(POOL_KEY, r))
                    write_extxyz(path, pool)
            for k, arm in enumerate(data):
                if arm not in todo:
                    continue
                rng = np.random.default_rng(self._seed(PICK_KEY, r, k))
                target = None
                if arm.name == CONTROL_ATOMS:  # planned after cell_size, whose atoms it matches
                    target = sum(len(a) for a in self.planned(str(RemedyName.CELL_SIZE), r))
                chosen, notes = pick(
                    arm, self.base, self.cfg, pool, self.ensemble(), rng, target_atoms=target
                )
                for atoms in chosen:
                    atoms.info.update(remedy=arm.name, repeat=r)
                atomic_write_text(
                    self.layout.pick_notes(r, arm.name), json.dumps({"n": len(chosen), **notes})
                )
                write_extxyz(self.layout.pick(r, arm.name), chosen)

    def planned(self, arm: str, repeat: int) -> list[Atoms]:
        """The structures data arm ``arm`` labels in ``repeat`` (empty for other arms)."""
        path = self.layout.pick(repeat, arm)
        return read_extxyz(path)

    # ------------------------------------------------------------------ stage 2: label
    def _labelled_keys(self) -> set[str]:
        return {row.key for row in self.db.select()}

    def label(self) -> None:
        """Label every planned structure no arm has labelled yet, each row committed at once."""
        from chemgap.oracle import check_backend, label_batch

        seen = self._labelled_keys()
        todo: dict[str, Atoms] = {}
        for cell in self.cells:
            for atoms in self.planned(cell.arm, cell.repeat):
                key = structure_key(atoms)
                if key not in seen:
                    todo.setdefault(key, atoms)
        if not todo:
            return
        check_backend(self.base.spec.oracle)
        structures = list(todo.values())
        self.report("stage", {"stage": "label", "n": len(structures)})
        done = 0

        def on_result(index: int, result: Any) -> None:
            nonlocal done
            self._store(structures[index], result)
            done += 1
            self.report("label", {"done": done, "total": len(structures)})

        label_batch(
            structures, self.base.spec.oracle, on_result=on_result, name="remedy label",
            executor=self.executor,
        )  # fmt: skip

    def _store(self, src: Atoms, result: Any) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator

        from chemgap.common.keys import ENERGY_KEY, FORCES_KEY, STRESS_KEY

        atoms = result.atoms
        row = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        results = {}
        if ENERGY_KEY in atoms.info:
            results["energy"] = float(atoms.info[ENERGY_KEY])
        if FORCES_KEY in atoms.arrays:
            results["forces"] = np.asarray(atoms.arrays[FORCES_KEY], dtype=float)
        if STRESS_KEY in atoms.info:
            results["stress"] = np.asarray(atoms.info[STRESS_KEY], dtype=float)
        if results:
            row.calc = SinglePointCalculator(row, **results)
        self.db.write(
            row,
            key=structure_key(src),
            status=str(result.status),
            seconds=round(float(result.seconds), 6),
            remedy=str(src.info.get("remedy", "")),
            repeat=int(src.info.get("repeat", -1)),
        )

    def labels_of(self, arm: str, repeat: int) -> tuple[list[Atoms], dict[str, Any]]:
        """The arm's labelled structures in ``repeat`` and its costs: oracle calls (every
        planned structure is one, failed ones included), the atoms in them and the oracle's
        seconds.
        """
        rows = {row.key: row for row in self.db.select()}
        planned = self.planned(arm, repeat)
        labelled, seconds, failed = [], 0.0, 0
        n_atoms = sum(len(atoms) for atoms in planned)
        for atoms in planned:
            row = rows.get(structure_key(atoms))
            if row is None:
                raise RuntimeError(f"remedy {arm} r{repeat}: a planned structure has no label")
            seconds += float(row.get("seconds", 0.0))
            if row.get("status") == "ok":
                new = row_to_atoms(row)
                new.info.update(split="train", source="remedy", remedy=arm)
                labelled.append(new)
            else:
                failed += 1
        costs = {
            "oracle_calls": len(planned),
            "oracle_failed": failed,
            "oracle_s": seconds,
            "oracle_atoms": n_atoms,  # the cost of a call grows with its atoms (DFT: steeply)
        }
        return labelled, costs

    # ------------------------------------------------------------------ stage 3: train
    def _train_set(self, cell: Cell) -> tuple[list[Atoms], dict[str, Any]]:
        train = list(self.base.train)
        if cell.size:
            rng = np.random.default_rng(self._seed(PICK_KEY, cell.repeat, 999, cell.size))
            n = min(cell.size, len(train))
            train = [train[i] for i in sorted(rng.choice(len(train), size=n, replace=False))]
        new, costs = self.labels_of(cell.arm, cell.repeat)
        notes = self.layout.pick_notes(cell.repeat, cell.arm)
        if notes.exists():  # a data arm: where its labels came from
            costs["sources"] = json.loads(notes.read_text()).get("sources") or {}
        return train + new, costs

    def _threads(self) -> int:
        if self.executor is not None and self.executor.parallel:
            return 1
        return max(1, os.cpu_count() or 1)

    def _probes(self) -> dict[str, Any] | None:
        """What :func:`probe_scores` needs, or None when no probe scores the arms."""
        if not self.cfg.probes:
            return None
        spec = self.base.spec
        return {
            "names": [str(n) for n in self.cfg.probes],
            "oracle": spec.oracle,
            "system": spec.system,
            "cfg": spec.probes,
            "seed": spec.seed,
            "temperatures_K": list(spec.exploration.temperatures_K),
        }

    def train(self) -> None:
        """Train and score every cell without a result file, as tasks; write each result as
        it arrives.
        """
        from chemgap.common.tasks import resolve_executor

        self.layout.cells_dir.mkdir(parents=True, exist_ok=True)
        todo = [c for c in self.cells if not self.layout.cell_result(c.key).exists()]
        if not todo:
            return
        tasks, costs = [], []
        for cell in todo:
            train, cost = self._train_set(cell)
            costs.append(cost)
            payload = {
                "train": train,
                "holdout": self.base.holdout,
                "test": self.base.scoring,  # never a structure that guided the region arm
                "training": training(_arm(self.arms, cell.arm), self.base, self.cfg),
                "elements": self.base.elements(),
                "seed": self.base.spec.seed * 1000 + TRAIN_KEY + cell.repeat,
                "out_dir": str(self.layout.cell_models(cell.key)),
                "threads": self._threads(),
                "probes": self._probes(),
            }
            tasks.append(Task(fn=train_cell, args=(payload,), name=f"remedy {cell.key}"))
        self.report("stage", {"stage": "train", "n": len(tasks)})
        for n, done in enumerate(resolve_executor(self.executor).run(tasks), start=1):
            cell = todo[done.index]
            out = done.result()
            out.update(
                arm=cell.arm, repeat=cell.repeat, size=cell.size,
                seed=tasks[done.index].args[0]["seed"], **costs[done.index],
            )  # fmt: skip
            atomic_write_text(self.layout.cell_result(cell.key), json.dumps(out, default=float))
            self.report("cell", {"key": cell.key, "done": n, "total": len(tasks)})

    def results(self) -> list[dict[str, Any]]:
        """Every finished cell's result, in cell order."""
        paths = [self.layout.cell_result(c.key) for c in self.cells]
        return [json.loads(p.read_text()) for p in paths if p.exists()]

    # ------------------------------------------------------------------ all
    def run(self) -> dict[str, Any]:
        """Plan, label, train, summarise (each stage skipping what is done); returns and
        writes ``results.json``.
        """
        from chemgap.agent.remedies.guidance import scoring_masks, split_summary
        from chemgap.agent.remedies.results import summarise

        t0 = time.perf_counter()
        self.check_settings()
        self.plan()
        self.label()
        self.train()
        masks, not_scorable = scoring_masks(self.base, self.guidance, self.ensemble())
        summary = summarise(
            self.results(),
            self.arms,
            self.base.regions,
            masks,
            self.settings(),
            not_scorable=not_scorable,
            test_split=split_summary(self.guidance, self.layout),
        )
        summary["wall_s"] = round(time.perf_counter() - t0, 3)
        RemedyResultsRecord.model_validate(summary).write(self.layout.results)
        return summary


def _arm(arms: list[Arm], name: str) -> Arm:
    return next(a for a in arms if a.name == name)


def prepare_experiment(
    run: str | Path, cfg: RemediationConfig, out: str | Path | None = None
) -> Experiment:
    """The experiment ``cfg`` on run directory ``run``: the test set split into its guidance
    and scoring parts, the guidance part diagnosed (the regions that steer the region arm),
    every arm checked, nothing trained or labelled yet (so a refusal comes before a Ray runtime
    starts).

    Args:
        run: a campaign's run directory with at least one finished iteration and a test set.
        cfg: the arms, budget, repeats and training overrides.
        out: the experiment directory (default ``RUN/remedies``).

    Raises:
        RemedyRefused: an arm's prerequisite is missing, or the test set is too small to
            split (``remediation.min_per_part`` of each kind on each side).
        RunDirError: ``run`` is not usable, or ``out`` holds an experiment with other settings.
    """
    base = Base.from_run(run, cfg.iteration)
    where = Path(out) if out is not None else RunLayout(base.root).remedies.path
    experiment = Experiment(base, cfg, where)
    experiment.check_settings()
    return experiment


def run_experiment(
    run: str | Path,
    cfg: RemediationConfig,
    out: str | Path | None = None,
    *,
    executor: Executor | None = None,
    report: Reporter = _noop,
) -> dict[str, Any]:
    """Run (or continue) the remediation experiment ``cfg`` on run directory ``run``
    (:func:`prepare_experiment`, then :meth:`Experiment.run`).

    Args:
        run: the run directory (see :func:`prepare_experiment`).
        cfg: the arms, budget, repeats and training overrides.
        out: the experiment directory (default ``RUN/remedies``).
        executor: where labels and cells run (None: in this process).
        report: progress callback ``report(event, payload)``.

    Returns:
        The summary written to ``results.json`` (:func:`chemgap.agent.remedies.results.summarise`).

    Raises:
        RemedyRefused: an arm's prerequisite is missing, or it cannot find its budget.
        RunDirError: ``run`` is not usable, or ``out`` holds an experiment with other settings.
    """
    experiment = prepare_experiment(run, cfg, out)
    experiment.executor, experiment.report = executor, report
    return experiment.run()


def experiment_config(run: str | Path, **changes: Any) -> RemediationConfig:
    """The run's ``remediation`` section with ``changes`` (None values ignored) applied.

    Raises:
        BadInput: a change is not allowed (one sentence naming the field and value), or no
            remedy is named at all.
        RunDirError: ``run`` is not a chemgap run directory.
    """
    from pydantic import ValidationError

    from chemgap.agent.errors import BadInput
    from chemgap.agent.store import RunStore
    from chemgap.campaigns.spec import RemedyName

    current = RunStore.open(run).spec.remediation.model_dump()
    current.update({k: v for k, v in changes.items() if v not in (None, (), [])})
    try:
        cfg = RemediationConfig.model_validate(current)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise BadInput(
            f"remediation.{field}: {err['msg'].removeprefix('Value error, ')} "
            f"(got {err.get('input')!r})"
        ) from None
    if not cfg.remedies:
        allowed = ", ".join(n.value for n in RemedyName)
        raise BadInput(f"name at least one remedy (--remedy; allowed: {allowed})")
    return cfg
