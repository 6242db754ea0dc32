"""Chemical features of atoms and structures, in terms a chemist recognises.

Every feature family is an entry of the registry :data:`FEATURE_FAMILIES` (a ``StrEnum`` name, or
any string for a user's own family registered with :func:`register_feature_family`); each family
maps a list of structures to per-atom columns. :func:`compute_features` runs the chosen families
and returns one :class:`Features` table: one row per atom of all structures concatenated in
order (the same order as :class:`chemgap.models.predict.Prediction`), plus per-structure columns.

A feature is computed only where it means something: a *molecule* here is a non-periodic
structure made of :data:`ORGANIC_ELEMENTS` only, and a molecule's atoms get NaN (or no group)
where a family does not apply to them. A column that is NaN or constant everywhere is dropped.
The first shell of an atom is :func:`chemgap.agent.diagnostics.neighbours.first_shell`: atoms
within 1.2 x the sum of covalent radii (ASE's natural cutoffs), between the first and second
neighbour shells of close-packed metals, the bonded atoms of a molecule.

Families:

- ``element``: chemical symbol.
- ``molecular``: for molecules of more than one atom, bonds perceived from geometry with RDKit
  (``rdDetermineBonds``, after Kim & Kim 2015's xyz2mol), then per atom: membership in each
  functional group of :data:`FUNCTIONAL_GROUPS` (SMARTS; hydrogens bonded to a matched atom are
  members too), hybridisation, ring and aromatic flags. A molecule whose bonds cannot be
  perceived (radicals, distorted geometries) gets no group features, never an exception; the
  family counts them (:attr:`Features.perception`: molecules tried, perceived, failed and the
  first failing formulas), so a diagnosis can say how many molecules have no group features.
- ``neighbours`` (local composition; only when the data holds two elements or more): per atom,
  the number of first-shell neighbours of each element present (``nb_count:Au``, every atom)
  and their fraction of the shell (``shell_frac:Au``, atoms outside molecules: in a molecule the
  shell is a handful of bonded atoms, whose counts already say it); per periodic structure, the
  fraction of its atoms of each element (``comp_frac:Au``; a molecule's formula is the
  ``composition`` column). Only elements present get columns, and none for pairs of elements,
  which keeps the family of hypotheses the region finder tests (and corrects for) small.
- ``coordination`` (atoms outside molecules; hybridisation and neighbour counts describe a
  molecule's atoms): coordination number (CN, first-shell neighbours); the coordination deficit
  (the element's bulk CN in the data, taken as the 95th percentile of its CNs, minus the atom's
  CN, floored at 0) and the distance to the nearest under-coordinated atom (0 for a defect or
  surface atom itself, capped at :data:`DEFECT_DISTANCE_CAP_A`); for an atom with no
  first-shell neighbour only, ``isolation_A``, its distance to the nearest atom (separated ion
  pairs, evaporated atoms: what only long-range terms see beyond a model's cutoff).
- ``bonds`` (structures outside molecules: a molecule's bond lengths follow its bond orders,
  which the molecular family names): per atom ``bond_stretch_A``, the mean over its first-shell
  bonds of d - d_ref(pair type), Å, and per structure ``bond_distortion_A``, the root mean
  square of d - d_ref over its bonds, Å (thermal or structural disorder). The reference length
  d_ref of a pair type (Cu-Cu, Au-Cu) is the median first-shell distance of that pair type over
  the diagnosed structures outside molecules
  (:func:`chemgap.agent.diagnostics.neighbours.bond_references`), not a relaxed seed.
- ``environment``: local-environment class, KMeans (k = ``environment_classes``) on per-atom SOAP
  power spectra (Bartók, Kondor & Csányi, Phys. Rev. B 87, 184115, 2013; dscribe, Himanen et al.,
  Comput. Phys. Commun. 247, 106949, 2020). The classes depend on the structures and the seed
  only (never on errors), so a fixed test set gets the same classes every iteration; their
  centroids (:class:`EnvironmentClasses`) let :func:`match_environment_classes` give the classes
  of another diagnosis (other structures, another seed) the names of the matching earlier ones.
  Each class is described in words by its chemistry
  (:func:`chemgap.agent.diagnostics.neighbours.describe_class`: centre element, coordination,
  first-shell composition, hybridisation and group in molecules), ``Cu, 12-fold, 5–8 Au + 4–7
  Cu neighbours``; rules show that description, the class id (``env4``) only as a reference.
- ``structure``: composition, atom count, total charge (``info["charge"]``, e; absent: 0),
  periodicity, density (g/cm³, fully periodic cells),
  volumetric strain (linear, against the median volume per atom of cells of the same formula),
  source and seed kind from ``atoms.info``, and ``out_of_distribution`` (the negation of
  ``in_distribution``, a campaign's test-set flag for seed kinds absent from the initial training
  data) when every structure carries it; and the sampling provenance (:data:`PROVENANCE_FEATURES`:
  walker, iteration, seed index, sampling temperature). Provenance columns are in the table but
  are not chemistry: the region finders never use them, and
  :func:`chemgap.agent.diagnostics.provenance.check_provenance` tests them apart, as a warning
  about sampling artefacts.

Model outputs are not chemistry of the structures, with one exception a chemist reads as such:
the per-atom charges members with learned charges predict (:mod:`chemgap.models.longrange`).
:func:`with_model_charges` adds them to a table as ``pred_charge_e`` (ensemble mean, e) and
``charge_spread_e`` (its std over the members, e), so a region can say "atoms the model charges
above +0.8 e"; a diagnosis does this whenever its model predicts charges.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.neighbours import (
    Shell,
    bond_deviations,
    bond_references,
    describe_class,
    first_shell,
    is_periodic,
    low_coordinated_neighbours,
    neighbour_counts,
)

log = logging.getLogger(__name__)

DEFECT_DISTANCE_CAP_A = 10.0
PERCEPTION_FORMULAS_KEPT = 5  # failing formulas listed in Features.perception
ORGANIC_ELEMENTS = frozenset({"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I"})
# how a structure was sampled, not what it is: never a failure region (checked apart)
PROVENANCE_FEATURES = ("walker", "iteration", "seed_index", "temperature_K")


class FeatureKind(StrEnum):
    """How a column is sliced: by value (categorical), by True (flag), by thresholds (numeric)."""

    CATEGORICAL = "categorical"
    FLAG = "flag"
    NUMERIC = "numeric"


class FeatureFamily(StrEnum):
    """The built-in feature families (keys of :data:`FEATURE_FAMILIES`)."""

    ELEMENT = "element"
    COORDINATION = "coordination"
    NEIGHBOURS = "neighbours"
    BONDS = "bonds"
    ENVIRONMENT = "environment"
    MOLECULAR = "molecular"
    STRUCTURE = "structure"


# Functional groups as SMARTS (Daylight theory manual; RDKit's FunctionalGroups.txt and the
# Ertl 2017 classification were the guides). Keys are the names regions use. A pattern matches
# the group's own heavy atoms only (context atoms sit inside recursive $(...) terms); hydrogens
# bonded to a matched atom are added as members.
FUNCTIONAL_GROUPS: dict[str, str] = {
    "alkyl": "[CX4]",
    "alkene": "[CX3]=[CX3]",
    "alkyne": "[CX2]#[CX2]",
    "aromatic_ring": "[a]",
    "heteroaromatic_n": "[n]",
    "hydroxyl": "[OX2H1;$(O[CX4,c])]",
    "phenol": "[OX2H1;$(Oc)]",
    "ether": "[OX2;!$(O[CX3]=O);$(O([#6])[#6])]",
    "carbonyl": "[CX3]=[OX1]",
    "aldehyde": "[CX3H1](=[OX1])",
    "ketone": "[CX3;$(C([#6])[#6])]=[OX1]",
    "carboxylic_acid": "[CX3](=[OX1])[OX2H1]",
    "carboxylate": "[CX3](=[OX1])[OX1-]",
    "ester": "[CX3;$(C[#6,#1])](=[OX1])[OX2H0;$(O[#6])]",
    "amide": "[NX3][CX3]=[OX1]",
    "amine": "[NX3;!$(N[CX3]=[OX1,SX1,NX2]);!$(N~[#8]);!$(N-a);!$([N+])]",
    "aniline": "[NX3;!$(N[CX3]=[OX1]);!$(N~[#8]);$(N-a)]",
    "imine": "[CX3]=[NX2]",
    "nitrile": "[NX1]#[CX2]",
    "nitro": "[#7X3](~[#8X1])~[#8X1]",
    "thiol": "[SX2H1]",
    "thioether": "[SX2;$(S([#6])[#6])]",
    "sulfonyl": "[SX4](=[OX1])(=[OX1])",
    "phosphate": "[PX4](=[OX1])([OX2])([OX2])",
    "halide": "[F,Cl,Br,I;$(*[#6])]",
    "strained_ring": "[r3,r4]",
    "water": "[OX2H2]",
}


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


# --------------------------------------------------------------------------- SOAP
_is_periodic = is_periodic


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
        idx = [i for i, a in enumerate(structures) if _is_periodic(a) == periodic]
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


# --------------------------------------------------------------------------- families
def _element(ctx: FeatureContext) -> FeatureBlock:
    symbols = np.array([s for a in ctx.structures for s in a.get_chemical_symbols()], dtype=object)
    return FeatureBlock(atom={"element": symbols}, kinds={"element": FeatureKind.CATEGORICAL})


def coordination_numbers(atoms: Atoms, mult: float = 1.2) -> np.ndarray:
    """(n_atoms,) int coordination numbers: neighbours within mult x (r_cov,i + r_cov,j)."""
    return first_shell(atoms, mult).coordination


def _nonperiodic(atoms: Atoms) -> Atoms:
    a = atoms.copy()
    a.pbc = False
    return a


def _informative(col: np.ndarray, kind: FeatureKind) -> bool:
    """Whether a column holds at least two distinct values (NaN does not count)."""
    if kind == FeatureKind.NUMERIC:
        values = col.astype(float)
        return len(np.unique(values[~np.isnan(values)])) > 1
    return len(set(col.tolist())) > 1


def _block(
    atom: dict[str, np.ndarray],
    structure: dict[str, np.ndarray],
    kinds: dict[str, FeatureKind],
) -> FeatureBlock:
    """A block of the informative columns only (:func:`_informative`)."""
    atom = {k: v for k, v in atom.items() if _informative(v, kinds[k])}
    structure = {k: v for k, v in structure.items() if _informative(v, kinds[k])}
    return FeatureBlock(
        atom=atom, structure=structure, kinds={k: kinds[k] for k in [*atom, *structure]}
    )


def _defect_distances(atoms: Atoms, deficit: np.ndarray) -> np.ndarray:
    """(n_atoms,) distance to the nearest atom with a coordination deficit, capped, Å."""
    distance = np.full(len(atoms), DEFECT_DISTANCE_CAP_A)
    defects = np.flatnonzero(deficit > 0)
    if len(defects):
        a = atoms if _is_periodic(atoms) else _nonperiodic(atoms)
        dist = a.get_all_distances(mic=_is_periodic(atoms))[:, defects].min(axis=1)
        distance = np.minimum(dist, DEFECT_DISTANCE_CAP_A)
    return distance


def _coordination(ctx: FeatureContext) -> FeatureBlock:
    """CN, coordination deficit and defect distance of the atoms outside molecules."""
    molecule = ctx.molecules()
    if molecule.all():
        return FeatureBlock()
    cn = np.concatenate([s.coordination for s in ctx.shells()]).astype(float)
    symbols = ctx.symbols()
    ext = ~molecule[ctx.system_idx]
    bulk_cn = {
        el: float(np.round(np.percentile(cn[ext & (symbols == el)], 95)))
        for el in set(symbols[ext])
    }
    deficit = np.full(len(cn), np.nan)
    deficit[ext] = np.maximum(np.array([bulk_cn[s] for s in symbols[ext]]) - cn[ext], 0.0)
    distance = np.full(len(cn), np.nan)
    offset = 0
    for k, atoms in enumerate(ctx.structures):
        n = len(atoms)
        if not molecule[k]:
            rows = slice(offset, offset + n)
            distance[rows] = _defect_distances(atoms, deficit[rows])
        offset += n
    isolated = ext & (cn == 0)
    cn[~ext] = np.nan
    numeric = FeatureKind.NUMERIC
    atom = {
        "coordination": cn,
        "coordination_deficit": deficit,
        "defect_distance_A": np.round(distance, 2),
        "isolation_A": np.round(_isolation(ctx, isolated), 2),
    }
    return _block(atom, {}, dict.fromkeys(atom, numeric))


def _isolation(ctx: FeatureContext, isolated: np.ndarray) -> np.ndarray:
    """(n_atoms,) distance, Å, from each atom without a first-shell neighbour to the nearest
    other atom (an ion pair pulled apart, an atom evaporated from a cluster); NaN for every
    bonded atom. Beyond a short-range model's cutoff only long-range terms see such an atom.
    """
    out = np.full(len(isolated), np.nan)
    for k, atoms in enumerate(ctx.structures):
        rows = np.flatnonzero((ctx.system_idx == k) & isolated)
        if len(rows) == 0 or len(atoms) < 2:
            continue
        local = rows - np.flatnonzero(ctx.system_idx == k)[0]
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        out[rows] = d[local].min(axis=1)
    return out


def _neighbours(ctx: FeatureContext) -> FeatureBlock:
    """Local composition: first-shell counts and fractions per element, composition fractions.

    Only with two elements or more; fractions of the shell for atoms outside molecules,
    composition fractions for periodic structures (see the module docstring).
    """
    symbols = ctx.symbols()
    elements = sorted(set(symbols))
    if len(elements) < 2:
        return FeatureBlock()
    counts = neighbour_counts(ctx.shells(), symbols, elements)
    cn = counts.sum(axis=1)
    extended = ~ctx.molecules()[ctx.system_idx] & (cn > 0)
    periodic = np.array([_is_periodic(a) for a in ctx.structures])
    atom: dict[str, np.ndarray] = {}
    structure: dict[str, np.ndarray] = {}
    for k, el in enumerate(elements):
        frac = np.full(len(cn), np.nan)
        frac[extended] = counts[extended, k] / cn[extended]
        atom[f"shell_frac:{el}"] = np.round(frac, 4)
        atom[f"nb_count:{el}"] = counts[:, k]
        comp = np.array([np.mean(np.array(a.get_chemical_symbols()) == el) for a in ctx.structures])
        structure[f"comp_frac:{el}"] = np.where(periodic, np.round(comp, 4), np.nan)
    kinds = {name: FeatureKind.NUMERIC for name in [*atom, *structure]}
    return _block(atom, structure, kinds)


def _bonds(ctx: FeatureContext) -> FeatureBlock:
    """Bond stretch per atom and bond distortion per structure, outside molecules, Å."""
    include = ~ctx.molecules()
    if not include.any():
        return FeatureBlock()
    shells, symbols = ctx.shells(), ctx.symbols()
    references = bond_references(shells, symbols, include)
    stretch, distortion = bond_deviations(shells, symbols, references, include)
    numeric = FeatureKind.NUMERIC
    return _block(
        {"bond_stretch_A": np.round(stretch, 4)},
        {"bond_distortion_A": np.round(distortion, 4)},
        {"bond_stretch_A": numeric, "bond_distortion_A": numeric},
    )


def _environment(ctx: FeatureContext) -> FeatureBlock:
    from sklearn.cluster import KMeans

    x = ctx.soap()
    k = max(1, min(ctx.environment_classes, len(np.unique(np.round(x, 6), axis=0))))
    km = KMeans(n_clusters=k, n_init=4, random_state=ctx.seed).fit(x)
    species = sorted({s for a in ctx.structures for s in a.get_chemical_symbols()})
    return FeatureBlock(
        atom={"environment": np.array([f"env{j}" for j in km.labels_], dtype=object)},
        kinds={"environment": FeatureKind.CATEGORICAL},
        environment=EnvironmentClasses(
            labels=[f"env{j}" for j in range(k)],
            centroids=np.asarray(km.cluster_centers_, dtype=float),
            species=species,
        ),
    )


def match_environment_classes(
    features: Features, reference: EnvironmentClasses | None, *, max_shift: float = 0.5
) -> Features:
    """``features`` with its environment classes named after the matching ``reference`` ones.

    Classes are paired by the Hungarian assignment (``scipy.optimize.linear_sum_assignment``;
    Kuhn, Naval Res. Logist. Q. 2, 83, 1955) on the Euclidean distance between centroids. A pair
    is accepted when the new centroid lies closer to its reference centroid than ``max_shift``
    x the distance from that reference centroid to its nearest other reference centroid (well
    inside its cell: a different environment is never given an old name); a new class left
    without a partner gets a name no reference class has (``env<k>``, k past the largest).

    Args:
        features: a feature table with an ``environment`` column and its classes.
        reference: the classes of an earlier diagnosis; None: nothing to match.
        max_shift: the acceptance fraction described above.

    Returns:
        A new :class:`Features` (the input is not changed) with the ``environment`` column and
        ``environment`` classes renamed; ``features`` itself when nothing can be matched
        (no classes on either side, other species or another SOAP dimension).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    env = features.environment
    if reference is None or env is None or "environment" not in features.atom:
        return features
    if env.species != reference.species or env.centroids.shape[1:] != reference.centroids.shape[1:]:
        log.info("environment classes: other species or SOAP size; not matched to the previous")
        return features
    cost = cdist(env.centroids, reference.centroids)
    ref_gap = cdist(reference.centroids, reference.centroids)
    np.fill_diagonal(ref_gap, np.inf)
    nearest_other = ref_gap.min(axis=1)
    names: dict[str, str] = {}
    for i, j in zip(*linear_sum_assignment(cost), strict=True):
        if cost[i, j] < max_shift * nearest_other[j]:
            names[env.labels[i]] = reference.labels[j]
    names.update(_fresh_names([lab for lab in env.labels if lab not in names], reference.labels))
    column = np.array([names[str(v)] for v in features.atom["environment"]], dtype=object)
    return replace(
        features,
        atom={**features.atom, "environment": column},
        environment=replace(env, labels=[names[lab] for lab in env.labels]),
    )


def _fresh_names(unmatched: list[str], taken: list[str]) -> dict[str, str]:
    """``env<k>`` names for unmatched classes, k past every ``env<k>`` in ``taken``."""
    used = [int(t[3:]) for t in taken if t.startswith("env") and t[3:].isdigit()]
    start = max(used, default=-1) + 1
    return {lab: f"env{start + n}" for n, lab in enumerate(unmatched)}


_HYBRID = {"S": "s", "SP": "sp", "SP2": "sp2", "SP3": "sp3", "SP3D": "sp3d", "SP3D2": "sp3d2"}


def perceive_molecule(atoms: Atoms, charge: int = 0):
    """An RDKit molecule with bonds and bond orders perceived from the geometry, or None."""
    from ase.io import write
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    buf = io.StringIO()
    write(buf, _nonperiodic(atoms), format="xyz")
    try:
        mol = Chem.MolFromXYZBlock(buf.getvalue())
        if mol is None:
            return None
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises ValueError / RuntimeError on odd geometries
        log.debug("bond perception failed for %s: %s", atoms.get_chemical_formula(), exc)
        return None
    return mol


def molecular_features(atoms: Atoms, charge: int = 0) -> dict[str, np.ndarray] | None:
    """Per-atom group flags, hybridisation, ring and aromatic flags of one molecule, or None."""
    mol = perceive_molecule(atoms, charge)
    if mol is None:
        return None
    n = len(atoms)
    out: dict[str, np.ndarray] = {}
    for name, smarts in FUNCTIONAL_GROUPS.items():
        flags = np.zeros(n, dtype=bool)
        for match in mol.GetSubstructMatches(_pattern(smarts)):
            for i in match:
                flags[i] = True
                if mol.GetAtomWithIdx(i).GetAtomicNum() > 1:
                    for nb in mol.GetAtomWithIdx(i).GetNeighbors():
                        if nb.GetAtomicNum() == 1:
                            flags[nb.GetIdx()] = True
        out[f"group:{name}"] = flags
    atoms_ = list(mol.GetAtoms())
    out["hybridisation"] = np.array(
        [_HYBRID.get(str(a.GetHybridization()), "other") for a in atoms_], dtype=object
    )
    out["in_ring"] = np.array([a.IsInRing() for a in atoms_], dtype=bool)
    out["aromatic"] = np.array([a.GetIsAromatic() for a in atoms_], dtype=bool)
    return out


_PATTERNS: dict[str, object] = {}


def _pattern(smarts: str):
    from rdkit import Chem

    if smarts not in _PATTERNS:
        pat = Chem.MolFromSmarts(smarts)
        if pat is None:
            raise ValueError(f"functional group SMARTS {smarts!r} does not parse")
        _PATTERNS[smarts] = pat
    return _PATTERNS[smarts]


def _molecular(ctx: FeatureContext) -> FeatureBlock:
    """Group flags, hybridisation, ring and aromatic flags of the molecules; perception counts.

    Molecules are the non-periodic structures of more than one atom made of
    :data:`ORGANIC_ELEMENTS` only; the others get no molecular features and are not counted.
    """
    n_total = len(ctx.system_idx)
    cols: dict[str, np.ndarray] = {f"group:{g}": np.zeros(n_total, bool) for g in FUNCTIONAL_GROUPS}
    cols["hybridisation"] = np.full(n_total, "", dtype=object)
    cols["in_ring"] = np.zeros(n_total, bool)
    cols["aromatic"] = np.zeros(n_total, bool)
    offset, perceived, failed = 0, 0, []
    for atoms in ctx.structures:
        n = len(atoms)
        if is_molecule(atoms) and n > 1:
            feats = molecular_features(atoms, int(atoms.info.get("charge", 0) or 0))
            if feats is None:
                failed.append(atoms.get_chemical_formula())
            else:
                perceived += 1
                for name, col in feats.items():
                    cols[name][offset : offset + n] = col
        offset += n
    perception = _perception_counts(perceived, failed)
    if not perceived:
        return FeatureBlock(perception=perception)
    kinds = {name: FeatureKind.FLAG for name in cols}
    kinds["hybridisation"] = FeatureKind.CATEGORICAL
    cols = {k: v for k, v in cols.items() if kinds[k] != FeatureKind.FLAG or v.any()}
    return FeatureBlock(atom=cols, kinds={k: kinds[k] for k in cols}, perception=perception)


def _perception_counts(perceived: int, failed: list[str]) -> dict[str, Any]:
    """The :attr:`Features.perception` dict; logs a warning when any molecule failed."""
    formulas = list(dict.fromkeys(failed))[:PERCEPTION_FORMULAS_KEPT]
    if failed:
        log.warning(
            "bond perception failed for %d of %d molecules (%s): they have no functional-group "
            "features",
            len(failed),
            len(failed) + perceived,
            ", ".join(formulas),
        )
    return {
        "tried": perceived + len(failed),
        "perceived": perceived,
        "failed": len(failed),
        "failed_formulas": formulas,
    }


def _structure(ctx: FeatureContext) -> FeatureBlock:
    """Composition, size, periodicity, density, strain, kind and provenance of each structure."""
    from ase.units import kg

    structures = ctx.structures
    n = len(structures)
    formula = np.array([a.get_chemical_formula(mode="hill") for a in structures], dtype=object)
    n_atoms = np.array([len(a) for a in structures], dtype=float)
    periodic = np.array([bool(np.all(a.pbc)) for a in structures])
    vol_per_atom = np.full(n, np.nan)
    density = np.full(n, np.nan)
    for i, a in enumerate(structures):
        if periodic[i] and a.cell.volume > 0:
            vol_per_atom[i] = a.cell.volume / len(a)
            # masses in amu; 1 kg = ``kg`` amu, so grams = amu / kg * 1e3; Å³ = 1e-24 cm³
            density[i] = a.get_masses().sum() / kg * 1e3 / (a.cell.volume * 1e-24)
    strain = np.full(n, np.nan)
    for f in set(formula[periodic]):
        mask = (formula == f) & periodic
        strain[mask] = np.cbrt(vol_per_atom[mask] / np.median(vol_per_atom[mask])) - 1.0
    info = [a.info for a in structures]

    def num(key: str, default: float = float("nan")) -> np.ndarray:
        return np.array([as_float(d.get(key, default)) for d in info])

    def cat(key: str) -> np.ndarray:
        return np.array(
            [str(d.get(key, "")) if d.get(key) is not None else "" for d in info], object
        )

    cols = {
        "out_of_distribution": _out_of_distribution(info),
        "composition": formula,
        "n_atoms": n_atoms,
        "total_charge_e": num("charge", 0.0),
        "periodic": periodic,
        "density_g_cm3": np.round(density, 3),
        "strain": np.round(strain, 4),
        "temperature_K": num("temperature_K"),
        "iteration": num("iteration"),
        "source": cat("source"),
        "seed_kind": cat("seed_kind"),
        "walker": cat("walker"),
        "seed_index": cat("seed_index"),
    }
    kinds = {
        "out_of_distribution": FeatureKind.FLAG,
        "composition": FeatureKind.CATEGORICAL,
        "n_atoms": FeatureKind.NUMERIC,
        "total_charge_e": FeatureKind.NUMERIC,
        "periodic": FeatureKind.FLAG,
        "density_g_cm3": FeatureKind.NUMERIC,
        "strain": FeatureKind.NUMERIC,
        "temperature_K": FeatureKind.NUMERIC,
        "iteration": FeatureKind.NUMERIC,
        "source": FeatureKind.CATEGORICAL,
        "seed_kind": FeatureKind.CATEGORICAL,
        "walker": FeatureKind.CATEGORICAL,
        "seed_index": FeatureKind.CATEGORICAL,
    }
    return _block({}, cols, kinds)  # columns with no information (all missing, one value) go


def _out_of_distribution(info: list[dict[str, Any]]) -> np.ndarray:
    """(n,) bool: not ``in_distribution``; all False unless every structure carries the key."""
    if not info or any(d.get("in_distribution") is None for d in info):
        return np.zeros(len(info), dtype=bool)
    return np.array([not _truthy(d["in_distribution"]) for d in info], dtype=bool)


def _truthy(value: object) -> bool:
    """A stored flag as bool: True/False, 1/0 (ase.db), or the strings 'true'/'false'."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def as_float(value: object) -> float:
    """``float(value)``, or NaN where the value is missing or not a number."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


# Order matters where two features pick out the same atoms: the region keeps the rule of the
# earlier one (``group = nitrile`` rather than ``coordination_deficit ≥ 2`` in a molecule).
FEATURE_FAMILIES: dict[str, FamilyFn] = {
    FeatureFamily.ELEMENT: _element,
    FeatureFamily.MOLECULAR: _molecular,
    FeatureFamily.NEIGHBOURS: _neighbours,
    FeatureFamily.COORDINATION: _coordination,
    FeatureFamily.BONDS: _bonds,
    FeatureFamily.ENVIRONMENT: _environment,
    FeatureFamily.STRUCTURE: _structure,
}


def register_feature_family(name: str, fn: FamilyFn) -> None:
    """Add (or replace) a feature family; ``fn(ctx: FeatureContext) -> FeatureBlock``."""
    FEATURE_FAMILIES[str(name)] = fn


def compute_features(
    structures: Sequence[Atoms],
    *,
    families: Sequence[str] | None = None,
    environment_classes: int = 8,
    seed: int = 0,
    soap: bool = True,
) -> Features:
    """Run the feature ``families`` (default: all registered) on ``structures``.

    ``soap=True`` computes per-atom and structure-averaged SOAP even if no family needs it (the
    cluster and maxsep splits use the averaged one). Unknown family names raise ``ValueError``.
    """
    structures = list(structures)
    if not structures:
        raise ValueError("features: got no structures")
    system_idx = np.repeat(np.arange(len(structures)), [len(a) for a in structures])
    ctx = FeatureContext(
        structures=structures,
        system_idx=system_idx,
        environment_classes=environment_classes,
        seed=seed,
    )
    names = list(FEATURE_FAMILIES) if families is None else [str(f) for f in families]
    atom: dict[str, np.ndarray] = {}
    struct: dict[str, np.ndarray] = {}
    kinds: dict[str, FeatureKind] = {}
    blocks: list[FeatureBlock] = []
    for name in names:
        if name not in FEATURE_FAMILIES:
            allowed = ", ".join(FEATURE_FAMILIES)
            raise ValueError(f"features: unknown family {name!r}; allowed: {allowed}")
        block = FEATURE_FAMILIES[name](ctx)
        blocks.append(block)
        atom.update(block.atom)
        struct.update(block.structure)
        kinds.update(block.kinds)
    for name, col in struct.items():
        atom.setdefault(name, col[system_idx])
    soap_atom = ctx.soap() if soap or ctx._soap is not None else None
    soap_struct = (
        average_per_structure(soap_atom, system_idx, len(structures))
        if soap_atom is not None
        else None
    )
    groups = sorted(k.removeprefix("group:") for k in atom if k.startswith("group:"))
    classes = [b.environment for b in blocks if b.environment is not None]
    perception = [b.perception for b in blocks if b.perception is not None]
    return Features(
        atom=atom,
        structure=struct,
        kinds=kinds,
        system_idx=system_idx,
        soap_atom=soap_atom,
        soap_structure=soap_struct,
        groups_present=groups,
        environment=describe_environment(ctx, atom, classes[-1]) if classes else None,
        perception=dict(perception[-1]) if perception else {},
    )


def describe_environment(
    ctx: FeatureContext, atom: dict[str, np.ndarray], classes: EnvironmentClasses
) -> EnvironmentClasses:
    """``classes`` with every class described in words by its atoms' chemistry.

    Uses the first shells of ``ctx`` and, where present in ``atom``, the molecular family's
    hybridisation and group columns (:func:`chemgap.agent.diagnostics.neighbours.describe_class`).
    """
    symbols = ctx.symbols()
    elements = sorted(set(symbols))
    shells = ctx.shells()
    counts = neighbour_counts(shells, symbols, elements)
    cn = np.concatenate([s.coordination for s in shells]).astype(float)
    groups = {
        k.removeprefix("group:"): v.astype(bool) for k, v in atom.items() if k.startswith("group:")
    }
    env = atom["environment"].astype(str)
    descriptions, details = [], []
    for label in classes.labels:
        text, detail = describe_class(
            env == label,
            symbols=symbols,
            coordination=cn,
            counts=counts,
            elements=elements,
            hybridisation=atom.get("hybridisation"),
            groups=groups,
        )
        descriptions.append(text)
        details.append(detail)
    _tell_apart(descriptions, details, env, low_coordinated_neighbours(shells, symbols), classes)
    return replace(classes, descriptions=descriptions, details=details)


def _tell_apart(
    descriptions: list[str],
    details: list[dict[str, Any]],
    env: np.ndarray,
    low: np.ndarray,
    classes: EnvironmentClasses,
) -> None:
    """Add the range of low-coordinated neighbours to classes whose descriptions coincide.

    Changes ``descriptions`` and ``details`` in place; classes still alike keep their ids apart.
    """
    counts = Counter(descriptions)
    for k, label in enumerate(classes.labels):
        if counts[descriptions[k]] < 2:
            continue
        lo, hi = (int(v) for v in np.round(np.percentile(low[env == label], (5, 95))))
        details[k]["low_coordinated_neighbours"] = [lo, hi]
        span = str(lo) if lo == hi else f"{lo}–{hi}"
        descriptions[k] += f", {span} low-coordinated neighbour" + ("" if hi == 1 else "s")


def with_model_charges(
    features: Features, charges_mean: np.ndarray | None, charges_std: np.ndarray | None = None
) -> Features:
    """``features`` with the members' predicted charges as numeric atom columns.

    Args:
        features: the table of the structures the charges were predicted on.
        charges_mean: (n_atoms_total,) ensemble-mean charge per atom, e, in table order; None
            (a model without learned charges) returns ``features`` unchanged.
        charges_std: (n_atoms_total,) its std over the members, e (optional).

    Returns:
        A copy with ``pred_charge_e`` and ``charge_spread_e`` (where given), each only when it
        holds two distinct values (like every column).
    """
    if charges_mean is None:
        return features
    cols = {"pred_charge_e": charges_mean, "charge_spread_e": charges_std}
    atom, kinds = dict(features.atom), dict(features.kinds)
    for name, col in cols.items():
        if col is None:
            continue
        col = np.round(np.asarray(col, dtype=float).reshape(-1), 4)
        if len(col) != features.n_atoms:
            raise ValueError(f"{name}: {len(col)} values for {features.n_atoms} atoms")
        if _informative(col, FeatureKind.NUMERIC):
            atom[name], kinds[name] = col, FeatureKind.NUMERIC
    return replace(features, atom=atom, kinds=kinds)
