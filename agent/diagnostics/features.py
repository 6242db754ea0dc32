"""Chemical features of atoms and structures, in terms a chemist recognises.

Every feature family is an entry of the registry :data:`FEATURE_FAMILIES` (a ``StrEnum`` name, or
any string for a user's own family registered with :func:`register_feature_family`); each family
maps a list of structures to per-atom columns. :func:`compute_features` runs the chosen families
and returns one :class:`~chemgap.agent.diagnostics.table.Features` table: one row per atom of all
structures concatenated in order (the same order as :class:`chemgap.models.predict.Prediction`),
plus per-structure columns. The table's types are in :mod:`~chemgap.agent.diagnostics.table`;
the families in :mod:`~chemgap.agent.diagnostics.families` (element, coordination, neighbours,
bonds, structure), :mod:`~chemgap.agent.diagnostics.molecular` and
:mod:`~chemgap.agent.diagnostics.environment`.

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

from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.environment import (
    describe_environment,
    environment_family,
    match_environment_classes,
)
from chemgap.agent.diagnostics.families import (
    DEFECT_DISTANCE_CAP_A,
    as_float,
    bonds_family,
    coordination_family,
    coordination_numbers,
    element_family,
    neighbours_family,
    structure_family,
)
from chemgap.agent.diagnostics.molecular import (
    FUNCTIONAL_GROUPS,
    molecular_family,
    molecular_features,
    perceive_molecule,
)
from chemgap.agent.diagnostics.table import (
    ORGANIC_ELEMENTS,
    PERCEPTION_FORMULAS_KEPT,
    PROVENANCE_FEATURES,
    EnvironmentClasses,
    FamilyFn,
    FeatureBlock,
    FeatureContext,
    FeatureKind,
    Features,
    average_per_structure,
    informative,
    is_molecule,
    soap_atoms,
)

__all__ = [
    "DEFECT_DISTANCE_CAP_A",
    "FEATURE_FAMILIES",
    "FUNCTIONAL_GROUPS",
    "ORGANIC_ELEMENTS",
    "PERCEPTION_FORMULAS_KEPT",
    "PROVENANCE_FEATURES",
    "EnvironmentClasses",
    "FamilyFn",
    "FeatureBlock",
    "FeatureContext",
    "FeatureFamily",
    "FeatureKind",
    "Features",
    "as_float",
    "average_per_structure",
    "compute_features",
    "coordination_numbers",
    "is_molecule",
    "match_environment_classes",
    "molecular_features",
    "perceive_molecule",
    "register_feature_family",
    "soap_atoms",
    "with_model_charges",
]


class FeatureFamily(StrEnum):
    """The built-in feature families (keys of :data:`FEATURE_FAMILIES`)."""

    ELEMENT = "element"
    COORDINATION = "coordination"
    NEIGHBOURS = "neighbours"
    BONDS = "bonds"
    ENVIRONMENT = "environment"
    MOLECULAR = "molecular"
    STRUCTURE = "structure"


# Order matters where two features pick out the same atoms: the region keeps the rule of the
# earlier one (``group = nitrile`` rather than ``coordination_deficit ≥ 2`` in a molecule).
FEATURE_FAMILIES: dict[str, FamilyFn] = {
    FeatureFamily.ELEMENT: element_family,
    FeatureFamily.MOLECULAR: molecular_family,
    FeatureFamily.NEIGHBOURS: neighbours_family,
    FeatureFamily.COORDINATION: coordination_family,
    FeatureFamily.BONDS: bonds_family,
    FeatureFamily.ENVIRONMENT: environment_family,
    FeatureFamily.STRUCTURE: structure_family,
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
    soap_atom = ctx.soap() if soap or ctx.has_soap else None
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
        if informative(col, FeatureKind.NUMERIC):
            atom[name], kinds[name] = col, FeatureKind.NUMERIC
    return replace(features, atom=atom, kinds=kinds)
