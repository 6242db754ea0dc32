"""The molecular feature family: functional groups, hybridisation, rings, from RDKit bonds.

For molecules of more than one atom (:func:`~chemgap.agent.diagnostics.table.is_molecule`),
bonds are perceived from the geometry with RDKit (``rdDetermineBonds``, after Kim & Kim 2015's
xyz2mol), then per atom: membership in each functional group of :data:`FUNCTIONAL_GROUPS`
(SMARTS; hydrogens bonded to a matched atom are members too), hybridisation, ring and aromatic
flags. A molecule whose bonds cannot be perceived gets no group features, never an exception;
the family counts them (:attr:`~chemgap.agent.diagnostics.table.Features.perception`).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.table import (
    PERCEPTION_FORMULAS_KEPT,
    FeatureBlock,
    FeatureContext,
    FeatureKind,
    is_molecule,
    nonperiodic,
)

log = logging.getLogger(__name__)

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


_HYBRID = {"S": "s", "SP": "sp", "SP2": "sp2", "SP3": "sp3", "SP3D": "sp3d", "SP3D2": "sp3d2"}


def perceive_molecule(atoms: Atoms, charge: int = 0):
    """An RDKit molecule with bonds and bond orders perceived from the geometry, or None."""
    from ase.io import write
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    buf = io.StringIO()
    write(buf, nonperiodic(atoms), format="xyz")
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


def molecular_family(ctx: FeatureContext) -> FeatureBlock:
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
