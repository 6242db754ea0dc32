"""Where labels live on ``ase.Atoms``: MACE's ``REF_`` convention, one definition for everyone.

The oracle writes labels under these keys, the models train on them, the agent stores, reads and
scores them. Energies are total energies in eV, forces eV/Å, stress Voigt (6,) eV/Å³ with ASE's
sign convention.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from ase import Atoms

ENERGY_KEY = "REF_energy"  # atoms.info, eV
FORCES_KEY = "REF_forces"  # atoms.arrays, (n_atoms, 3) eV/Å
STRESS_KEY = "REF_stress"  # atoms.info, Voigt (6,) eV/Å³, ASE sign convention
LABEL_PREFIX = "REF_"  # every label key starts with it
STATUS_KEY = "label_status"  # atoms.info: "ok" or a failure category
OK = "ok"

# The ``split`` column of a run's data.db (and of remedies/labels.db): which role a label plays.
TRAIN_SPLIT = "train"  # trained on
TEST_SPLIT = "test"  # the campaign's fixed test set: scored on, never trained on
HOLDOUT_SPLIT = "holdout"  # early stopping of the next ensemble
CALIBRATION_SPLIT = "calibration"  # fits the trust levels and the uncertainty calibration
ISOLATED_ATOM_SPLIT = "isolated_atom"
"""``split`` of a run's isolated-atom labels in data.db: reference energies E0, never trained on."""

__all__ = [
    "CALIBRATION_SPLIT",
    "ENERGY_KEY",
    "FORCES_KEY",
    "HOLDOUT_SPLIT",
    "ISOLATED_ATOM_SPLIT",
    "LABEL_PREFIX",
    "OK",
    "STATUS_KEY",
    "STRESS_KEY",
    "TEST_SPLIT",
    "TRAIN_SPLIT",
    "has_labels",
    "reference_energies",
    "reference_forces",
    "structure_key",
]


def has_labels(atoms: Atoms, *, need_forces: bool = True) -> bool:
    """True when ``atoms`` carries an energy (and forces) label and its status is ``ok``."""
    if atoms.info.get(STATUS_KEY, OK) != OK or atoms.info.get(ENERGY_KEY) is None:
        return False
    return not (need_forces and FORCES_KEY not in atoms.arrays)


def reference_energies(structures: Sequence[Atoms]) -> np.ndarray:
    """(n_struct,) labelled total energies, eV."""
    return np.array([float(a.info[ENERGY_KEY]) for a in structures], dtype=float)


def reference_forces(structures: Sequence[Atoms]) -> np.ndarray:
    """(n_atoms_total, 3) labelled forces of all structures, concatenated in order, eV/Å."""
    if not structures:
        return np.zeros((0, 3))
    return np.concatenate([np.asarray(a.arrays[FORCES_KEY], dtype=float) for a in structures])


def structure_key(atoms: Atoms, decimals: int = 4) -> str:
    """Content hash of a structure (species, positions to 1e-4 Å, cell, pbc), for de-duplication."""
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.positions, decimals).astype(np.float64).tobytes())
    h.update(np.round(np.asarray(atoms.cell), decimals).astype(np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    # the "s" keeps ase.db from reading a digest like "1620e00..." as a float
    return "s" + h.hexdigest()[:20]
