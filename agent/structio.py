"""Reading structure files at the user's boundary (CLI arguments, ``--data`` files)."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from chemgap.agent.errors import BadInput


def read_structures(path: str | Path, what: str) -> list[Atoms]:
    """Every structure of an ASE-readable file, labels moved into REF_* keys (no calculator
    attached); a missing, unreadable or empty file is bad input naming ``what``.
    """
    import ase.io

    from chemgap.models.data import labels_from_calculator

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        structures = ase.io.read(path, index=":")
    except Exception as exc:
        raise BadInput(f"{what}: cannot read {path} as a structure file ({exc})") from None
    structures = structures if isinstance(structures, list) else [structures]
    if not structures:
        raise BadInput(f"{what}: {path} holds no structures")
    return [labels_from_calculator(a) for a in structures]
