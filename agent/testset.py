"""The campaign's fixed test set: structures from every seed kind, labelled once, never trained on.

A campaign's claims (errors per iteration, calibration out of distribution, failure regions,
later remedies) are all measured on one fixed labelled set, so numbers from different
iterations compare. :func:`draw_test_set` makes it from the spec (``test_set`` section):

- every seed entry is a *kind* (:func:`seed_labels`); entries with ``initial: true`` are in
  distribution (ID), the others out of distribution (OOD): the model never saw them at the start;
- ``per_kind`` structures per kind, spread over the test temperatures, drawn either by short
  Langevin MD with the oracle itself (``md``: the oracle's own thermal ensemble; for cheap
  oracles) or by thermal displacements and strain (``rattle``: displacement std
  ``rattle_A · sqrt(T / 300 K)``, one oracle call per structure; for any oracle);
- or a user's labelled file, used as given (:func:`read_test_file`).

Each structure carries ``split='test'``, ``test_kind``, ``in_distribution``, ``seed_kind`` and
``temperature_K`` in ``atoms.info``; the campaign stores them in ``data.db`` with those keys.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from chemgap.campaigns.spec import CampaignSpec, TestSetMethod
from chemgap.common.keys import has_labels

log = logging.getLogger(__name__)

TEST_SPLIT = "test"
RATTLE_REFERENCE_K = 300.0

__all__ = ["TEST_SPLIT", "draw_test_set", "read_test_file", "seed_labels"]


def seed_labels(spec: CampaignSpec) -> list[str]:
    """One readable kind name per seed entry: its ``kind``, plus what tells entries of the same
    kind apart (a surface's Miller index, formula, SMILES, name or file) when the spec has
    several: ``surface (111)``, ``surface (110)``.
    """
    seeds = spec.system.seeds
    counts = Counter(seed.kind for seed in seeds)
    labels = []
    for seed in seeds:
        if counts[seed.kind] == 1:
            labels.append(seed.kind)
            continue
        miller = getattr(seed, "miller", None)
        detail = (
            ("(" + "".join(str(int(i)) for i in miller) + ")" if miller is not None else None)
            or getattr(seed, "formula", None)
            or getattr(seed, "smiles", None)
            or getattr(seed, "name", None)
            or Path(getattr(seed, "path", "") or "").name
            or "-".join(getattr(seed, "symbols", ()))
        )
        labels.append(f"{seed.kind} {detail}")
    repeated = Counter(labels)  # still equal: tell them apart by size, else number them
    for i, seed in enumerate(seeds):
        size = _size_text(seed)
        if repeated[labels[i]] > 1 and size:
            labels[i] = f"{labels[i]} {size}"
    repeated = Counter(labels)
    seen: Counter[str] = Counter()
    for i, label in enumerate(labels):
        if repeated[label] > 1:
            seen[label] += 1
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _size_text(seed: Any) -> str | None:
    """What sets the size of a seed entry's structures: a dimer's separations, a cluster's
    radius, a crystal's supercell (None when nothing does).
    """
    if getattr(seed, "distances_A", None):
        d = seed.distances_A
        return f"{min(d):g}–{max(d):g} Å"
    if getattr(seed, "radius_A", None) is not None:
        return f"r {seed.radius_A:g} Å"
    cell = getattr(seed, "supercell", None)
    if cell is not None and tuple(cell) != (1, 1, 1):
        return "×".join(map(str, cell))
    return None


def _thermalise(
    atoms: Atoms,
    temperature_K: float,
    spec: CampaignSpec,
    rng: np.random.Generator,
) -> Atoms:
    """One test frame from ``atoms`` at ``temperature_K`` (``md`` or ``rattle``)."""
    cfg = spec.test_set
    out = atoms.copy()
    if cfg.method == TestSetMethod.RATTLE:
        sigma = cfg.rattle_A * np.sqrt(temperature_K / RATTLE_REFERENCE_K)
        if cfg.strain > 0 and out.pbc.all():
            eps = rng.uniform(-cfg.strain, cfg.strain, size=(3, 3))
            out.set_cell(out.cell @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        out.positions += rng.normal(0.0, sigma, size=out.positions.shape)
        return out
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from chemgap.oracle import make_calculator

    out.calc = make_calculator(spec.oracle)
    MaxwellBoltzmannDistribution(out, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(
        out,
        timestep=cfg.timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(cfg.md_steps)
    frame = Atoms(out.numbers, out.positions, cell=out.cell, pbc=out.pbc)
    return frame


def draw_test_set(spec: CampaignSpec, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    """``per_kind`` unlabelled test structures from every seed entry (see the module docstring).

    Test structures start from the seed entries *without* their ``strain`` and ``rattle_A``
    (those shape the training seeds): the test set's own thermal displacements (or oracle MD)
    at each test temperature are the only perturbation, so a kind's test structures are the
    physical thermal ensemble the temperature stands for.

    Args:
        spec: the campaign (its ``test_set``, ``exploration`` temperatures and oracle).
        rng: the test set's own random stream.
        base_dir: where relative file seeds are found.
    """
    from chemgap.agent.seeds import generate_seeds

    plain = spec.system.model_copy(
        update={
            "seeds": [
                s.model_copy(update={"strain": 0.0, "rattle_A": 0.0}) for s in spec.system.seeds
            ]
        }
    )
    seeds = generate_seeds(plain, rng, base_dir)
    cfg = spec.test_set
    temps = cfg.temperatures_K or spec.exploration.temperatures_K
    labels = seed_labels(spec)
    out = []
    for index, seed in enumerate(spec.system.seeds):
        pool = [a for a in seeds if a.info.get("seed_index") == index]
        for k in range(cfg.per_kind if pool else 0):
            start = pool[int(rng.integers(len(pool)))]
            t = float(temps[k % len(temps)])
            atoms = _thermalise(start, t, spec, rng)
            atoms.info.update(
                source="test",
                split=TEST_SPLIT,
                seed_kind=seed.kind,
                seed_index=index,
                test_kind=labels[index],
                in_distribution=bool(seed.initial),
                temperature_K=t,
            )
            out.append(atoms)
    log.info("test set: %d structures over %d kinds", len(out), len(labels))
    return out


def read_test_file(spec: CampaignSpec) -> list[Atoms]:
    """The user's labelled test structures (``test_set.file``), used as given.

    A structure's kind is ``info['kind']`` or ``info['config_type']`` (else ``file``); a kind
    equal to the label of an initial seed entry (:func:`seed_labels`) is in distribution.
    """
    from chemgap.agent.errors import BadInput
    from chemgap.agent.structio import read_structures

    path = spec.test_set.resolve(Path.cwd())
    structures = read_structures(path, "test_set.file")
    unlabelled = [i for i, a in enumerate(structures) if not has_labels(a)]
    if unlabelled:
        raise BadInput(
            f"test_set.file: {len(unlabelled)} of {len(structures)} structures in {path} carry "
            f"no energy and forces (first: index {unlabelled[0]}); a test file must be labelled"
        )
    labels = seed_labels(spec)
    initial = {lab for lab, seed in zip(labels, spec.system.seeds, strict=True) if seed.initial}
    for atoms in structures:
        kind = str(atoms.info.get("kind", atoms.info.get("config_type", "file")))
        atoms.info.update(
            source="test",
            split=TEST_SPLIT,
            test_kind=kind,
            seed_kind=kind,
            in_distribution=kind in initial,
        )
    return structures
