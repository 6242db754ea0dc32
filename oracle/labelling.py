"""Labelling: one structure in-process (:func:`label_one`) or a batch as Ray tasks
(:func:`label_batch`), with triage before the call, bounded SCF retries, a hard time limit and
failures recorded by category — an oracle failure never raises out of these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.common.keys import ENERGY_KEY, FORCES_KEY, LABEL_PREFIX, STATUS_KEY, STRESS_KEY
from chemgap.common.tasks import Executor, Task, resolve_executor
from chemgap.oracle.backends import soften
from chemgap.oracle.config import OracleConfig
from chemgap.oracle.results import (
    ATTEMPTS_KEY,
    LABEL_INFO_KEYS,
    MESSAGE_KEY,
    ORACLE_KEY,
    SECONDS_KEY,
    FailureCategory,
    LabelResult,
    LabelSummary,
)
from chemgap.oracle.sandbox import CalculatorCache, calculator_key, oracle_process
from chemgap.oracle.triage import Evaluation, check_before, classify_exception, evaluate, one_line

log = logging.getLogger(__name__)

_IN_PROCESS_CALCULATORS = CalculatorCache()


def clean_copy(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without calculator, old labels or label bookkeeping."""
    out = atoms.copy()
    out.calc = None
    for key in LABEL_INFO_KEYS:
        out.info.pop(key, None)
    for key in [k for k in out.arrays if k.startswith(LABEL_PREFIX)]:
        del out.arrays[key]
    for key in [k for k in out.info if k.startswith(LABEL_PREFIX)]:
        del out.info[key]
    return out


def _call(atoms: Atoms, config: OracleConfig, isolate: bool) -> Evaluation:
    key = calculator_key(config)
    if isolate:
        return oracle_process(config.cpus_per_call).evaluate(atoms, key, config.timeout_s)
    try:
        calc = _IN_PROCESS_CALCULATORS.get(key)
    except Exception as exc:
        return Evaluation(
            failure=classify_exception(exc),
            message=one_line(f"could not build the calculator: {type(exc).__name__}: {exc}"),
        )
    with _thread_controller().limit(limits=config.cpus_per_call):
        return evaluate(calc, atoms)


_CONTROLLER: Any = None


def _thread_controller() -> Any:
    """Threadpoolctl's view of this process's BLAS/OpenMP pools (scanned once, ~ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _finish(
    atoms: Atoms,
    config: OracleConfig,
    evaluation: Evaluation | None,
    *,
    failure: FailureCategory | None,
    message: str,
    seconds: float,
    attempts: int,
) -> LabelResult:
    if failure is None and evaluation is not None:
        atoms.info[ENERGY_KEY] = evaluation.energy
        atoms.arrays[FORCES_KEY] = np.asarray(evaluation.forces, dtype=float)
        if evaluation.stress is not None:
            atoms.info[STRESS_KEY] = np.asarray(evaluation.stress, dtype=float)
    status = "ok" if failure is None else failure.value
    atoms.info.update(
        {
            STATUS_KEY: status,
            # Never empty: an empty extxyz value swallows the next key when read back.
            MESSAGE_KEY: one_line(message) or status,
            SECONDS_KEY: float(seconds),
            ATTEMPTS_KEY: int(attempts),
            ORACLE_KEY: str(config.name),
        }
    )
    return LabelResult(
        atoms=atoms,
        failure=failure,
        message=one_line(message),
        seconds=float(seconds),
        attempts=attempts,
        oracle=str(config.name),
    )


def reject(atoms: Atoms, config: OracleConfig) -> LabelResult | None:
    """The failed result of a structure rejected by triage before any oracle call, or None."""
    rejection = check_before(atoms, config)
    if rejection is None:
        return None
    return _finish(
        clean_copy(atoms),
        config,
        None,
        failure=rejection.category,
        message=rejection.message,
        seconds=0.0,
        attempts=0,
    )


def label_one(atoms: Atoms, config: OracleConfig, *, isolate: bool = False) -> LabelResult:
    """Label one structure with ``config``'s oracle; never raises for an oracle failure.

    Triage first (geometry, elements: no oracle call when rejected), then the call, retried with
    softer settings (:func:`chemgap.oracle.backends.soften`) up to ``config.max_retries`` times
    while it fails with ``scf_not_converged``.

    Args:
        atoms: the structure (not modified; the result holds a labelled copy).
        config: the oracle.
        isolate: run the calculator in this process's killable oracle child process, enforcing
            ``config.timeout_s`` (what Ray tasks do). In-process (the default, for tests and
            interactive use) no time limit is enforced.
    """
    rejected = reject(atoms, config)
    if rejected is not None:
        return rejected
    work = clean_copy(atoms)
    current = config
    seconds = 0.0
    attempts = 0
    evaluation = Evaluation(failure=FailureCategory.CRASHED, message="not called")
    for attempt in range(config.max_retries + 1):
        evaluation = _call(work, current, isolate)
        seconds += evaluation.seconds
        attempts += 1
        if evaluation.failure != FailureCategory.SCF_NOT_CONVERGED:
            break
        softer = soften(config, attempt + 1) if attempt < config.max_retries else None
        if softer is None:
            break
        log.info(
            "SCF not converged (%s); retry %d with %s",
            evaluation.message,
            attempt + 1,
            softer.params,
        )
        current = softer
    message = evaluation.message
    if evaluation.failure is None and attempts > 1:
        changed = {k: v for k, v in current.params.items() if config.params.get(k) != v}
        message = f"converged on retry {attempts - 1} with " + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()
        )
    return _finish(
        work,
        config,
        evaluation,
        failure=evaluation.failure,
        message=message,
        seconds=seconds,
        attempts=attempts,
    )


def label_task(atoms: Atoms, config_json: str, isolate: bool) -> LabelResult:
    """Body of one labelling task (the config travels as JSON)."""
    return label_one(atoms, OracleConfig.model_validate_json(config_json), isolate=isolate)


def task_name(
    index: int, total: int, oracle: str, prefix: str = "label", iteration: int | None = None
) -> str:
    """Ray task name as the dashboard shows it, e.g. ``label 17/40 · xtb · iter 3``."""
    name = f"{prefix} {index + 1}/{total} · {oracle}"
    return name if iteration is None else f"{name} · iter {iteration}"


def label_batch(
    structures: Sequence[Atoms],
    config: OracleConfig,
    *,
    on_result: Callable[[int, LabelResult], None] | None = None,
    name: str = "label",
    iteration: int | None = None,
    isolate: bool = True,
    executor: Executor | None = None,
) -> LabelSummary:
    """Label ``structures`` as tasks on ``executor``, handing each result to ``on_result`` as it
    arrives.

    Structures rejected by triage never become tasks (their results are delivered first). Each
    remaining structure is one task named like ``label 17/40 · xtb · iter 3`` asking for
    ``config.cpus_per_call`` CPUs; results come back in completion order and
    ``on_result(index, result)`` is called at once (``index`` into ``structures``), so the
    caller can store each label before the next arrives. A task the executor lost (worker or
    node death) is recorded as ``crashed``. If ``on_result`` raises or the caller is
    interrupted, outstanding tasks are cancelled and the exception propagates.

    ``executor`` is where the tasks run (:mod:`chemgap.common.tasks`): the agent passes its Ray
    executor; None labels one structure after another in this process.

    Args:
        structures: the batch.
        config: the oracle.
        on_result: called as ``on_result(index, result)`` for every structure, in arrival order.
        name: task-name prefix.
        iteration: campaign iteration shown in task names (``· iter 3``).
        isolate: evaluate in a killable child process inside each task (enforces
            ``config.timeout_s``); False runs the calculator in the task's process itself.
        executor: where the tasks run (default in-process).

    Returns:
        Counts by status and timings (``wall_seconds`` measured here).
    """
    start = time.perf_counter()
    summary = LabelSummary(oracle=str(config.name))
    total = len(structures)

    def deliver(index: int, result: LabelResult) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(index, result)

    config_json = config.model_dump_json()
    tasks, indices = [], []
    for index, atoms in enumerate(structures):
        rejected = reject(atoms, config)
        if rejected is not None:
            deliver(index, rejected)
            continue
        tasks.append(
            Task(
                fn=label_task,
                args=(clean_copy(atoms), config_json, isolate),
                name=task_name(index, total, str(config.name), name, iteration),
                num_cpus=config.cpus_per_call,
                max_retries=1,  # a lost worker or node (oracle failures are results): one rerun
            )
        )
        indices.append(index)
    for done in resolve_executor(executor).run(tasks):
        index = indices[done.index]
        if done.error is None:
            deliver(index, done.value)
            continue
        deliver(
            index,
            _finish(
                clean_copy(structures[index]),
                config,
                None,
                failure=FailureCategory.CRASHED,
                message=f"task failed: {type(done.error).__name__}: {done.error}",
                seconds=0.0,
                attempts=1,
            ),
        )
    summary.wall_seconds = time.perf_counter() - start
    log.info("labelled %d structures with %s: %s", total, config.name, summary.describe())
    return summary
