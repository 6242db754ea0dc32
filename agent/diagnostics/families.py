"""The structural feature families: element, coordination, neighbours, bonds, structure.

What each column means is in :mod:`chemgap.agent.diagnostics.features`; the molecular and
environment families have modules of their own (:mod:`~chemgap.agent.diagnostics.molecular`,
:mod:`~chemgap.agent.diagnostics.environment`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.neighbours import (
    bond_deviations,
    bond_references,
    first_shell,
    is_periodic,
    neighbour_counts,
)
from chemgap.agent.diagnostics.table import (
    FeatureBlock,
    FeatureContext,
    FeatureKind,
    informative_block,
    nonperiodic,
)

DEFECT_DISTANCE_CAP_A = 10.0


def element_family(ctx: FeatureContext) -> FeatureBlock:
    """The ``element`` column: each atom's chemical symbol."""
    symbols = np.array([s for a in ctx.structures for s in a.get_chemical_symbols()], dtype=object)
    return FeatureBlock(atom={"element": symbols}, kinds={"element": FeatureKind.CATEGORICAL})


def coordination_numbers(atoms: Atoms, mult: float = 1.2) -> np.ndarray:
    """(n_atoms,) int coordination numbers: neighbours within mult x (r_cov,i + r_cov,j)."""
    return first_shell(atoms, mult).coordination


def _defect_distances(atoms: Atoms, deficit: np.ndarray) -> np.ndarray:
    """(n_atoms,) distance to the nearest atom with a coordination deficit, capped, Å."""
    distance = np.full(len(atoms), DEFECT_DISTANCE_CAP_A)
    defects = np.flatnonzero(deficit > 0)
    if len(defects):
        a = atoms if is_periodic(atoms) else nonperiodic(atoms)
        dist = a.get_all_distances(mic=is_periodic(atoms))[:, defects].min(axis=1)
        distance = np.minimum(dist, DEFECT_DISTANCE_CAP_A)
    return distance


def coordination_family(ctx: FeatureContext) -> FeatureBlock:
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
    return informative_block(atom, {}, dict.fromkeys(atom, numeric))


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


def neighbours_family(ctx: FeatureContext) -> FeatureBlock:
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
    periodic = np.array([is_periodic(a) for a in ctx.structures])
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
    return informative_block(atom, structure, kinds)


def bonds_family(ctx: FeatureContext) -> FeatureBlock:
    """Bond stretch per atom and bond distortion per structure, outside molecules, Å."""
    include = ~ctx.molecules()
    if not include.any():
        return FeatureBlock()
    shells, symbols = ctx.shells(), ctx.symbols()
    references = bond_references(shells, symbols, include)
    stretch, distortion = bond_deviations(shells, symbols, references, include)
    numeric = FeatureKind.NUMERIC
    return informative_block(
        {"bond_stretch_A": np.round(stretch, 4)},
        {"bond_distortion_A": np.round(distortion, 4)},
        {"bond_stretch_A": numeric, "bond_distortion_A": numeric},
    )


def structure_family(ctx: FeatureContext) -> FeatureBlock:
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
    # columns with no information (all missing, one value) go
    return informative_block({}, cols, kinds)


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
