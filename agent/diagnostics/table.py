"""The feature table and what every feature family shares.

:class:`Features` is the table a diagnosis builds (one row per atom of all structures, plus
per-structure columns), :class:`FeatureBlock` what one family returns, :class:`FeatureContext`
the inputs the families share (structures, first shells and SOAP computed once), and
:class:`EnvironmentClasses` the SOAP classes of the ``environment`` column. The families
themselves and :func:`~chemgap.agent.diagnostics.features.compute_features` are described in
:mod:`chemgap.agent.diagnostics.features`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.neighbours import Shell, first_shell, is_periodic

PERCEPTION_FORMULAS_KEPT = 5  # failing formulas listed in Features.perception
ORGANIC_ELEMENTS = frozenset({"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I"})
# how a structure was sampled, not what it is: never a failure region (checked apart)
PROVENANCE_FEATURES = ("walker", "iteration", "seed_index", "temperature_K")


class FeatureKind(StrEnum):
    """How a column is sliced: by value (categorical), by True (flag), by thresholds (numeric)."""

    CATEGORICAL = "categorical"
    FLAG = "flag"
    NUMERIC = "numeric"


@dataclass(kw_only=True)
class EnvironmentClasses:
    """The local-environment classes of a feature table, as points in per-atom SOAP space.

    Attributes:
        labels: the class ids (``env0``, ...), one per centroid; what rules select atoms by.
        centroids: (k, d) KMeans centroids of the L2-normalised per-atom SOAP vectors.
        species: the SOAP species (they define the space; tables over other species cannot
            be matched).
        descriptions: per class, its chemistry in words (``Cu, 12-fold, 5–8 Au + 4–7 Cu
            neighbours``; :func:`chemgap.agent.diagnostics.neighbours.describe_class`); empty
            for classes read from a file written before descriptions existed.
        details: per class, the figures behind the description (centre, n_atoms,
            coordination_mean, coordination_range, shell, hybridisation, group).
    """

    labels: list[str]
    centroids: np.ndarray
    species: list[str]
    descriptions: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def name(self, label: str) -> str:
        """How rules show a class: ``<description> (env4)``; the bare id without one."""
        if label in self.labels and len(self.descriptions) == len(self.labels):
            return f"{self.descriptions[self.labels.index(label)]} ({label})"
        return label

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (centroids rounded to 6 significant digits)."""
        return {
            "labels": list(self.labels),
            "species": list(self.species),
            "centroids": [[float(f"{v:.6g}") for v in row] for row in self.centroids],
            "descriptions": list(self.descriptions),
            "details": list(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvironmentClasses:
        """The classes :meth:`to_dict` wrote (descriptions empty in files written without)."""
        return cls(
            labels=[str(x) for x in d["labels"]],
            centroids=np.asarray(d["centroids"], dtype=float),
            species=[str(x) for x in d["species"]],
            descriptions=[str(x) for x in d.get("descriptions") or []],
            details=list(d.get("details") or []),
        )


@dataclass(kw_only=True)
class FeatureBlock:
    """What one family returns.

    Attributes:
        atom: name -> (n_atoms_total,) column (object array of str for categorical, bool for
            flags, float for numeric; NaN / "" where a feature does not apply).
        structure: name -> (n_struct,) column, same conventions.
        kinds: name -> :class:`FeatureKind` of every column above.
        environment: the environment family's classes (None from other families).
        perception: the molecular family's bond-perception counts (see
            :attr:`Features.perception`; None from other families).
    """

    atom: dict[str, np.ndarray] = field(default_factory=dict)
    structure: dict[str, np.ndarray] = field(default_factory=dict)
    kinds: dict[str, FeatureKind] = field(default_factory=dict)
    environment: EnvironmentClasses | None = None
    perception: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Features:
    """Feature table of a list of structures.

    Attributes:
        atom: name -> (n_atoms_total,) column, atoms of all structures concatenated in order;
            structure-level columns are also broadcast here (one value per atom of a structure).
        structure: name -> (n_struct,) column.
        kinds: name -> :class:`FeatureKind`.
        system_idx: (n_atoms_total,) int, the structure each atom belongs to.
        soap_atom: (n_atoms_total, d) per-atom SOAP power spectrum, or None.
        soap_structure: (n_struct, d) SOAP averaged over each structure's atoms, or None.
        groups_present: functional groups matched in at least one atom.
        environment: the classes of the ``environment`` column (None without that family).
        perception: RDKit bond perception by the molecular family: ``tried`` (non-periodic
            organic structures of more than one atom), ``perceived``, ``failed`` (these have no
            functional-group, hybridisation, ring or aromatic features) and ``failed_formulas``
            (the first :data:`PERCEPTION_FORMULAS_KEPT` distinct formulas that failed); empty
            without that family.
    """

    atom: dict[str, np.ndarray]
    structure: dict[str, np.ndarray]
    kinds: dict[str, FeatureKind]
    system_idx: np.ndarray
    soap_atom: np.ndarray | None = None
    soap_structure: np.ndarray | None = None
    groups_present: list[str] = field(default_factory=list)
    environment: EnvironmentClasses | None = None
    perception: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        """Atoms of all structures together (rows of the table)."""
        return len(self.system_idx)

    @property
    def n_struct(self) -> int:
        """Structures in the table."""
        return int(self.system_idx.max()) + 1 if len(self.system_idx) else 0

    def structure_has(self, name: str) -> np.ndarray:
        """(n_struct,) bool: structures with at least one atom whose flag ``name`` is True."""
        out = np.zeros(self.n_struct, dtype=bool)
        out[self.system_idx[self.atom[name].astype(bool)]] = True
        return out

    def region_columns(self) -> list[tuple[str, np.ndarray, FeatureKind]]:
        """(name, column, kind) of every atom column a failure region may be stated in.

        Everything but the sampling provenance (:data:`PROVENANCE_FEATURES`), in table order.
        """
        return [
            (name, col, self.kinds.get(name, FeatureKind.NUMERIC))
            for name, col in self.atom.items()
            if name not in PROVENANCE_FEATURES
        ]


@dataclass(kw_only=True)
class FeatureContext:
    """Shared inputs of the families: the structures, settings and lazily computed SOAP."""

    structures: list[Atoms]
    system_idx: np.ndarray
    environment_classes: int = 8
    seed: int = 0
    soap_r_cut: float = 5.0
    _soap: np.ndarray | None = None
    _shells: list[Shell] | None = None

    @property
    def has_soap(self) -> bool:
        """Whether a family has computed the per-atom SOAP already."""
        return self._soap is not None

    def soap(self) -> np.ndarray:
        """(n_atoms_total, d) per-atom SOAP, computed once."""
        if self._soap is None:
            self._soap = soap_atoms(self.structures, r_cut=self.soap_r_cut)
        return self._soap

    def shells(self) -> list[Shell]:
        """The first shell of every structure (:func:`first_shell`), computed once."""
        if self._shells is None:
            self._shells = [first_shell(a) for a in self.structures]
        return self._shells

    def symbols(self) -> np.ndarray:
        """(n_atoms_total,) chemical symbols of all atoms concatenated."""
        return np.array([s for a in self.structures for s in a.get_chemical_symbols()])

    def molecules(self) -> np.ndarray:
        """(n_struct,) bool: the molecules (:func:`is_molecule`)."""
        return np.array([is_molecule(a) for a in self.structures], dtype=bool)


FamilyFn = Callable[[FeatureContext], FeatureBlock]


def is_molecule(atoms: Atoms) -> bool:
    """True for a non-periodic structure made of :data:`ORGANIC_ELEMENTS` only."""
    return not is_periodic(atoms) and set(atoms.get_chemical_symbols()) <= ORGANIC_ELEMENTS


def soap_atoms(structures: Sequence[Atoms], *, r_cut: float = 5.0) -> np.ndarray:
    """Per-atom SOAP power spectra (n_max 6, l_max 4) of all atoms concatenated; (n_atoms, d).

    One dscribe ``SOAP`` over the union of species, periodic or not per structure. Each row is
    L2-normalised (the SOAP kernel of Bartók et al. 2013 is the normalised dot product).
    """
    from dscribe.descriptors import SOAP

    species = sorted({s for a in structures for s in a.get_chemical_symbols()})
    out: list[np.ndarray] = [np.zeros((0, 0))] * len(structures)
    for periodic in (True, False):
        idx = [i for i, a in enumerate(structures) if is_periodic(a) == periodic]
        if not idx:
            continue
        soap = SOAP(species=species, r_cut=r_cut, n_max=6, l_max=4, periodic=periodic)
        items = []
        for i in idx:
            a = structures[i]
            if periodic:
                a = a.copy()
                a.pbc = True  # dscribe wants a full cell; slabs carry their vacuum in it
            items.append(a)
        res = soap.create(items) if len(items) > 1 else [soap.create(items[0])]
        for i, x in zip(idx, res, strict=True):
            out[i] = np.asarray(x, dtype=float).reshape(len(structures[i]), -1)
    x = np.concatenate(out, axis=0)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def average_per_structure(values: np.ndarray, system_idx: np.ndarray, n: int) -> np.ndarray:
    """Mean of per-atom rows per structure: (n_atoms, d) -> (n, d)."""
    sums = np.zeros((n, values.shape[1]))
    np.add.at(sums, system_idx, values)
    counts = np.bincount(system_idx, minlength=n).astype(float)
    return sums / np.maximum(counts, 1)[:, None]


def nonperiodic(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with periodicity switched off along every axis."""
    a = atoms.copy()
    a.pbc = False
    return a


def informative(col: np.ndarray, kind: FeatureKind) -> bool:
    """Whether a column holds at least two distinct values (NaN does not count)."""
    if kind == FeatureKind.NUMERIC:
        values = col.astype(float)
        return len(np.unique(values[~np.isnan(values)])) > 1
    return len(set(col.tolist())) > 1


def informative_block(
    atom: dict[str, np.ndarray],
    structure: dict[str, np.ndarray],
    kinds: dict[str, FeatureKind],
) -> FeatureBlock:
    """A block of the informative columns only (:func:`informative`)."""
    atom = {k: v for k, v in atom.items() if informative(v, kinds[k])}
    structure = {k: v for k, v in structure.items() if informative(v, kinds[k])}
    return FeatureBlock(
        atom=atom, structure=structure, kinds={k: kinds[k] for k in [*atom, *structure]}
    )
