"""Asking the oracle: the initial labels and the test set (iteration 0), and any batch after.

Each label is written to ``data.db`` as it arrives, with its provenance (:data:`PROVENANCE`);
a structure ``data.db`` already holds is never asked about again, so a label in flight when a
run died is redone once and never duplicated. Every label outside the test set has one role
(its ``split``, :mod:`chemgap.common.keys`): train, holdout or calibration.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.loop.context import LoopContext
from chemgap.campaigns.spec import held_out_counts
from chemgap.common.keys import CALIBRATION_SPLIT, HOLDOUT_SPLIT, TRAIN_SPLIT

log = logging.getLogger(__name__)

INITIAL_DONE = "initial_labels"  # state.json's step once iteration 0 is labelled

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


def provenance(atoms: Atoms) -> dict[str, Any]:
    """The provenance of a structure to store with its label (``data.db`` key-value pairs)."""
    out = {key: atoms.info.get(key) for key in PROVENANCE}
    out["source"] = out["source"] or "seed"
    out["split"] = out["split"] or TRAIN_SPLIT
    return out


def label(loop: LoopContext, structures: list[Atoms], *, iteration: int) -> None:
    """Label ``structures`` with the spec's oracle on the loop's executor, each result stored
    as it arrives; those ``data.db`` already holds are skipped (a resumed run).
    """
    from chemgap.oracle import check_backend, label_batch

    store, spec = loop.store, loop.spec
    todo = [a for a in structures if not store.has(a)]
    if len(todo) < len(structures):
        log.info(
            "%d of %d already in data.db (resumed)", len(structures) - len(todo), len(structures)
        )
    if not todo:
        return
    check_backend(spec.oracle)
    done = 0

    def on_result(index: int, result: Any) -> None:
        nonlocal done
        store.add(
            result.atoms,
            iteration=iteration,
            oracle=str(spec.oracle.name),
            status=result.status,
            seconds=round(float(result.seconds), 6),
            **provenance(todo[index]),
        )
        done += 1
        loop.report(
            "label",
            {"iteration": iteration, "done": done, "total": len(todo), "status": result.status},
        )

    summary = label_batch(
        todo, spec.oracle, on_result=on_result, iteration=iteration, executor=loop.executor
    )
    log.info("iteration %d labels: %s", iteration, summary.describe())


def split_roles(n: int, n_holdout: int, n_calibration: int, rng: np.random.Generator) -> list[str]:
    """``n`` roles: ``n_holdout`` holdout and ``n_calibration`` calibration at random places,
    train otherwise.
    """
    roles = np.array([TRAIN_SPLIT] * n, dtype=object)
    where = rng.choice(n, size=n_holdout + n_calibration, replace=False)
    roles[where] = [HOLDOUT_SPLIT] * n_holdout + [CALIBRATION_SPLIT] * n_calibration
    return [str(r) for r in roles]


def initial_labels(loop: LoopContext) -> None:
    """Iteration 0: draw the initial set from the seeds marked ``initial``, give each its
    role, label it, then the test set; recorded as :data:`INITIAL_DONE`.

    Raises:
        RuntimeError: the oracle labelled too few to train, validate and calibrate on.
    """
    spec = loop.spec
    seeds = loop.seeds()
    pool = [a for a in seeds if spec.system.seeds[a.info["seed_index"]].initial]
    rng = loop.rng(0, 1)
    n = min(spec.system.initial_labels, len(pool))
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
    n_hold, n_cal = held_out_counts(spec.system, n)
    for atoms, role in zip(chosen, split_roles(n, n_hold, n_cal, rng), strict=True):
        atoms.info["split"] = role
    loop.begin(0, "label", n=len(chosen))
    label(loop, chosen, iteration=0)
    label_test_set(loop)
    if not all(loop.labelled(s) for s in (TRAIN_SPLIT, HOLDOUT_SPLIT, CALIBRATION_SPLIT)):
        raise RuntimeError(
            "the oracle labelled too few initial structures to train, validate and "
            f"calibrate on ({loop.store.label_counts()}); see 'ase db {loop.layout.db}'"
        )
    loop.finish(0, INITIAL_DONE)


def label_test_set(loop: LoopContext) -> None:
    """Label the fixed test set (or store the user's labelled file as it is)."""
    from chemgap.agent.testset import draw_test_set, read_test_file

    spec, store = loop.spec, loop.store
    cfg = spec.test_set
    if cfg.file is not None:
        for atoms in read_test_file(spec):
            if not store.has(atoms):
                store.add(atoms, iteration=0, oracle="file", status="ok", **provenance(atoms))
        return
    if cfg.per_kind == 0:
        return
    test = draw_test_set(spec, loop.rng(0, 9), loop.base_dir)
    loop.report("step", {"iteration": 0, "step": "test", "n": len(test)})
    label(loop, test, iteration=0)


def role_counts(loop: LoopContext, it: int, n_batch: int) -> dict[str, int]:
    """How many of iteration ``it``'s ``n_batch`` labels are holdout and calibration labels.

    Each role gets its fraction of the batch (``system.holdout_fraction``,
    ``system.calibration_fraction``), rounded up or down at random (seeded) so that over the
    iterations the counts average the fractions; at least one label is left to train on when
    the batch has two or more.
    """
    system = loop.spec.system
    rng = loop.rng(it, 4)
    counts = {}
    for role, fraction in (
        (HOLDOUT_SPLIT, system.holdout_fraction),
        (CALIBRATION_SPLIT, system.calibration_fraction),
    ):
        share = fraction * n_batch
        counts[role] = int(np.floor(share)) + int(rng.random() < share - np.floor(share))
    while n_batch >= 2 and sum(counts.values()) >= n_batch:
        role = max(counts, key=lambda r: counts[r])
        counts[role] -= 1
    return counts


def draw_roles(pool: list[Atoms], counts: dict[str, int], rng: np.random.Generator) -> list[Atoms]:
    """The holdout and calibration labels: ``counts`` frames drawn uniformly at random from
    ``pool`` (without replacement; fewer when it holds fewer), their ``split`` set.

    Drawn from the explored trajectories, not from the selection's top: the holdout that stops
    training early and the calibration that sets the trust levels then represent the
    distribution the model is used on (the top-uncertainty frames of a batch would make the
    trust level the maximum of a few outliers and move early stopping onto them).
    """
    roles = [role for role, n in counts.items() for _ in range(n)]
    n = min(len(roles), len(pool))
    picked = rng.choice(len(pool), size=n, replace=False) if n else []
    out = []
    for role, i in zip(roles, picked, strict=False):
        atoms = pool[int(i)]
        atoms.info["split"] = role
        out.append(atoms)
    return out
