"""What the probes look at: the crystal and molecules of a campaign's system, or of a file.

A :class:`ProbeSystem` holds at most one crystal unit cell (the bulk probes' starting point:
EOS, elastic constants, vacancies, surfaces, phonons, MD) and any molecules (vibrations, MD),
plus the element set (every pair gets a dimer curve). From a spec it is built from the seeds:
the first crystal seed gives the crystal — as the conventional cubic cell for cubic lattices,
so that Miller indices and C11/C12/C44 refer to the cubic axes — molecule seeds give molecules
(from the seed generators of :mod:`chemgap.agent.seeds`), dimer seeds add elements, and file
seeds are read: fully periodic structures are crystals, the others molecules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import CampaignSpec, SystemConfig

__all__ = ["ProbeSystem", "load_system"]

_CUBIC = frozenset({"fcc", "bcc", "diamond", "zincblende", "rocksalt", "cesiumchloride"})
_VACUUM_A = 8.0
MAX_MOLECULES = 4  # molecules kept (one per formula, in order)


@dataclass(kw_only=True)
class ProbeSystem:
    """The structures probes start from.

    Attributes:
        elements: chemical symbols, sorted.
        crystal: a periodic unit cell, or None.
        molecules: non-periodic structures (centred in a box of vacuum).
        name: a short description for reports.
    """

    elements: list[str]
    crystal: Atoms | None = None
    molecules: list[Atoms] = field(default_factory=list)
    name: str = "system"

    def supercell(self, min_atoms: int) -> Atoms:
        """The crystal repeated n×n×n with the smallest n giving at least ``min_atoms`` atoms."""
        if self.crystal is None:
            raise ValueError("the system has no crystal")
        n = 1
        while len(self.crystal) * n**3 < min_atoms:
            n += 1
        return self.crystal * (n, n, n)

    @classmethod
    def from_structures(cls, structures: Sequence[Atoms], name: str = "file") -> ProbeSystem:
        """The first fully periodic structure is the crystal; non-periodic ones are molecules
        (one per formula, at most ``MAX_MOLECULES``).
        """
        crystal = next((a.copy() for a in structures if a.pbc.all()), None)
        molecules = []
        for a in structures:
            if not a.pbc.any():
                mol = Atoms(a.numbers, a.positions)
                mol.center(vacuum=_VACUUM_A)
                molecules.append(mol)
        elements = sorted({s for a in structures for s in a.get_chemical_symbols()})
        if crystal is not None:
            crystal = Atoms(crystal.numbers, crystal.positions, cell=crystal.cell, pbc=True)
        return cls(elements=elements, crystal=crystal, molecules=_distinct(molecules), name=name)

    @classmethod
    def from_config(
        cls, system: SystemConfig, base_dir: Path | None = None, name: str = "system"
    ) -> ProbeSystem:
        """From a spec's ``system`` section (see the module docstring)."""
        from chemgap.agent.seeds import GENERATORS

        base = base_dir or Path.cwd()
        rng = np.random.default_rng(0)
        crystal, molecules, elements = None, [], set()
        for seed in system.seeds:
            elements |= seed.elements(base)
            if seed.kind in ("bulk", "vacancy", "surface", "cluster"):
                if crystal is None:
                    crystal = _unit_cell(seed.formula, seed.crystal, seed.a, seed.cubic)
            elif seed.kind in ("molecule", "file"):
                one = seed.model_copy(update={"count": 1})
                found = cls.from_structures(GENERATORS[seed.kind](one, rng, base))
                crystal = crystal or found.crystal
                molecules += found.molecules
        return cls(
            elements=sorted(elements), crystal=crystal, molecules=_distinct(molecules), name=name
        )


def _distinct(molecules: list[Atoms]) -> list[Atoms]:
    """The first molecule of each formula, at most ``MAX_MOLECULES`` of them."""
    out, seen = [], set()
    for mol in molecules:
        formula = mol.get_chemical_formula()
        if formula not in seen and len(out) < MAX_MOLECULES:
            out.append(mol)
            seen.add(formula)
    return out


def _unit_cell(formula: str, lattice: str, a: float | None, cubic: bool) -> Atoms:
    """The conventional cubic cell for cubic lattices, else ASE's cell (``cubic`` as given)."""
    kwargs = {"crystalstructure": lattice, "cubic": lattice in _CUBIC or cubic}
    if a is not None:
        kwargs["a"] = a
    return bulk(formula, **kwargs)


def load_system(source: str | Path) -> tuple[ProbeSystem, CampaignSpec | None]:
    """A probe system from a structure file, or from a campaign spec (a YAML file or a built-in
    name); the spec too when it was one.

    Raises:
        BadInput: neither a readable structure file nor a valid spec.
        FileNotFoundError: the path does not exist and names no built-in campaign.
    """
    from chemgap.campaigns.builtin import builtin_path
    from chemgap.campaigns.spec import SpecError, load_spec

    path = Path(source)
    if path.is_dir():
        raise BadInput(
            f"--system: {path} is a directory; expected a campaign spec, a built-in campaign's "
            "name or a structure file"
        )
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    if path.is_file() and not is_yaml:
        from chemgap.agent.structio import read_structures

        system = ProbeSystem.from_structures(read_structures(path, "--system"), name=path.name)
        return system, None
    if not path.exists() and builtin_path(str(source)) is None:
        raise FileNotFoundError(2, "No such file or directory", str(source))
    try:
        spec = load_spec(source)
    except SpecError as exc:
        raise BadInput(f"--system: {exc}") from None
    base = path.resolve().parent if path.exists() else None
    return ProbeSystem.from_config(spec.system, base, name=spec.name), spec
