"""Seed structures: the spec's ``system.seeds`` entries turned into ``ase.Atoms``.

Each generator is a registry entry keyed by the seed's ``kind`` (docs/architecture.md). Every
structure carries its provenance in ``atoms.info``: ``source='seed'``, ``seed_kind``,
``seed_index`` (entry in the spec) and ``copy``. Randomness (vacancy sites, strain, rattle,
conformers) comes from one ``numpy.random.Generator``, so a spec seed reproduces the set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule, surface

from chemgap.campaigns.spec import (
    BulkSeed,
    ClusterSeed,
    DimerSeed,
    FileSeed,
    MoleculeSeed,
    SurfaceSeed,
    SystemConfig,
    VacancySeed,
)

log = logging.getLogger(__name__)

Generator = Callable[..., list[Atoms]]
_VACUUM_A = 8.0  # box padding of non-periodic structures, Å


def _crystal(seed: BulkSeed | VacancySeed | SurfaceSeed | ClusterSeed) -> Atoms:
    kwargs = {"crystalstructure": seed.crystal, "cubic": seed.cubic}
    if seed.a is not None:
        kwargs["a"] = seed.a
    return bulk(seed.formula, **kwargs)


def _bulk(seed: BulkSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    cell = _crystal(seed) * seed.supercell
    return [cell.copy() for _ in range(seed.count)]


def _vacancy(seed: VacancySeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    perfect = _crystal(seed) * seed.supercell
    if seed.vacancies >= len(perfect):
        raise ValueError(
            f"vacancies: {seed.vacancies} vacancies leave no atoms in a {len(perfect)}-atom cell; "
            "use a larger supercell"
        )
    out = []
    for _ in range(seed.count):
        atoms = perfect.copy()
        del atoms[sorted(rng.choice(len(atoms), size=seed.vacancies, replace=False).tolist())]
        out.append(atoms)
    return out


def _surface(seed: SurfaceSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    slab = surface(_crystal(seed), seed.miller, seed.layers, vacuum=seed.vacuum_A, periodic=True)
    slab = slab * (*seed.size, 1)
    slab.pbc = (True, True, seed.vacuum_A == 0)
    return [slab.copy() for _ in range(seed.count)]


def _cluster(seed: ClusterSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    r = seed.radius_A
    crystal = _crystal(seed)
    reps = [int(np.ceil(2 * r / np.linalg.norm(v))) + 1 for v in crystal.cell]
    big = crystal * reps
    middle = big.cell.sum(0) / 2
    centre = big.positions[np.argmin(np.linalg.norm(big.positions - middle, axis=1))]
    centre = centre + np.asarray(seed.offset_A)
    keep = np.linalg.norm(big.positions - centre, axis=1) <= r + 1e-8
    cluster = big[keep]
    if len(cluster) < 2:
        raise ValueError(f"radius_A: {r} Å keeps fewer than 2 atoms; increase it")
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.center(vacuum=_VACUUM_A)
    return [cluster.copy() for _ in range(seed.count)]


def _molecule(seed: MoleculeSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    if seed.name is not None:
        mols = [molecule(seed.name) for _ in range(seed.count)]
    else:
        mols = smiles_conformers(seed.smiles, seed.count, int(rng.integers(2**31 - 1)))
    for mol in mols:
        mol.info["charge"] = seed.charge
        mol.center(vacuum=_VACUUM_A)
        mol.pbc = False
    return mols


def smiles_conformers(smiles: str, n: int, random_seed: int) -> list[Atoms]:
    """``n`` 3D conformers of ``smiles`` with explicit hydrogens (RDKit ETKDGv3 embedding,
    Riniker & Landrum 2015, then MMFF94 relaxation where parameters exist).
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = random_seed
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if not ids:
        raise ValueError(f"smiles: RDKit could not embed {smiles!r} in 3D")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    confs = [Atoms(symbols, mol.GetConformer(i).GetPositions()) for i in ids]
    while len(confs) < n:  # ETKDG returns fewer when conformers coincide
        confs.append(confs[len(confs) % len(ids)].copy())
    for atoms in confs:
        atoms.info["smiles"] = smiles
    return confs[:n]


def _dimer(seed: DimerSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    out = []
    for d in seed.distances_A:
        for _ in range(seed.count):
            pair = Atoms(list(seed.symbols), positions=[[0, 0, 0], [d, 0, 0]], pbc=False)
            pair.center(vacuum=_VACUUM_A)
            out.append(pair)
    return out


def _file(seed: FileSeed, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    from ase.io import read

    images = read(seed.resolve(base_dir), index=seed.index, format=seed.format)
    images = images if isinstance(images, list) else [images]
    out = []
    for atoms in images:
        clean = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        out.extend(clean.copy() for _ in range(seed.count))
    return out


GENERATORS: dict[str, Generator] = {
    "bulk": _bulk,
    "vacancy": _vacancy,
    "surface": _surface,
    "cluster": _cluster,
    "molecule": _molecule,
    "dimer": _dimer,
    "file": _file,
}


def _perturb(atoms: Atoms, strain: float, rattle_A: float, rng: np.random.Generator) -> None:
    """Random symmetric strain of a periodic cell (each component in ±``strain``) and Gaussian
    displacements of standard deviation ``rattle_A`` Å, in place.
    """
    if strain > 0 and atoms.pbc.any():
        eps = rng.uniform(-strain, strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        eps[~atoms.pbc, :] = 0.0
        eps[:, ~atoms.pbc] = 0.0
        atoms.set_cell(atoms.cell @ (np.eye(3) + eps), scale_atoms=True)
    if rattle_A > 0:
        atoms.positions += rng.normal(0.0, rattle_A, size=atoms.positions.shape)


def generate_seeds(system: SystemConfig, rng: np.random.Generator, base_dir: Path) -> list[Atoms]:
    """All seed structures of ``system``, in spec order, with provenance in ``atoms.info``."""
    out: list[Atoms] = []
    for index, seed in enumerate(system.seeds):
        try:
            structures = GENERATORS[seed.kind](seed, rng, base_dir)
        except ValueError as exc:
            raise ValueError(f"system.seeds.{index}: {exc}") from exc
        for copy, atoms in enumerate(structures):
            _perturb(atoms, seed.strain, seed.rattle_A, rng)
            atoms.info.update(source="seed", seed_kind=seed.kind, seed_index=index, copy=copy)
            out.append(atoms)
        log.info("seed %d (%s): %d structures", index, seed.kind, len(structures))
    return out
