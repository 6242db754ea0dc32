"""Triage around an oracle call: reject bad inputs before it, classify what went wrong after it.

Before: NaN/inf positions or cell, no atoms, coordinates beyond ``MAX_COORDINATE_A``, a
periodic cell thinner than ``MIN_PERIODIC_THICKNESS_A`` along a periodic axis (a zero cell
included), elements the backend lacks, and interatomic distances below
``min_distance_factor`` times the sum of covalent radii (Cordero et al., Dalton Trans. 2832
(2008), as tabulated in ``ase.data.covalent_radii``) — rejected without spending oracle
time. After: exceptions mapped to a :class:`FailureCategory`, non-finite results rejected.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from chemgap.common.keys import LABEL_PREFIX
from chemgap.oracle.config import OracleConfig, check_elements
from chemgap.oracle.results import FailureCategory, OracleFailure

_SCF_PATTERN = re.compile(
    r"scf.*(not|no|fail).*conver|not converged|convergence (failure|not achieved)|"
    r"did not converge|failed to converge",
    re.IGNORECASE,
)
_ELEMENT_PATTERN = re.compile(r"no (emt-)?potential for|no parameters? for|unsupported element")


MAX_COORDINATE_A = 1e8
"""Positions and cell components beyond ± this (Å) are refused: no atomistic structure is a
centimetre across, and neighbour searches over such a span overflow or exhaust memory."""

MIN_PERIODIC_THICKNESS_A = 0.5
"""A cell thinner than this (Å) along a periodic axis is refused: a neighbour search needs
cutoff / thickness images along that axis, which grows without bound as the cell flattens."""


@dataclass(frozen=True)
class Rejection:
    """Why a structure is not sent to the oracle."""

    category: FailureCategory
    message: str


def check_geometry(atoms: Atoms, min_distance_factor: float) -> Rejection | None:
    """Reject a structure no oracle should be asked about, or return None.

    Args:
        atoms: the structure; positions Å.
        min_distance_factor: a pair closer than this times the sum of the two covalent radii
            (periodic images included) is unphysical.
    """
    if len(atoms) == 0:
        return Rejection(FailureCategory.UNPHYSICAL_GEOMETRY, "structure has no atoms")
    positions = atoms.positions
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        return Rejection(
            FailureCategory.UNPHYSICAL_GEOMETRY, f"non-finite position of atom {int(bad[0])}"
        )
    problem = extent_problem(atoms)
    if problem is not None:
        return Rejection(FailureCategory.UNPHYSICAL_GEOMETRY, problem)
    return _close_pair(atoms, min_distance_factor)


def extent_problem(atoms: Atoms) -> str | None:
    """What makes the cell or the span of ``atoms`` unusable, or None: a non-finite cell, a
    coordinate beyond ``MAX_COORDINATE_A``, a periodic axis thinner than
    ``MIN_PERIODIC_THICKNESS_A`` (a zero cell vector included). Positions must be finite.
    """
    cell = atoms.cell.array
    if not np.all(np.isfinite(cell)):
        return "the cell is not finite"
    largest = max(np.abs(atoms.positions).max(initial=0.0), np.abs(cell).max(initial=0.0))
    if largest > MAX_COORDINATE_A:
        return (
            f"a coordinate is {largest:.3g} Å, beyond the ±{MAX_COORDINATE_A:g} Å positions and "
            "cell vectors may span"
        )
    thickness = periodic_thickness(atoms)
    for axis in np.flatnonzero(atoms.pbc):
        if thickness[axis] < MIN_PERIODIC_THICKNESS_A:
            return (
                f"the cell is {thickness[axis]:.3g} Å thick along its periodic axis "
                f"{'abc'[axis]}; a periodic axis needs at least {MIN_PERIODIC_THICKNESS_A:g} Å"
            )
    return None


def periodic_thickness(atoms: Atoms) -> np.ndarray:
    """(3,) Å: the distance between the cell's opposite faces along each axis (a zero cell
    vector: 0); missing vectors of non-periodic axes are completed orthogonally first.
    """
    vectors = atoms.cell.array
    lengths = np.linalg.norm(vectors, axis=1)
    full = atoms.cell.complete().array
    volume = abs(np.linalg.det(full))
    out = np.zeros(3)
    for k in range(3):
        face = np.linalg.norm(np.cross(full[(k + 1) % 3], full[(k + 2) % 3]))
        out[k] = volume / face if face > 0 and lengths[k] > 0 else 0.0
    return out


def _close_pair(atoms: Atoms, min_distance_factor: float) -> Rejection | None:
    """The closest pair below ``min_distance_factor`` x covalent sum, as a rejection."""
    positions = atoms.positions
    radii = min_distance_factor * covalent_radii[atoms.numbers]
    if not atoms.pbc.any() and len(atoms) <= 1000:
        # Molecules and clusters: all pairs at once (faster than a neighbour list here).
        diff = positions[:, None, :] - positions[None, :, :]
        dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        ratio = dist - (radii[:, None] + radii[None, :])
        np.fill_diagonal(ratio, np.inf)
        i, j = np.nonzero(ratio < 0)
        d = dist[i, j]
    elif atoms.pbc.all():
        from matscipy.neighbours import neighbour_list  # C code: ~0.03 ms vs ~5 ms for ASE's

        i, j, d = neighbour_list("ijd", atoms, radii)
    elif len(atoms) > 1 or atoms.pbc.any():
        i, j, d = neighbor_list("ijd", atoms, radii, self_interaction=False)
    else:
        i = j = d = np.zeros(0)
    if len(d):
        k = int(np.argmin(d))
        a, b = int(i[k]), int(j[k])
        limit = radii[a] + radii[b]
        return Rejection(
            FailureCategory.UNPHYSICAL_GEOMETRY,
            f"atoms {a} ({atoms[a].symbol}) and {b} ({atoms[b].symbol}) are {d[k]:.3f} Å "
            f"apart, below {min_distance_factor:g} x covalent sum = {limit:.3f} Å",
        )
    return None


def check_before(atoms: Atoms, config: OracleConfig) -> Rejection | None:
    """All checks made before an oracle call: geometry, then elements."""
    rejection = check_geometry(atoms, config.min_distance_factor)
    if rejection is not None:
        return rejection
    try:
        check_elements(config, set(atoms.get_chemical_symbols()))
    except ValueError as exc:
        return Rejection(FailureCategory.UNSUPPORTED_ELEMENT, str(exc))
    return None


def classify_exception(exc: BaseException) -> FailureCategory:
    """The failure category of an exception raised by a calculator."""
    if isinstance(exc, OracleFailure):
        return exc.category
    if isinstance(exc, TimeoutError):
        return FailureCategory.TIMEOUT
    text = str(exc)
    if _SCF_PATTERN.search(text):
        return FailureCategory.SCF_NOT_CONVERGED
    if _ELEMENT_PATTERN.search(text.lower()):
        return FailureCategory.UNSUPPORTED_ELEMENT
    return FailureCategory.CRASHED


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (extxyz info values cannot hold newlines), at most ``limit`` chars."""
    flat = " ".join(str(text).split()).replace('"', "'")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(kw_only=True)
class Evaluation:
    """The outcome of one oracle call.

    Attributes:
        energy: eV, or None on failure.
        forces: (n_atoms, 3) eV/Å, or None.
        stress: Voigt (6,) eV/Å³ for fully periodic cells with a stress-capable backend, or None.
        failure: None on success, else the category; message: its text.
        seconds: wall time of the call, s.
    """

    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    failure: FailureCategory | None = None
    message: str = ""
    seconds: float = 0.0


def evaluate(calc: BaseCalculator, atoms: Atoms) -> Evaluation:
    """Call ``calc`` on a copy of ``atoms`` and check the results are finite.

    Stress is asked for when the cell is periodic in all three directions and the calculator
    implements it. Any exception becomes a categorised failure (never raised); a NaN or inf in
    what came back is ``non_finite_result``.
    """
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.info.update({k: v for k, v in atoms.info.items() if not k.startswith(LABEL_PREFIX)})
    want_stress = bool(work.pbc.all()) and "stress" in getattr(calc, "implemented_properties", ())
    if hasattr(calc, "reset"):
        calc.reset()
    work.calc = calc
    start = time.perf_counter()
    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
        stress = np.array(work.get_stress(voigt=True), dtype=float) if want_stress else None
    except Exception as exc:
        return Evaluation(
            failure=classify_exception(exc),
            message=one_line(f"{type(exc).__name__}: {exc}"),
            seconds=time.perf_counter() - start,
        )
    finally:
        work.calc = None
    seconds = time.perf_counter() - start
    problem = None
    if not np.isfinite(energy):
        problem = f"non-finite energy {energy}"
    elif forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        problem = f"non-finite or misshapen forces {forces.shape}"
    elif stress is not None and (stress.shape != (6,) or not np.all(np.isfinite(stress))):
        problem = "non-finite stress"
    if problem:
        return Evaluation(failure=FailureCategory.NON_FINITE, message=problem, seconds=seconds)
    return Evaluation(energy=energy, forces=forces, stress=stress, seconds=seconds)
