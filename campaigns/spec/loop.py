"""The loop's sections: the trust window (``exploration.trust``), exploration, selection, and
when the campaign stops (``budget``, with its ``convergence`` criteria).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from .base import ELEMENTS, Section, short

__all__ = [
    "BudgetConfig",
    "ConvergenceConfig",
    "ExplorationConfig",
    "SelectionConfig",
    "SelectionStrategy",
    "TrustConfig",
    "TrustMode",
]


class TrustMode(StrEnum):
    """How the trust window's levels are set."""

    CALIBRATED = "calibrated"  # per-element levels from the calibrated ensemble uncertainty
    FIXED = "fixed"  # DP-GEN-style fixed force-deviation levels (Zhang et al. 2020)


class TrustConfig(Section):
    """Trust window on the per-atom force uncertainty, eV/Å.

    Below ``lower`` a frame is accurate; above it, a candidate for labelling; above ``upper`` the
    dynamics are no longer trusted and the walker restarts from its last accurate frame.
    ``fixed`` uses the numbers as given (DP-GEN's 0.05/0.15 eV/Å); ``calibrated`` sets, per
    element, ``lower`` to the ``quantile`` of the calibrated uncertainty the current ensemble shows
    on held-out in-distribution data, and ``upper`` to ``upper_ratio`` x ``lower``.
    """

    mode: TrustMode = TrustMode.CALIBRATED
    lower: float = Field(0.05, gt=0, description="fixed mode: accurate below, eV/Å")
    upper: float = Field(0.15, gt=0, description="fixed mode: restart above, eV/Å")
    quantile: float = Field(0.95, gt=0, lt=1, description="calibrated mode: in-distribution level")
    upper_ratio: float = Field(3.0, gt=1, description="calibrated mode: upper / lower")

    @model_validator(mode="after")
    def _ordered(self) -> TrustConfig:
        if self.upper <= self.lower:
            raise ValueError(f"upper ({self.upper}) must exceed lower ({self.lower})")
        return self


class ExplorationConfig(Section):
    """Batched Langevin MD walkers driven by the ensemble-mean force."""

    walkers: int = Field(16, ge=1, description="MD walkers advanced together")
    steps: int = Field(200, ge=1, description="MD steps per walker per iteration")
    temperatures_K: list[float] = Field([300.0], min_length=1, description="temperature ladder, K")
    timestep_fs: float = Field(1.0, gt=0, le=10, description="MD timestep, fs")
    friction_per_fs: float = Field(0.01, ge=0, description="Langevin friction, 1/fs (0: NVE)")
    neighbour_skin_A: float = Field(0.5, ge=0, description="neighbour-list skin, Å")
    min_distance_factor: float = Field(
        0.5, gt=0, lt=1, description="stop a walker below this x covalent-radius sum"
    )
    trust: TrustConfig = Field(default_factory=TrustConfig)

    @field_validator("temperatures_K")
    @classmethod
    def _positive_temperatures(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("temperatures must be > 0 K")
        return value


# --------------------------------------------------------------------------- selection
class SelectionStrategy(StrEnum):
    """How the labelling batch is chosen from the candidates."""

    UNCERTAINTY = "uncertainty"  # highest calibrated uncertainty first
    DIVERSE = "diverse"  # uncertainty-ranked, farthest-point sampling on descriptors
    RANDOM = "random"  # control


class SelectionConfig(Section):
    """How many candidates are labelled per iteration, and how they are chosen."""

    strategy: SelectionStrategy = SelectionStrategy.DIVERSE
    batch_size: int = Field(16, ge=1, description="structures labelled per iteration")
    per_element_quota: dict[str, int] = Field(
        default_factory=dict, description="minimum structures containing each element"
    )
    dedup_distance: float = Field(
        1e-3, ge=0, description="descriptor distance below which two structures are duplicates"
    )

    @field_validator("per_element_quota")
    @classmethod
    def _quota_elements(cls, value: dict[str, int]) -> dict[str, int]:
        for element, n in value.items():
            if element not in ELEMENTS:
                raise ValueError(f"unknown element {short(element)}")
            if n < 0:
                raise ValueError(f"quota for {element} must be >= 0")
        return value


# --------------------------------------------------------------------------- budget and stop
class ConvergenceConfig(Section):
    """When the campaign counts as converged: criteria that must hold for ``patience`` iters."""

    accurate_fraction: float = Field(0.95, gt=0, le=1, description="explored frames accurate")
    force_mae_tol: float = Field(0.005, ge=0, description="change of validation force MAE, eV/Å")
    patience: int = Field(2, ge=1, description="iterations the criteria must hold")
    probes: bool = Field(
        False, description="converged only while the last probe run passed (needs probes.every)"
    )


class BudgetConfig(Section):
    """When the campaign stops: iterations, oracle calls, wall time, convergence."""

    max_iterations: int = Field(5, ge=1)
    max_oracle_calls: int = Field(500, ge=1, description="labels, failures included")
    wall_time_s: float = Field(3600.0, gt=0, description="campaign wall-time budget, s")
    convergence: ConvergenceConfig = Field(default_factory=ConvergenceConfig)
