"""Structures for the report's 3Dmol viewer: extended-XYZ text and the atoms to highlight.

3Dmol.js reads XYZ with a ``Lattice="..."`` comment (the cell is then drawn), one atom per
line as ``symbol x y z``; its atoms are selected by ``serial``, the atom's index in the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

if TYPE_CHECKING:
    from chemgap.agent.report.gather import TestSet

__all__ = ["region_views", "to_xyz", "top_error_views"]

TOP_STRUCTURES = 3  # shown when the last diagnosis found no region
TOP_ATOM_QUANTILE = 0.9  # ... with the atoms above this quantile of the force error marked


def to_xyz(atoms: Atoms) -> str:
    """``atoms`` as XYZ text (positions in Å, 4 decimals), the cell as ``Lattice`` when periodic."""
    lines = [str(len(atoms))]
    if atoms.pbc.any() and atoms.cell.rank == 3:
        cell = " ".join(f"{x:.4f}" for x in np.asarray(atoms.cell).ravel())
        lines.append(f'Lattice="{cell}" Properties=species:S:1:pos:R:3')
    else:
        lines.append(atoms.get_chemical_formula())
    for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True):
        lines.append(f"{symbol} {x:.4f} {y:.4f} {z:.4f}")
    return "\n".join(lines) + "\n"


def _errors(atoms: Atoms) -> list[float] | None:
    if "force_error" not in atoms.arrays:
        return None
    return [round(float(e), 4) for e in atoms.arrays["force_error"]]


def region_views(regions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One view per exemplar of every region (the order of ``regions.json``).

    Args:
        regions: regions of the last diagnosis, each with its exemplar ``structures``
            (``arrays['in_region']``, ``arrays['force_error']`` as the diagnosis wrote them).

    Returns:
        ``[{"label", "region", "rule", "xyz", "highlight": [atom index], "errors": [eV/Å] |
        None}]``.
    """
    out = []
    for r in regions:
        for k, atoms in enumerate(r.get("structures") or []):
            mask = np.asarray(atoms.arrays.get("in_region", np.zeros(len(atoms))), dtype=bool)
            mean = atoms.info.get("region_mean_error")
            error = "" if mean is None else f", mean error {1000 * float(mean):.0f} meV/Å"
            out.append(
                {
                    "label": f"{r['id']} · exemplar {k + 1}: {atoms.get_chemical_formula()}"
                    f" ({int(mask.sum())} of {len(atoms)} atoms in the region{error})",
                    "region": r["id"],
                    "rule": str(r.get("rule") or ""),
                    "xyz": to_xyz(atoms),
                    "highlight": np.flatnonzero(mask).tolist(),
                    "errors": _errors(atoms),
                }
            )
    return out


def top_error_views(test: TestSet, n: int = TOP_STRUCTURES) -> list[dict[str, Any]]:
    """The ``n`` test structures with the highest mean force error, their worst atoms marked
    (force error above the :data:`TOP_ATOM_QUANTILE` quantile over the test set's atoms).
    """
    error = test.atom_error
    per = np.bincount(test.system_idx, weights=error, minlength=len(test.structures))
    per = per / np.maximum(test.n_atoms, 1)
    cut = float(np.quantile(error, TOP_ATOM_QUANTILE)) if len(error) else 0.0
    out = []
    for i in np.argsort(-per)[:n]:
        atoms = test.structures[int(i)]
        e = error[test.system_idx == i]
        out.append(
            {
                "label": f"test structure {int(i)} ({test.kinds[i]}): "
                f"{atoms.get_chemical_formula()}, mean force error {1000 * per[i]:.0f} meV/Å",
                "region": None,
                "rule": f"marked: force error above {1000 * cut:.0f} meV/Å",
                "xyz": to_xyz(atoms),
                "highlight": np.flatnonzero(e > cut).tolist(),
                "errors": [round(float(x), 4) for x in e],
            }
        )
    return out
