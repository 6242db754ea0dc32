"""The region of chemical space (``system``), the fixed test set (``test_set``), and the
arithmetic the campaign does with them: how many seeds may enter the initial set
(:func:`initial_pool_size`) and how many initial labels are held out (:func:`held_out_counts`).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator

from .base import Section, short
from .seeds import Seed

__all__ = [
    "SystemConfig",
    "TestSetConfig",
    "TestSetMethod",
    "held_out_counts",
    "initial_pool_size",
    "initial_set_problems",
    "missing_test_set_file",
]


class SystemConfig(Section):
    """The region of chemical space: seed structures the campaign starts from."""

    seeds: list[Seed] = Field(min_length=1, description="seed structure generators")
    initial_labels: int = Field(16, ge=2, description="seed structures labelled before iter 1")
    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="labels kept out of training for early stopping and validation errors (of "
        "the initial labels, and of each batch drawn at random from the frames visited)",
    )
    calibration_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="labels kept out of training to fit the uncertainty calibration and trust "
        "levels on (never the early-stopping set; of each batch, drawn at random from the "
        "frames visited)",
    )


class TestSetMethod(StrEnum):
    """How test structures are drawn from the seeds at each test temperature."""

    MD = "md"  # short Langevin MD with the oracle itself (cheap oracles: EMT, SW, xTB molecules)
    RATTLE = "rattle"  # thermal Gaussian displacements and strain (any oracle: one call each)


class TestSetConfig(Section):
    """A fixed labelled test set: labelled once at iteration 0 and never trained on, selected
    from or calibrated on; every iteration is scored on it.

    Generated (``per_kind`` > 0): ``per_kind`` structures from *every* seed entry, also those
    with ``initial: false``, spread over ``temperatures_K`` (default: the exploration ladder).
    A seed entry is one *kind* (its ``kind``, with the formula, SMILES or name when the spec has
    several entries of one kind); kinds with ``initial: true`` are in distribution (ID), the
    others out of distribution (OOD). From a file (``file``): a user's labelled structures
    (extxyz with REF_energy / REF_forces, or energy / forces), used as given; ``info['kind']``
    or ``info['config_type']`` names each structure's kind, and a kind equal to an initial
    seed's kind is ID.
    """

    __test__ = False  # not a pytest class

    per_kind: int = Field(4, ge=0, description="test structures per seed entry (0: none)")
    temperatures_K: list[float] | None = Field(
        None,
        description="temperatures the test structures are drawn at, K (default: exploration's)",
    )
    method: TestSetMethod = Field(
        TestSetMethod.RATTLE,
        description="md: oracle Langevin MD; rattle: thermal displacements and strain",
    )
    md_steps: int = Field(40, ge=1, description="md: oracle MD steps before the frame is taken")
    timestep_fs: float = Field(2.0, gt=0, le=10, description="md: timestep, fs")
    rattle_A: float = Field(
        0.05, ge=0, lt=1, description="rattle: displacement std at 300 K, Å (scales as sqrt(T))"
    )
    strain: float = Field(0.01, ge=0, lt=0.5, description="rattle: max random strain")
    file: str | None = Field(None, description="labelled test structures instead of generated")

    @field_validator("temperatures_K")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or min(value) <= 0):
            raise ValueError("temperatures must be > 0 K (or leave the list out)")
        return value

    def resolve(self, base_dir: Path) -> Path | None:
        """The test file as an absolute path (relative paths are relative to the spec)."""
        if self.file is None:
            return None
        p = Path(self.file).expanduser()
        return p if p.is_absolute() else base_dir / p


def initial_pool_size(system: SystemConfig) -> int | None:
    """Seed structures that may be drawn into the initial set (None: a file seed's count is
    only known when the file is read).
    """
    total = 0
    for seed in system.seeds:
        if not seed.initial:
            continue
        if seed.kind == "file":
            return None
        n = len(seed.distances_A) if seed.kind == "dimer" else 1
        total += seed.count * n
    return total


def held_out_counts(system: SystemConfig, n: int) -> tuple[int, int]:
    """Structures of ``n`` initial labels kept for validation and for calibration (≥ 1 each)."""
    return (
        max(1, round(system.holdout_fraction * n)),
        max(1, round(system.calibration_fraction * n)),
    )


def initial_set_problems(system: SystemConfig) -> list[str]:
    """The initial set must leave something to train on and something to calibrate on.

    Returns:
        One problem line, or none.
    """
    if not any(seed.initial for seed in system.seeds):
        return [
            "system.seeds: every seed entry has initial: false, so there is nothing to label "
            "before the first training (got no initial seed); mark at least one initial: true"
        ]
    pool = initial_pool_size(system)
    n = system.initial_labels if pool is None else min(system.initial_labels, pool)
    n_hold, n_cal = held_out_counts(system, n)
    if n - n_hold - n_cal < 1:
        return [
            f"system.holdout_fraction: holds out {n_hold} (and calibration_fraction {n_cal}) of "
            f"the {n} initial structures, leaving none to train on (got "
            f"{system.holdout_fraction!r} and {system.calibration_fraction!r}); lower them or "
            "label more"
        ]
    return []


def missing_test_set_file(test_set: TestSetConfig, base_dir: Path) -> list[str]:
    """A test file that does not exist (relative paths start at ``base_dir``).

    Returns:
        One problem line, or none.
    """
    path = test_set.resolve(base_dir)
    if path is not None and not path.is_file():
        return [
            f"test_set.file: file {short(str(path), 120)} does not exist "
            f"(got {short(test_set.file)})"
        ]
    return []
