"""First coordination shells: who an atom's neighbours are, how long its bonds are, and words
for a local-environment class.

The first shell of an atom is every atom within ``mult`` x (r_cov,i + r_cov,j) of it (ASE's
natural cutoffs, covalent radii of Cordero et al., Dalton Trans. 2832, 2008; ``mult`` 1.2 by
default), which for close-packed metals falls between the first and second neighbour shells and
for molecules holds the bonded atoms. Everything here is a pure function of the structures
(never of the errors); :mod:`chemgap.agent.diagnostics.features` turns it into feature columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

SHELL_MULT = 1.2
RANGE_PERCENTILES = (5.0, 95.0)  # a class's "range" of a count: these percentiles of its atoms
SHELL_ELEMENTS_SHOWN = 3  # neighbour elements named in a class description, most abundant first
CENTRE_MAJORITY = 0.8  # a class is named after one element when this share of its atoms are it


def is_periodic(atoms: Atoms) -> bool:
    """True for a structure with periodic boundaries and a cell of non-zero volume."""
    return bool(np.any(atoms.pbc)) and abs(atoms.cell.volume) > 1e-6


@dataclass(kw_only=True)
class Shell:
    """The first shell of every atom of one structure, as ordered pairs.

    Attributes:
        i: (n_pairs,) int, the centre atom of each pair (every bond appears twice, i-j and j-i).
        j: (n_pairs,) int, its neighbour.
        d: (n_pairs,) float, their distance, Å (minimum image in periodic cells).
        n_atoms: atoms of the structure.
    """

    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    n_atoms: int

    @property
    def coordination(self) -> np.ndarray:
        """(n_atoms,) int, neighbours of each atom."""
        return np.bincount(self.i, minlength=self.n_atoms)


def first_shell(atoms: Atoms, mult: float = SHELL_MULT) -> Shell:
    """The first shell (:class:`Shell`) of every atom of ``atoms``.

    Non-periodic structures (molecules, clusters) are taken without their cell, so a molecule
    in a box never bonds to its images.
    """
    from ase.neighborlist import natural_cutoffs, neighbor_list

    a = atoms
    if not is_periodic(atoms):
        a = atoms.copy()
        a.pbc = False
    i, j, d = neighbor_list("ijd", a, natural_cutoffs(a, mult=mult))
    return Shell(i=i, j=j, d=d, n_atoms=len(atoms))


def neighbour_counts(
    shells: Sequence[Shell], symbols: np.ndarray, elements: Sequence[str]
) -> np.ndarray:
    """(n_atoms_total, n_elements) neighbours of each element in each atom's first shell.

    Args:
        shells: one :class:`Shell` per structure, in order.
        symbols: (n_atoms_total,) chemical symbols of all atoms concatenated.
        elements: the columns, in order.

    Returns:
        Counts as floats; atoms of all structures concatenated in order.
    """
    col = {el: k for k, el in enumerate(elements)}
    out = np.zeros((len(symbols), len(elements)))
    offset = 0
    for shell in shells:
        if len(shell.i):
            kinds = np.array([col[s] for s in symbols[offset + shell.j]], dtype=int)
            np.add.at(out, (offset + shell.i, kinds), 1.0)
        offset += shell.n_atoms
    return out


def pair_type(a: str, b: str) -> str:
    """The unordered pair type of two elements, alphabetically: ``Au-Cu`` for Cu-Au and Au-Cu."""
    return "-".join(sorted((a, b)))


def bond_references(
    shells: Sequence[Shell], symbols: np.ndarray, include: np.ndarray | None = None
) -> dict[str, float]:
    """The reference length of every pair type: its median first-shell distance, Å.

    The reference is the median over every first-shell bond of that pair type in the structures
    given (the diagnosed data), not a relaxed structure: the data may hold no relaxed cell of a
    composition, while the median always exists and is robust to the rattled and defective
    cells in it.

    Args:
        shells: one :class:`Shell` per structure, in order.
        symbols: (n_atoms_total,) chemical symbols of all atoms concatenated.
        include: (n_structures,) bool, structures whose bonds count; None: all.

    Returns:
        pair type (:func:`pair_type`) -> median distance, Å.
    """
    lengths: dict[str, list[np.ndarray]] = {}
    offset = 0
    for k, shell in enumerate(shells):
        if (include is None or include[k]) and len(shell.i):
            a, b = symbols[offset + shell.i], symbols[offset + shell.j]
            types = np.array([pair_type(x, y) for x, y in zip(a, b, strict=True)])
            for t in np.unique(types):
                lengths.setdefault(str(t), []).append(shell.d[types == t])
        offset += shell.n_atoms
    return {t: float(np.median(np.concatenate(v))) for t, v in lengths.items()}


def bond_deviations(
    shells: Sequence[Shell],
    symbols: np.ndarray,
    references: dict[str, float],
    include: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per atom and per structure, how far first-shell bonds are from their pair type's reference.

    Args:
        shells: one :class:`Shell` per structure, in order.
        symbols: (n_atoms_total,) chemical symbols of all atoms concatenated.
        references: pair type -> reference length, Å (:func:`bond_references`).
        include: (n_structures,) bool, structures to compute it for (others NaN); None: all.

    Returns:
        ``stretch`` (n_atoms_total,): mean over an atom's bonds of d - d_ref(pair type), Å
        (positive: stretched bonds; NaN without bonds or outside ``include``), and
        ``distortion`` (n_structures,): root mean square of d - d_ref over the structure's
        bonds, Å (NaN without bonds or outside ``include``).
    """
    stretch = np.full(len(symbols), np.nan)
    distortion = np.full(len(shells), np.nan)
    offset = 0
    for k, shell in enumerate(shells):
        if (include is None or include[k]) and len(shell.i):
            a, b = symbols[offset + shell.i], symbols[offset + shell.j]
            ref = np.array([references[pair_type(x, y)] for x, y in zip(a, b, strict=True)])
            dev = shell.d - ref
            sums = np.bincount(shell.i, weights=dev, minlength=shell.n_atoms)
            counts = np.bincount(shell.i, minlength=shell.n_atoms)
            with np.errstate(invalid="ignore", divide="ignore"):
                stretch[offset : offset + shell.n_atoms] = np.where(
                    counts > 0, sums / counts, np.nan
                )
            distortion[k] = float(np.sqrt(np.mean(dev**2)))
        offset += shell.n_atoms
    return stretch, distortion


# --------------------------------------------------------------------------- class descriptions
def _span(values: np.ndarray) -> tuple[int, int]:
    """The 5th-95th percentile range of counts, rounded to whole numbers."""
    lo, hi = np.percentile(values, RANGE_PERCENTILES)
    return int(np.round(lo)), int(np.round(hi))


def _span_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _centre(symbols: np.ndarray) -> str:
    """The element a class is named after, or ``Au/Cu`` (by share) when none dominates."""
    values, counts = np.unique(symbols, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    if counts[order[0]] >= CENTRE_MAJORITY * counts.sum():
        return str(values[order[0]])
    return "/".join(str(values[k]) for k in order[:2])


def _majority(values: np.ndarray, share: float) -> str | None:
    """The most common non-empty value when it makes at least ``share`` of ``values``."""
    values = values[values != ""]
    if not len(values):
        return None
    u, c = np.unique(values.astype(str), return_counts=True)
    k = int(np.argmax(c))
    return str(u[k]) if c[k] >= share * len(values) else None


def _group(groups: dict[str, np.ndarray], inside: np.ndarray) -> str | None:
    """The most specific functional group held by at least half of the class's atoms."""
    best: tuple[int, str] | None = None
    for name, flags in groups.items():
        if flags[inside].mean() >= 0.5:
            key = (int(flags.sum()), name)  # fewest atoms overall: the most specific group
            best = key if best is None or key < best else best
    return None if best is None else best[1]


def describe_class(
    inside: np.ndarray,
    *,
    symbols: np.ndarray,
    coordination: np.ndarray,
    counts: np.ndarray,
    elements: Sequence[str],
    hybridisation: np.ndarray | None = None,
    groups: dict[str, np.ndarray] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Words and figures for one local-environment class (the atoms ``inside``).

    The words: the centre element, the RDKit hybridisation and the most specific functional
    group of its atoms (molecules; each named only when most atoms share it), the coordination
    (``12-fold``, or the 5th-95th percentile range and the mean, ``9–12-fold (mean 11.2)``)
    and, when the data holds more
    than one element, the first-shell composition as count ranges of the
    :data:`SHELL_ELEMENTS_SHOWN` most abundant neighbour elements: ``Cu, 12-fold, 5–8 Au + 4–7
    Cu neighbours``.

    Args:
        inside: (n_atoms_total,) bool, the class's atoms.
        symbols: (n_atoms_total,) chemical symbols.
        coordination: (n_atoms_total,) first-shell neighbour counts.
        counts: (n_atoms_total, n_elements) neighbours per element (:func:`neighbour_counts`).
        elements: the columns of ``counts``.
        hybridisation: (n_atoms_total,) RDKit hybridisation ("" where not perceived), or None.
        groups: functional group -> (n_atoms_total,) bool membership, or None.

    Returns:
        (description, details): details hold ``centre``, ``n_atoms``, ``coordination_mean``,
        ``coordination_range`` [lo, hi], ``shell`` {element: {"mean", "range"}},
        ``hybridisation`` and ``group`` (None where not named).
    """
    cn = coordination[inside]
    lo, hi = _span(cn)
    shell: dict[str, dict[str, Any]] = {}
    for k in np.argsort(-counts[inside].mean(axis=0), kind="stable"):
        mean = float(counts[inside, k].mean())
        if mean >= 0.5 and len(shell) < SHELL_ELEMENTS_SHOWN:
            shell[str(elements[k])] = {
                "mean": round(mean, 2),
                "range": list(_span(counts[inside, k])),
            }
    hyb = _majority(hybridisation[inside], 0.6) if hybridisation is not None else None
    group = _group(groups, inside) if groups else None
    details = {
        "centre": _centre(symbols[inside]),
        "n_atoms": int(inside.sum()),
        "coordination_mean": round(float(cn.mean()), 2),
        "coordination_range": [lo, hi],
        "shell": shell,
        "hybridisation": hyb,
        "group": group,
    }
    # a hybridisation names one element's atoms, and not a hydrogen's (always s)
    named = hyb and hyb != "s" and "/" not in details["centre"]
    words = [details["centre"] + (f" {hyb}" if named else "")]
    if group:
        words.append(group.replace("_", " "))
    words.append(f"{lo}-fold" if lo == hi else f"{lo}–{hi}-fold (mean {cn.mean():.1f})")
    if len(elements) > 1 and shell:
        parts = [f"{_span_text(*v['range'])} {el}" for el, v in shell.items()]
        one = len(shell) == 1 and next(iter(shell.values()))["range"] == [1, 1]
        words.append(" + ".join(parts) + (" neighbour" if one else " neighbours"))
    return ", ".join(words), details


def low_coordinated_neighbours(shells: Sequence[Shell], symbols: np.ndarray) -> np.ndarray:
    """(n_atoms_total,) first-shell neighbours whose own coordination is below their element's
    bulk value (the 95th percentile of that element's coordination numbers in the data).

    Tells apart atoms whose own shell is full: a sub-surface or vacancy-neighbour atom from
    one deep in the bulk.
    """
    cn = np.concatenate([s.coordination for s in shells]).astype(float)
    bulk = {el: np.percentile(cn[symbols == el], 95) for el in set(symbols)}
    low = cn < np.array([bulk[s] for s in symbols]) - 0.5
    out = np.zeros(len(symbols))
    offset = 0
    for shell in shells:
        if len(shell.i):
            np.add.at(out, offset + shell.i, low[offset + shell.j].astype(float))
        offset += shell.n_atoms
    return out
