"""The ``model`` and ``ensemble`` sections of a campaign spec."""

from __future__ import annotations

import functools
import importlib.util
import math
import tomllib
from enum import StrEnum
from pathlib import Path

from ase.data import atomic_numbers
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Dtype(StrEnum):
    """Floating-point precision of the model's weights."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"


class EnsembleMode(StrEnum):
    """How ensemble members differ (Lakshminarayanan et al. 2017; Huang et al. 2017)."""

    DEEP = "deep"  # independent seeds
    BAGGING = "bagging"  # each member on a bootstrap resample of the training set
    SNAPSHOT = "snapshot"  # one run, cyclic learning rate, one member per cycle


class E0Method(StrEnum):
    """Where each element's reference energy E0 comes from (mace-torch's ``--E0s``).

    ``isolated``: the oracle's energy of the isolated atom (MACE's advice, and what
    ``IsolatedAtom`` frames of a data file give): a model then has the right free-atom limit
    and its energy differences between coordinations are binding energies. ``average``: least
    squares of the training energies on element counts (mace-torch's ``average``): with data of
    one kind of environment E0 becomes that environment's energy per atom, and the model's
    interaction energy must climb to the free atom over a range its data never cover. A mapping
    ``{element: eV}`` gives the values.
    """

    ISOLATED = "isolated"
    AVERAGE = "average"


class LongRange(StrEnum):
    """Long-range terms added to a MACE member's energy (:mod:`chemgap.models.longrange`).

    ``coulomb``: learned per-atom charges, Gaussian-smeared, with Ewald/P3M electrostatics for
    periodic cells and a direct sum for molecules (torch-pme); ``d3``: D3(BJ) dispersion of
    ``d3_functional`` (tad-dftd3), a fixed term the MACE part learns around; ``coulomb+d3``:
    both.
    """

    NONE = "none"
    COULOMB = "coulomb"
    D3 = "d3"
    COULOMB_D3 = "coulomb+d3"


class ModelConfig(BaseModel):
    """Architecture of one MACE member (Batatia et al., NeurIPS 2022)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    r_max: float = Field(5.0, gt=0, description="radial cutoff, Å")
    num_channels: int = Field(16, ge=1, description="channels per irrep in the hidden features")
    max_L: int = Field(1, ge=0, le=3, description="highest irrep order of the hidden features")
    num_interactions: int = Field(2, ge=1, le=4, description="message-passing layers")
    correlation: int = Field(3, ge=1, le=4, description="body order of the ACE product minus one")
    num_bessel: int = Field(8, ge=1, description="radial Bessel basis functions")
    num_polynomial_cutoff: int = Field(5, ge=1, description="polynomial envelope order")
    max_ell: int = Field(3, ge=0, description="spherical-harmonic order of edge features")
    dtype: Dtype = Field(Dtype.FLOAT32, description="float32 (fast on CPU) or float64")
    long_range: LongRange = Field(
        LongRange.NONE, description="long-range terms added to MACE: none, coulomb, d3, coulomb+d3"
    )
    charge_width_A: float = Field(
        1.0, gt=0, description="Gaussian width of the learned charges (coulomb), Å"
    )
    d3_functional: str = Field(
        "PBE", min_length=1, description="functional whose D3(BJ) damping parameters d3 uses"
    )
    mlp_channels: int = Field(16, ge=1, description="hidden width of the last (non-linear) readout")
    radial_mlp: list[int] = Field(
        default_factory=lambda: [64, 64, 64], description="hidden widths of the radial MLP"
    )
    residual_first: bool = Field(
        False,
        description="a residual connection in the first interaction block (chemgap's members "
        "before 0.4; mace-torch's MACE model has none, so a lone atom's energy is its E0)",
    )
    e0: E0Method | dict[str, float] = Field(
        E0Method.ISOLATED,
        description="reference energies E0: isolated (the oracle's isolated atoms), average "
        "(least squares on the training energies) or {element: eV}",
    )

    @field_validator("e0", mode="before")
    @classmethod
    def _known_e0(cls, value: object) -> object:
        if isinstance(value, dict):
            for el, energy in value.items():
                if el not in atomic_numbers:
                    raise ValueError(f"{el!r} is not a chemical symbol")
                if isinstance(energy, bool) or not isinstance(energy, int | float):
                    raise ValueError(f"E0 of {el} must be a number of eV (got {energy!r})")
                if not math.isfinite(energy):
                    raise ValueError(f"E0 of {el} must be finite (got {energy})")
            return {str(el): float(energy) for el, energy in value.items()}
        if isinstance(value, str) and value not in set(E0Method):
            raise ValueError(f"{value!r} is not isolated, average or a mapping {{element: eV}}")
        return value

    @field_validator("d3_functional")
    @classmethod
    def _known_functional(cls, value: str) -> str:
        names = d3_functional_names()
        if names and value.lower().replace("-", "") not in names:
            raise ValueError(
                f"{value!r} has no D3(BJ) parameters in s-dftd3's data base "
                "(e.g. PBE, PBE0, B3LYP, revPBE, r2SCAN, TPSS)"
            )
        return value

    @classmethod
    def from_saved(cls, values: dict) -> ModelConfig:
        """The config of a saved model directory (``ensemble.json``'s ``model``): fields a
        file written before they existed keep the value such models were built with (a
        residual first block, least-squares E0s).
        """
        return cls(**{"residual_first": True, "e0": E0Method.AVERAGE, **values})

    @property
    def terms(self) -> tuple[str, ...]:
        """The long-range terms, e.g. ``("coulomb", "d3")``; empty for ``none``."""
        value = str(self.long_range)
        return () if value == LongRange.NONE else tuple(value.split("+"))


STEP_BUDGET = 400
"""The default ``step_budget``: optimiser steps a member aims for when ``max_epochs`` is unset."""


class EnsembleConfig(BaseModel):
    """How the K members are trained."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    members: int = Field(4, ge=1, description="ensemble size K")
    mode: EnsembleMode = Field(EnsembleMode.DEEP)
    max_epochs: int | None = Field(
        None, ge=1, description="epoch cap per member (default: scaled with the data)"
    )
    step_budget: int = Field(
        STEP_BUDGET,
        ge=1,
        description="optimiser steps a member aims for when max_epochs is unset (the scaled "
        "epochs are step_budget / batches per epoch)",
    )
    wall_time_s: float | None = Field(
        None, gt=0, description="wall-time cap per member, s (default: scaled with the data)"
    )
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-2, gt=0, description="initial learning rate")
    weight_decay: float = Field(0.0, ge=0)
    energy_weight: float = Field(1.0, ge=0, description="loss weight of per-atom energies")
    forces_weight: float = Field(10.0, ge=0, description="loss weight of forces")
    stress_weight: float = Field(0.0, ge=0, description="loss weight of stress (periodic only)")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="0 disables weight EMA")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="held out for early stopping")
    patience: int | None = Field(
        None,
        ge=1,
        description="epochs without validation gain before stopping (default: scaled)",
    )
    gpus_per_member: float = Field(0.0, ge=0, description="GPU share per member when GPUs exist")
    min_lr_factor: float = Field(
        0.01, gt=0, le=1, description="floor of the learning-rate schedule, as a fraction of lr"
    )
    stage_two_fraction: float = Field(
        0.25,
        ge=0,
        le=0.9,
        description="last fraction of the epochs (and wall cap) trained with the stage-two "
        "weights; 0 turns stage two off (mace-torch starts it at 3/4 of the epochs)",
    )
    stage_two_energy_weight: float = Field(
        1000.0, ge=0, description="stage two: loss weight of per-atom energies (mace-torch's)"
    )
    stage_two_forces_weight: float = Field(
        100.0, ge=0, description="stage two: loss weight of forces (mace-torch's)"
    )
    stage_two_stress_weight: float | None = Field(
        None, ge=0, description="stage two: loss weight of stress (default 10 x stress_weight)"
    )
    stage_two_lr: float = Field(1e-3, gt=0, description="stage two: learning rate (mace-torch's)")

    @property
    def stage_two(self) -> bool:
        """Whether members end with an energy-weighted stage two (never for snapshot runs,
        whose cyclic schedule has no last stage).
        """
        return self.stage_two_fraction > 0 and self.mode != EnsembleMode.SNAPSHOT

    def loss_weights(self, stage: int) -> tuple[float, float, float]:
        """(energy, forces, stress) loss weights of training ``stage`` (1 or 2)."""
        if stage == 1:
            return self.energy_weight, self.forces_weight, self.stress_weight
        stress = self.stage_two_stress_weight
        return (
            self.stage_two_energy_weight,
            self.stage_two_forces_weight,
            10.0 * self.stress_weight if stress is None else stress,
        )

    @property
    def unscaled(self) -> list[str]:
        """The budget fields left to :meth:`scaled_to` (unset by the user)."""
        return [name for name in SCALED_FIELDS if getattr(self, name) is None]

    def scaled_to(self, n_train: int, n_atoms: int) -> EnsembleConfig:
        """This config with every unset budget field filled from the training data.

        The rules (the README's ``train`` section gives them to users, with the figures):

        - ``max_epochs``: ``step_budget`` optimiser steps (:data:`STEP_BUDGET` by default),
          i.e. ``step_budget / ceil(n_train / batch_size)`` epochs, within
          :data:`EPOCH_RANGE`. Convergence
          follows the number of updates, not of passes, so a small file gets many epochs and
          a large one few. A snapshot ensemble's one run holds K cycles: K times as many.
        - ``patience``: a :data:`PATIENCE_FRACTION` of ``max_epochs``, at least
          :data:`MIN_PATIENCE`: room for the plateau schedule (which halves the learning rate
          after ``max(2, patience // 4)`` epochs without gain) to act a few times first.
        - ``wall_time_s``: a safety net scaled with the work, :data:`WALL_S_PER_ATOM_EPOCH`
          per training atom and epoch (about 3x what the default model needs on a 2-core
          machine with three members sharing it) within :data:`WALL_RANGE_S`: it binds on a
          much slower machine, a model ~3x costlier per atom (more channels, long-range
          terms), or beyond ~36k training atoms on 2 cores (the 1 h ceiling).

        Args:
            n_train: training structures (the validation part excluded).
            n_atoms: atoms in those structures, all together.
        """
        steps = max(1, math.ceil(n_train / self.batch_size))
        runs = self.members if self.mode == EnsembleMode.SNAPSHOT else 1  # cycles in one run
        low, high = (runs * bound for bound in EPOCH_RANGE)
        budget = self.step_budget
        epochs = self.max_epochs or _clip(math.ceil(runs * budget / steps), low, high)
        patience = self.patience or max(MIN_PATIENCE, round(PATIENCE_FRACTION * epochs))
        wall = self.wall_time_s or float(
            _clip(round(WALL_S_PER_ATOM_EPOCH * n_atoms * epochs), *WALL_RANGE_S)
        )
        return self.model_copy(
            update={"max_epochs": epochs, "patience": patience, "wall_time_s": wall}
        )


SCALED_FIELDS = ("max_epochs", "patience", "wall_time_s")
"""EnsembleConfig fields that default to a value scaled with the data (:meth:`scaled_to`)."""
EPOCH_RANGE = (20, 200)
"""Bounds of the scaled ``max_epochs``."""
PATIENCE_FRACTION = 0.2
"""Scaled ``patience`` as a fraction of ``max_epochs``."""
MIN_PATIENCE = 5
"""Smallest scaled ``patience``."""
WALL_S_PER_ATOM_EPOCH = 0.015
"""Scaled wall cap per training atom and epoch, s."""
WALL_RANGE_S = (60, 3600)
"""Bounds of the scaled ``wall_time_s``, s."""


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@functools.lru_cache(maxsize=1)
def d3_functional_names() -> frozenset[str]:
    """Normalised names (lower case, no hyphens) of functionals with D3(BJ) parameters, read
    from tad-dftd3's copy of s-dftd3's data base without importing torch; empty when tad-dftd3
    is not installed (then :func:`chemgap.models.dispersion.d3_parameters` checks at build).
    """
    spec = importlib.util.find_spec("tad_dftd3")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations))) / "param"
    try:
        with open(root / "parameters.toml", "rb") as fh:
            table = tomllib.load(fh)["parameter"]
        with open(root / "aliases.toml", "rb") as fh:
            aliases = tomllib.load(fh)["alias"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return frozenset()
    names = {name for name, entry in table.items() if "bj" in entry.get("d3", {})}
    return frozenset(names | {alias for alias, name in aliases.items() if name in names})
