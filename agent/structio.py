"""Reading structure files at the user's boundary (CLI arguments, ``--data`` files).

Every structure read is checked before any model or oracle sees it: a structure with no atoms,
an atom of no element (ASE's ``X``), a non-finite position, cell or label, labels of the wrong
shape, a cell no neighbour search can handle (:func:`chemgap.oracle.triage.extent_problem`), or
two atoms closer than ``MIN_DISTANCE_FACTOR`` x their covalent radii sum is bad input, in one
sentence that names the file, the structure and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from chemgap.agent.errors import BadInput
from chemgap.common.keys import ENERGY_KEY, FORCES_KEY, STRESS_KEY

MIN_DISTANCE_FACTOR = 0.1
"""Two atoms closer than this x their covalent radii sum (0.26 Å for Cu-Cu, 0.06 Å for H-H)
are refused: no structure of any use has them (the oracle triage refuses below 0.5)."""


def read_structures(path: str | Path, what: str) -> list[Atoms]:
    """Every structure of an ASE-readable file, labels moved into REF_* keys (no calculator
    attached); a missing, unreadable, empty or malformed file is bad input naming ``what``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BadInput: ``path`` is a directory or an empty file, ASE cannot read it, it holds no
            structures, or a structure fails :func:`structure_problem`.
    """
    from chemgap.models.data import labels_from_calculator

    structures = read_file(path, what)
    for i, atoms in enumerate(structures):
        problem = structure_problem(atoms)
        if problem is not None:
            raise BadInput(f"{what}: structure {i} of {path}: {problem}")
    return [labels_from_calculator(a) for a in structures]


def read_file(
    path: str | Path, what: str, index: str = ":", format: str | None = None
) -> list[Atoms]:
    """The structures ASE reads from ``path`` at ``index``, unchecked (``label`` records a bad
    structure as a failed label instead of refusing the file).

    Args:
        path: the file.
        what: the argument or flag that named it, e.g. ``DATA``, put in front of each message.
        index: which structures, in ASE's index syntax.
        format: ASE's format name (default: from the suffix or the content).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BadInput: ``path`` is a directory or an empty file, ASE cannot read it, or it holds no
            structures at ``index``.
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        raise BadInput(f"{what}: {path} is a directory; expected a structure file")
    if path.stat().st_size == 0:
        raise BadInput(f"{what}: {path} is empty; expected a structure file ASE reads")
    try:
        structures = ase.io.read(path, index=index, format=format)
    except Exception as exc:
        raise BadInput(f"{what}: cannot read {path} as a structure file ({_reason(exc)})") from None
    structures = structures if isinstance(structures, list) else [structures]
    if not structures:
        at = "" if index == ":" else f" at index {index!r}"
        raise BadInput(f"{what}: {path} holds no structures{at}")
    return structures


def structure_problem(atoms: Atoms) -> str | None:
    """Why ``atoms`` is no usable input (a clause after "structure N of FILE:"), or None.

    Labels are checked wherever they are: REF_* keys or an attached single-point calculator.
    """
    from chemgap.oracle.triage import check_geometry, extent_problem

    if len(atoms) == 0:
        return "it has no atoms; every structure needs at least one"
    ghosts = np.flatnonzero(atoms.numbers == 0)
    if len(ghosts):
        return f"atom {int(ghosts[0])} has no element (symbol X); expected a chemical symbol"
    positions = atoms.positions
    if not np.all(np.isfinite(positions)):
        atom = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        return (
            f"atom {atom} has a non-finite position {positions[atom].tolist()}; positions must "
            "be finite numbers, Å"
        )
    problem = extent_problem(atoms) or _label_problem(atoms)
    if problem is not None:
        return problem
    rejection = check_geometry(atoms, MIN_DISTANCE_FACTOR)
    return None if rejection is None else rejection.message


def _label_problem(atoms: Atoms) -> str | None:
    """A non-finite or misshapen label (energy, forces, stress), or None."""
    results = getattr(atoms.calc, "results", None) or {}
    labels = {
        "energy": atoms.info.get(ENERGY_KEY, results.get("energy")),
        "forces": atoms.arrays.get(FORCES_KEY, results.get("forces")),
        "stress": atoms.info.get(STRESS_KEY, results.get("stress")),
    }
    shapes = {"energy": [()], "forces": [(len(atoms), 3)], "stress": [(6,), (3, 3)]}
    for name, value in labels.items():
        if value is None:
            continue
        try:
            array = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return f"its {name} label is not numbers (got {str(value)[:40]!r})"
        if array.shape not in shapes[name]:
            return f"its {name} label has shape {array.shape}; expected {shapes[name][0]}"
        if not np.all(np.isfinite(array)):
            return f"its {name} label is not finite; labels must be finite numbers"
    return None


def _reason(exc: BaseException) -> str:
    """ASE's reading error in a few words a user can act on."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not text: byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start}"
    if "StopIteration" in str(exc) or isinstance(exc, StopIteration):
        return "it ends in the middle of a structure"
    if isinstance(exc, KeyError) and exc.args:
        from ase.data import atomic_numbers

        key = exc.args[0]
        if isinstance(key, str) and key not in atomic_numbers:
            return f"unknown element symbol {key!r}; expected a chemical symbol such as Cu"
        return f"missing key {key!r}"
    text = " ".join(str(exc).split()) or f"ASE's reader stopped with {type(exc).__name__}"
    return text if len(text) <= 160 else text[:157] + "..."


def write_extxyz(path: Path, structures: list[Atoms]) -> None:
    """Write ``structures`` as extxyz atomically (:func:`chemgap.common.files.atomic_write`): a
    crash or a power cut leaves the old file or the new one, never a torn one; no structures
    write an empty file. Labels travel in ``atoms.info``/``atoms.arrays`` (REF_* keys), so any
    calculator attached is left out.
    """
    import ase.io

    from chemgap.common.files import atomic_write

    bare = []
    for atoms in structures:
        copy = atoms.copy()  # Atoms.copy() drops the calculator
        bare.append(copy)
    atomic_write(path, lambda handle: ase.io.write(handle, bare, format="extxyz"))


def read_extxyz(path: Path) -> list[Atoms]:
    """Every structure of an extxyz file :func:`write_extxyz` wrote, without calculators; a
    missing or empty file holds none (a step that found nothing writes nothing).
    """
    import ase.io

    if not path.exists() or path.stat().st_size == 0:
        return []
    images = ase.io.read(path, index=":", format="extxyz")
    for atoms in images:
        atoms.calc = None
    return images
