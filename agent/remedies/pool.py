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
- ``region``: frames with atoms inside the failure regions found by diagnosing the base
  ensemble on the *guidance* part of the test set (:mod:`chemgap.agent.remedies.guidance`;
  each region's rule applied to the pool's own features), the regions taken in turn; when the
  pool holds too few, thermal rattles of those frames fill the budget and are counted. Never a
  test structure or a rattle of one, and the regions were never found on the structures that
  score the arms (the *scoring* part);
- ``probe``: the structures the base iteration's probes proposed, rattled copies to fill;
- ``cell_size``: the periodic seeds repeated ``cell_repeat`` times along their periodic axes,
  thermally rattled (larger training cells; Ortner & Wang 2022).

Every pick returns exactly ``budget`` structures or raises :class:`RemedyRefused`, so the
arms of an experiment spend equal oracle calls.

**Equal calls is not equal cost for cell_size**: its supercells hold ``cell_repeat``^d times
the atoms of a seed (d its periodic axes), and an oracle call's cost grows with its atoms
(DFT: steeply). So an experiment with ``cell_size`` adds a second control, ``random_atoms``
(:func:`pick_equal_atoms`): uniformly random frames of the same pool whose atoms add up to
exactly the atoms of that repeat's ``cell_size`` structures (more, smaller oracle calls),
topped up with thermal rattles of pool frames when the pool holds too few atoms (counted in
its sources). ``cell_size`` is compared with ``random`` at equal calls and with
``random_atoms`` at equal oracle atoms; the summary gives both, and every arm's atoms.
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
    """Frames with atoms in the guidance regions (``base.regions``: regions in rank order, taken
    in turn; within a region the frames with most region atoms first), topped up with thermal
    rattles of those frames.

    The regions were found by diagnosing the base ensemble on the guidance part of the test
    set only (:mod:`chemgap.agent.remedies.guidance`); the arms are scored on the other part.
    Never a test structure or a perturbation of one: the regions' exemplars (test structures)
    are not used (an arm trained on rattles of test structures would be credited with
    memorising them). The pool is the experiment's own exploration (:func:`explore_pool`).

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
            f"remedy region: the diagnosis of iteration {base.iteration}'s ensemble on the "
            "guidance part of the test set flagged no failure region"
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


def exact_atoms(sizes: Sequence[int], target: int) -> list[int]:
    """Indices into ``sizes`` (atoms per structure) whose sizes add up to ``target`` exactly,
    preferring the earliest: each is taken when the structures after it can still make up the
    remainder (a subset-sum bitset of every suffix). When no subset reaches ``target``, the
    largest sum below it.
    """
    n = len(sizes)
    if target <= 0:
        return []
    mask = (1 << (target + 1)) - 1
    reach = [0] * (n + 1)  # reach[i]: bit s set when some subset of sizes[i:] sums to s
    reach[n] = 1
    for i in range(n - 1, -1, -1):
        reach[i] = (reach[i + 1] | (reach[i + 1] << int(sizes[i]))) & mask
    left = reach[0].bit_length() - 1  # the largest reachable sum ≤ target
    out = []
    for i, size in enumerate(sizes):
        if size <= left and (reach[i + 1] >> (left - size)) & 1:
            out.append(i)
            left -= size
    return out


def pick_equal_atoms(
    pool: list[Atoms], target: int, base: Base, rng: np.random.Generator
) -> tuple[list[Atoms], dict[str, Any]]:
    """The ``random_atoms`` control: uniformly random pool frames holding ``target`` atoms in
    all (the oracle atoms of the same repeat's ``cell_size`` structures), so that ``cell_size``
    is compared with random frames at equal oracle cost, not only at equal calls.

    The frames are taken in a uniformly random order, each when the rest can still make the
    total exact (:func:`exact_atoms`); when the pool's frames hold too few atoms, thermal
    rattles of them (in the same order, cycled) follow the pool frames and are counted.

    Returns:
        The structures, and ``{"sources": {"pool frames": n, "rattled pool frames": n},
        "target_atoms": target, "atoms": their atoms, "short_atoms": target − atoms}`` (0 unless
        no combination of the frames' sizes reaches the target).

    Raises:
        RemedyRefused: the pool is empty.
    """
    from chemgap.oracle.triage import check_geometry

    if not pool:
        raise RemedyRefused("remedy random_atoms: the exploration pool is empty")
    order = [pool[i] for i in rng.permutation(len(pool))]
    candidates = list(order)
    have = sum(len(a) for a in candidates)
    slack = 4 * max(len(a) for a in pool)  # room for an exact combination
    temps = base.spec.exploration.temperatures_K
    factor = base.spec.oracle.min_distance_factor
    tries = 0
    while have < target + slack and tries < 50 * len(order) + target:
        src = order[tries % len(order)]
        atoms = _rattled(src, float(temps[tries % len(temps)]), rng)
        tries += 1
        if check_geometry(atoms, factor) is None:
            atoms.info["source"] = "remedy"
            candidates.append(atoms)
            have += len(atoms)
    chosen = [candidates[i] for i in exact_atoms([len(a) for a in candidates], target)]
    rattled = sum("rattle_of" in a.info for a in chosen)
    atoms = sum(len(a) for a in chosen)
    info = {
        "sources": {"pool frames": len(chosen) - rattled, "rattled pool frames": rattled},
        "target_atoms": int(target),
        "atoms": int(atoms),
        "short_atoms": int(target - atoms),
    }
    if atoms < target:
        log.warning("random_atoms: no set of frames holds %d atoms; %d taken", target, atoms)
    return chosen, info
