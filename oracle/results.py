"""What labelling returns: a labelled structure or a categorised failure, and batch summaries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed

from chemgap.common.keys import (  # the label keys, defined once for everyone
    ENERGY_KEY,
    FORCES_KEY,
    OK,
    STATUS_KEY,
    STRESS_KEY,
)

MESSAGE_KEY = "label_message"  # atoms.info: failure message, retry note, or "ok"
SECONDS_KEY = "label_seconds"  # atoms.info: oracle seconds spent on this structure
ORACLE_KEY = "oracle"  # atoms.info: backend name
ATTEMPTS_KEY = "label_attempts"  # atoms.info: oracle calls made (0: rejected before the call)

LABEL_INFO_KEYS = (
    ENERGY_KEY,
    STRESS_KEY,
    STATUS_KEY,
    MESSAGE_KEY,
    SECONDS_KEY,
    ORACLE_KEY,
    ATTEMPTS_KEY,
)


class FailureCategory(StrEnum):
    """Why an oracle call produced no label."""

    UNPHYSICAL_GEOMETRY = "unphysical_geometry"
    SCF_NOT_CONVERGED = "scf_not_converged"
    TIMEOUT = "timeout"
    UNSUPPORTED_ELEMENT = "unsupported_element"
    NON_FINITE = "non_finite_result"  # NaN or inf in the energy, forces or stress returned
    CRASHED = "crashed"


class OracleFailure(CalculationFailed):
    """A calculation failure that knows its category (raised by chemgap's own calculators)."""

    category: FailureCategory = FailureCategory.CRASHED

    def __init__(self, message: str, category: FailureCategory | None = None) -> None:
        super().__init__(message)
        if category is not None:
            self.category = category


class SCFNotConverged(OracleFailure):
    """The self-consistent-field cycle did not converge."""

    category = FailureCategory.SCF_NOT_CONVERGED


class UnsupportedElement(OracleFailure):
    """The backend has no parameters for an element of the structure."""

    category = FailureCategory.UNSUPPORTED_ELEMENT


@dataclass(kw_only=True)
class LabelResult:
    """One structure after the oracle: labelled, or a failure with its category.

    Attributes:
        atoms: a copy of the input with no calculator; on success ``info['REF_energy']`` (eV),
            ``arrays['REF_forces']`` ((n_atoms, 3) eV/Å) and, for fully periodic cells,
            ``info['REF_stress']`` (Voigt (6,), eV/Å³); always ``label_status``,
            ``label_message``, ``label_seconds``, ``label_attempts`` and ``oracle`` in ``info``.
        failure: None on success, else the category.
        message: the failure message, or a note (e.g. the retry settings that converged).
        seconds: oracle wall time spent on this structure over all attempts, s.
        attempts: oracle calls made (0 when rejected before calling the oracle).
        oracle: the backend name.
    """

    atoms: Atoms
    failure: FailureCategory | None = None
    message: str = ""
    seconds: float = 0.0
    attempts: int = 0
    oracle: str = ""

    @property
    def ok(self) -> bool:
        """True when the structure got a label."""
        return self.failure is None

    @property
    def status(self) -> str:
        """``"ok"`` or the failure category's value."""
        return OK if self.failure is None else self.failure.value

    @property
    def energy(self) -> float | None:
        """Reference energy, eV (None for a failure)."""
        return self.atoms.info.get(ENERGY_KEY)

    @property
    def forces(self) -> np.ndarray | None:
        """Reference forces, (n_atoms, 3) eV/Å (None for a failure)."""
        return self.atoms.arrays.get(FORCES_KEY)

    @property
    def stress(self) -> np.ndarray | None:
        """Reference stress, Voigt (6,) eV/Å³ (None for a failure or a non-periodic structure)."""
        return self.atoms.info.get(STRESS_KEY)


@dataclass(kw_only=True)
class LabelSummary:
    """Counts and timings of a labelled batch.

    Attributes:
        n_ok: structures labelled.
        failures: failure counts by category (categories with no failure are absent).
        oracle_seconds: summed oracle time over all structures, s.
        wall_seconds: wall time of the batch, s (set by the caller that timed it).
        oracle: the backend name.
    """

    n_ok: int = 0
    failures: Counter[FailureCategory] = field(default_factory=Counter)
    oracle_seconds: float = 0.0
    wall_seconds: float = 0.0
    oracle: str = ""

    @property
    def n_failed(self) -> int:
        """Structures that got no label."""
        return sum(self.failures.values())

    @property
    def n_total(self) -> int:
        """Structures tried."""
        return self.n_ok + self.n_failed

    @property
    def seconds_per_label(self) -> float:
        """Mean oracle seconds per structure that reached the oracle or was rejected, s."""
        return self.oracle_seconds / self.n_total if self.n_total else 0.0

    @property
    def labels_per_second(self) -> float:
        """Structures finished per wall second (0 when the wall time was not recorded)."""
        return self.n_total / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def add(self, result: LabelResult) -> None:
        """Count one result."""
        if result.failure is None:
            self.n_ok += 1
        else:
            self.failures[result.failure] += 1
        self.oracle_seconds += result.seconds

    def as_dict(self) -> dict[str, object]:
        """Plain types, for JSON and the run store."""
        return {
            "oracle": self.oracle,
            "n_total": self.n_total,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "failures": {c.value: n for c, n in sorted(self.failures.items())},
            "oracle_seconds": self.oracle_seconds,
            "wall_seconds": self.wall_seconds,
            "seconds_per_label": self.seconds_per_label,
        }

    def describe(self) -> str:
        """One line: ``12 ok, 2 failed (timeout 1, crashed 1), 0.031 s/label``."""
        parts = ", ".join(f"{c.value} {n}" for c, n in sorted(self.failures.items()))
        failed = f"{self.n_failed} failed" + (f" ({parts})" if parts else "")
        return f"{self.n_ok} ok, {failed}, {self.seconds_per_label:.3g} s/label"
