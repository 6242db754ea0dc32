"""Seed structures: the generators a campaign starts from (``system.seeds``), one class per kind.

A seed entry is a tagged union on ``kind`` (:data:`Seed`); each kind says which elements its
structures hold (:meth:`elements`), so the spec can check them against the oracle before
anything runs. The structures themselves are built by the agent (``agent/seeds.py``).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import ELEMENTS, Section, one_line, short

__all__ = [
    "SEED_KINDS",
    "BulkSeed",
    "ClusterSeed",
    "DimerSeed",
    "FileSeed",
    "MoleculeSeed",
    "Seed",
    "SurfaceSeed",
    "VacancySeed",
]


class _SeedBase(Section):
    """Options every seed generator shares: copies, and random strain/rattle of each copy."""

    count: int = Field(1, ge=1, description="structures generated from this entry")
    strain: float = Field(0.0, ge=0, lt=0.5, description="max random strain per cell component")
    rattle_A: float = Field(0.0, ge=0, lt=1.0, description="std of Gaussian displacements, Å")
    initial: bool = Field(
        True, description="may be drawn into the initial labelled set (all seeds start walkers)"
    )

    def elements(self, base_dir: Path) -> set[str]:
        raise NotImplementedError


class _CrystalSeed(_SeedBase):
    formula: str = Field(description="chemical formula or element, as ase.build.bulk takes it")
    crystal: Literal["fcc", "bcc", "hcp", "diamond", "zincblende", "rocksalt", "cesiumchloride"]
    a: float | None = Field(None, gt=0, description="lattice constant, Å (default: ASE's)")
    supercell: tuple[int, int, int] = Field((1, 1, 1), description="repetitions of the cell")
    cubic: bool = Field(False, description="use the conventional cubic cell")

    @field_validator("formula")
    @classmethod
    def _known_elements(cls, value: str) -> str:
        _formula_symbols(value)
        return value

    @field_validator("supercell")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("repetitions must be >= 1")
        return value

    def elements(self, base_dir: Path) -> set[str]:
        return set(_formula_symbols(self.formula))


class BulkSeed(_CrystalSeed):
    """A perfect crystal (supercell), optionally strained and rattled."""

    kind: Literal["bulk"] = "bulk"


class VacancySeed(_CrystalSeed):
    """A supercell with randomly chosen atoms removed (point defects)."""

    kind: Literal["vacancy"] = "vacancy"
    vacancies: int = Field(1, ge=1, description="atoms removed per structure")


class SurfaceSeed(_CrystalSeed):
    """A slab cut along ``miller`` with vacuum on both sides (periodic in-plane)."""

    kind: Literal["surface"] = "surface"
    miller: tuple[int, int, int] = Field((1, 1, 1), description="surface normal (Miller indices)")
    layers: int = Field(4, ge=1)
    vacuum_A: float = Field(8.0, ge=0, description="vacuum on each side, Å")
    size: tuple[int, int] = Field((2, 2), description="in-plane repetitions")


class ClusterSeed(_CrystalSeed):
    """A finite cluster: the atoms of a crystal within ``radius_A`` of a site (non-periodic)."""

    kind: Literal["cluster"] = "cluster"
    radius_A: float = Field(4.0, gt=0, description="cut radius, Å")
    offset_A: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0),
        description="centre = the atom nearest the crystal's middle + this offset, Å "
        "(off an atom, e.g. a/4 (1,1,1) in rocksalt, gives charge-neutral clusters)",
    )


class MoleculeSeed(_SeedBase):
    """A molecule from SMILES (RDKit ETKDG conformers) or from ASE's G2 collection by name."""

    kind: Literal["molecule"] = "molecule"
    smiles: str | None = None
    name: str | None = Field(None, description="G2 name, e.g. 'CH3CH2OH'")
    charge: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> MoleculeSeed:
        if (self.smiles is None) == (self.name is None):
            raise ValueError("give exactly one of 'smiles' or 'name'")
        if self.smiles is not None:
            _smiles_symbols(self.smiles)
        elif self.name is not None:
            from ase.collections import g2

            if self.name not in g2.names:
                raise ValueError(f"name {short(self.name)} is not in ASE's G2 collection")
        return self

    def elements(self, base_dir: Path) -> set[str]:
        """The molecule's elements (hydrogens included)."""
        if self.smiles is not None:
            return set(_smiles_symbols(self.smiles))
        from ase.build import molecule

        return set(molecule(self.name).get_chemical_symbols())


class DimerSeed(_SeedBase):
    """Two atoms at a range of separations (e.g. an ion pair), non-periodic."""

    kind: Literal["dimer"] = "dimer"
    symbols: tuple[str, str]
    distances_A: list[float] = Field(min_length=1, description="separations, Å")

    @field_validator("symbols")
    @classmethod
    def _known(cls, value: tuple[str, str]) -> tuple[str, str]:
        for s in value:
            if s not in ELEMENTS:
                raise ValueError(f"unknown element {short(s)}")
        return value

    @field_validator("distances_A")
    @classmethod
    def _positive_distances(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("distances must be > 0 Å")
        return value

    def elements(self, base_dir: Path) -> set[str]:
        """The two atoms' elements."""
        return set(self.symbols)


class FileSeed(_SeedBase):
    """Structures from a file ASE reads (extxyz, CIF, POSCAR, ...); path relative to the spec."""

    kind: Literal["file"] = "file"
    path: str
    index: str = Field(":", description="ASE index string: ':' all, '0' first, '::10' ...")
    format: str | None = Field(None, description="ASE format name when the suffix is ambiguous")

    def resolve(self, base_dir: Path) -> Path:
        """The file's path; a relative one starts at ``base_dir`` (the spec's folder)."""
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else base_dir / p

    def elements(self, base_dir: Path) -> set[str]:
        """Every element of the structures the file holds (it is read).

        Raises:
            ValueError: the file is missing or ASE cannot read it.
        """
        from ase.io import read

        path = self.resolve(base_dir)
        if not path.is_file():
            raise ValueError(f"file {short(str(path), 120)} does not exist")
        try:
            images = read(path, index=self.index, format=self.format)
        except Exception as exc:
            raise ValueError(f"ASE cannot read {short(str(path), 120)}: {one_line(exc)}") from exc
        images = images if isinstance(images, list) else [images]
        return {s for atoms in images for s in atoms.get_chemical_symbols()}


Seed = Annotated[
    BulkSeed | VacancySeed | SurfaceSeed | ClusterSeed | MoleculeSeed | DimerSeed | FileSeed,
    Field(discriminator="kind"),
]


SEED_KINDS = frozenset(
    cls.model_fields["kind"].default for cls in typing.get_args(typing.get_args(Seed)[0])
)
"""Every seed ``kind`` (the tags of :data:`Seed`)."""


def _formula_symbols(formula: str) -> list[str]:
    from ase.symbols import string2symbols

    try:
        symbols = string2symbols(formula)
    except Exception as exc:
        raise ValueError(f"cannot parse formula {short(formula)}") from exc
    unknown = sorted(set(symbols) - ELEMENTS)
    if unknown or not symbols:
        raise ValueError(f"unknown element(s) in formula {short(formula)}: {', '.join(unknown)}")
    return symbols


def _smiles_symbols(smiles: str) -> list[str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {short(smiles)}")
    mol = Chem.AddHs(mol)
    return [a.GetSymbol() for a in mol.GetAtoms()]
