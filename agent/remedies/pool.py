"""The structures the data remedies spend their oracle budget on.

Every pool-based arm of one repeat draws from the same **pool**: frames of one batched MD run
of the base model from the campaign's seeds (its walkers, steps and temperatures), one frame
every ``CANDIDATE_STRIDE`` steps of each walker whatever its uncertainty (the trust window's
lower level is 0 and walkers are never stopped for being uncertain). The arms differ only in
which frames they take:

- ``random``: uniformly, the control (Settles 2009; the baseline every active-learning study
  must beat);
- ``uncertainty``: the largest calibrated force spread (query by committee, Seung et al. 1992;
  the loop continued);
- ``diverse``: uncertain and spread out in the members' descriptor space;
- ``region``: frames with atoms inside the base iteration's flagged failure regions (each
  region's rule applied to the pool's own features), the regions taken in turn; when the pool
  holds too few, thermal rattles of the region's exemplars fill the budget and are counted;
- ``probe``: the structures the base iteration's probes proposed, rattled copies to fill;
- ``cell_size``: the periodic seeds repeated ``cell_repeat`` times along their periodic axes,
  thermally rattled (larger training cells; Ortner & Wang 2022).

Every pick returns exactly ``budget`` structures or raises :class:`RemedyRefused`, so the
arms of an experiment spend equal oracle budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.errors import RemedyRefused
from chemgap.agent.remedies.base import Base

log = logging.getLogger(__name__)

RATTLE_300K_A = 0.05  # displacement std of a thermal rattle at 300 K, Å (as the test set's)


def explore_pool(base: Base, ensemble: Any, seed: Sequence[int]) -> list[Atoms]:
    """The repeat's pool: every walker's frame every ``CANDIDATE_STRIDE`` steps, with the base
    model's calibrated uncertainty in ``info['uncertainty']``; frames the oracle would refuse
    (atoms too close) are left out.
    """
    from chemgap.agent.explore import explore
    from chemgap.agent.trust import TrustLevels
    from chemgap.oracle.triage import check_geometry

    cfg = base.spec.exploration
    seeds = base.seeds()
    rng = np.random.default_rng(list(seed))
    order = rng.permutation(len(seeds))
    starts = [seeds[order[i % len(seeds)]].copy() for i in range(cfg.walkers)]
    temps = [cfg.temperatures_K[i % len(cfg.temperatures_K)] for i in range(cfg.walkers)]
    every = TrustLevels(lower={}, upper={}, default_lower=0.0, default_upper=float("inf"))
    result = explore(
        ensemble, starts, cfg, temperatures_K=temps, levels=every, rng=rng,
        stop_on_uncertainty=False,
    )  # fmt: skip
    factor = base.spec.oracle.min_distance_factor
    pool = [a for a in result.candidates if check_geometry(a, factor) is None]
    for k, atoms in enumerate(pool):
        atoms.info.update(pool_index=k, source="remedy")
    log.info("pool: %d frames from %d walkers", len(pool), cfg.walkers)
    return pool


def _need(arm: str, have: int, budget: int, what: str) -> None:
    if have < budget:
        raise RemedyRefused(
            f"remedy {arm}: {what} holds {have} structures for a budget of {budget}; lower "
            "--budget (remediation.budget) or raise exploration.walkers/steps"
        )


def pick_random(pool: list[Atoms], budget: int, rng: np.random.Generator) -> list[Atoms]:
    """``budget`` frames drawn uniformly without replacement."""
    _need("random", len(pool), budget, "the exploration pool")
    return [pool[i] for i in sorted(rng.choice(len(pool), size=budget, replace=False))]


def pick_selected(
    pool: list[Atoms],
    budget: int,
    strategy: str,
    ensemble: Any,
    rng: np.random.Generator,
) -> list[Atoms]:
    """``budget`` frames by the loop's selection ``strategy`` (uncertainty or diverse), topped
    up by uncertainty when de-duplication leaves the selection short.
    """
    from chemgap.agent.selection import Candidates, select

    _need(strategy, len(pool), budget, "the exploration pool")
    unc = np.array([a.info["uncertainty"] for a in pool])
    sel = select(
        Candidates(
            uncertainty=unc,
            descriptors=ensemble.descriptors(pool),
            elements=[frozenset(a.get_chemical_symbols()) for a in pool],
        ),
        budget=float(budget),
        strategy=strategy,
        rng=rng,
    )
    chosen = list(dict.fromkeys(int(i) for i in sel.indices))[:budget]
    for i in np.argsort(-unc, kind="stable"):
        if len(chosen) >= budget:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return [pool[i] for i in chosen]


def _rattled(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> Atoms:
    """``atoms`` thermally rattled, recording what it is a rattle of (``info["rattle_of"]``,
    its structure key).
    """
    from chemgap.common.keys import structure_key

    out = atoms.copy()
    out.calc = None
    out.info["rattle_of"] = structure_key(atoms)
    std = RATTLE_300K_A * np.sqrt(temperature_K / 300.0)
    out.positions = out.positions + rng.normal(0.0, std, size=out.positions.shape)
    return out


def _fill(
    found: list[Atoms], sources: list[Atoms], budget: int, base: Base, rng: np.random.Generator
) -> tuple[list[Atoms], int]:
    """``found`` topped up to ``budget`` with thermal rattles of ``sources`` (cycled); returns
    the structures and how many are rattles.
    """
    from chemgap.oracle.triage import check_geometry

    temps = base.spec.exploration.temperatures_K
    factor = base.spec.oracle.min_distance_factor
    out, made, tries = list(found[:budget]), 0, 0
    while len(out) < budget and sources and tries < 50 * budget:
        tries += 1
        src = sources[tries % len(sources)]
        atoms = _rattled(src, float(temps[tries % len(temps)]), rng)
        if check_geometry(atoms, factor) is None:
            atoms.info["source"] = "remedy"
            out.append(atoms)
            made += 1
    return out, made


def pick_region(
    base: Base, pool: list[Atoms], budget: int, rng: np.random.Generator
) -> tuple[list[Atoms], dict[str, Any]]:
    """Frames with atoms in the flagged regions (regions in rank order, taken in turn; within a
    region the frames with most region atoms first), topped up with thermal rattles of those
    frames.

    Never a test structure or a perturbation of one: the regions were flagged on the run's
    test set, which scores the arms, so their exemplars (test structures) are not used (an arm
    trained on rattles of the structures it is scored on would be credited with memorising
    them). The pool is the experiment's own exploration (:func:`explore_pool`).

    Each region's atoms in the pool are those its rule selects on the diagnosis' features
    rebuilt on the pool (:class:`chemgap.agent.diagnostics.selector.RegionSelector`: a rule
    naming a feature the pool's features lack selects no frame, with a warning).

    Returns:
        The structures, and ``{"sources": {"pool frames": n, "rattled pool frames": n},
        "per_region": {id: n}, "untargetable": {id: feature}}`` (regions whose rule names a
        feature the pool's frames lack, e.g. the test set's ``out_of_distribution``: left out).

    Raises:
        RemedyRefused: no pool frame has an atom in any region.
    """
    from chemgap.agent.diagnostics.region import as_region
    from chemgap.agent.diagnostics.selector import RegionSelector

    regions = [as_region(r) for r in base.regions]
    if not regions:
        raise RemedyRefused(
            f"remedy region: iteration {base.iteration} of {base.root} flagged no failure region"
        )
    selector = RegionSelector.rebuild(
        pool, base.spec.diagnostics, seed=base.spec.seed, environment=base.environment
    )
    # a rule on what only the test set has (its ID/OOD part, say) cannot pick pool frames:
    # left out, said once in the notes rather than warned about every repeat
    untargetable = {r.id: selector.absent(r) for r in regions}
    untargetable = {rid: feature for rid, feature in untargetable.items() if feature}
    if untargetable:
        log.info("region remedy: regions not targetable in the pool: %s", untargetable)
    regions = [r for r in regions if r.id not in untargetable]
    queues: list[list[int]] = []
    for r in regions:
        mask = selector.select(r)
        counts = np.bincount(selector.features.system_idx[mask], minlength=len(pool))
        queues.append([int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0])
    chosen: list[int] = []
    per_region = {r.id: 0 for r in regions}
    while len(chosen) < budget and any(queues):
        for r, queue in zip(regions, queues, strict=True):
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < budget:
                chosen.append(queue.pop(0))
                per_region[r.id] += 1
    found = [pool[i] for i in chosen]
    out, made = _fill(found, found, budget, base, rng)
    _need("region", len(out), budget, "the pool's frames inside the regions and their rattles")
    info = {
        "sources": {"pool frames": len(chosen), "rattled pool frames": made},
        "per_region": per_region,
        "untargetable": untargetable,  # region id -> the feature the pool's frames lack
    }
    log.info("region remedy: %s", info)
    return out, info


def pick_probe(base: Base, budget: int, rng: np.random.Generator) -> tuple[list[Atoms], int]:
    """The base iteration's probe structures, topped up with their thermal rattles."""
    from chemgap.agent.structio import read_extxyz

    found = read_extxyz(base.layout.probes.candidates)
    if not found:
        raise RemedyRefused(
            f"remedy probe: iteration {base.iteration} of {base.root} has no probe structures "
            "(set probes.names and probes.every in the campaign)"
        )
    for atoms in found:
        atoms.info["source"] = "remedy"
    order = [found[i] for i in rng.permutation(len(found))]
    out, made = _fill(order, found, budget, base, rng)
    _need("probe", len(out), budget, "the probes' structures and their rattles")
    return out, made


def periodic_seeds(base: Base) -> list[Atoms]:
    """The campaign's seeds that are periodic along some axis."""
    return [a for a in base.seeds() if a.pbc.any()]


def pick_cell_size(base: Base, budget: int, repeat: int, rng: np.random.Generator) -> list[Atoms]:
    """``budget`` thermally rattled supercells of the periodic seeds, each repeated ``repeat``
    times along every periodic axis.
    """
    seeds = periodic_seeds(base)
    if not seeds:
        raise RemedyRefused(
            "remedy cell_size: the campaign has no periodic seed structure to enlarge"
        )
    big = [a.repeat([repeat if p else 1 for p in a.pbc]) for a in seeds]
    out, _ = _fill([], [big[i] for i in rng.permutation(len(big))], budget, base, rng)
    _need("cell_size", len(out), budget, "the enlarged periodic seeds")
    return out
