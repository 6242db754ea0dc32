"""What every probe's settings module uses: :class:`Bound` and :class:`BoundOverride` (a
metric's thresholds), :class:`RelaxSettings` and :class:`MDProbeBase` (settings several probes
share), and :class:`ProbeDefinition`, the record a settings module hands to the registry
(:mod:`.registry`).

Default bounds are per probe and metric, in the units of what is judged (the agent's probe
module says whether that is the error against the oracle, the relative error, the model's
value, or its shift from the oracle's value placed on the anchor's scale). Anchors: ML-PEG's
metric thresholds (ddmms/ml-peg), MLIPAudit's scores (instadeepai/mlipaudit) and MLIP Arena's
diatomics table; each bound's comment names its anchor, or says it is chemgap's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field, model_validator

from ..base import Section

__all__ = [
    "Bound",
    "BoundOverride",
    "MDProbeBase",
    "ProbeDefinition",
    "RelaxSettings",
    "bound",
]


class Bound(Section):
    """Thresholds of one metric in ML-PEG's form: ``good`` scores 1, ``bad`` scores 0, linear in
    between and clipped (either may be the larger). A metric passes when its score reaches
    ``probes.pass_score``.
    """

    good: float
    bad: float

    @model_validator(mode="after")
    def _distinct(self) -> Bound:
        if self.good == self.bad:
            raise ValueError(f"good and bad must differ (both {self.good})")
        return self


class BoundOverride(Section):
    """A change to one metric's default :class:`Bound` (either end, or both)."""

    good: float | None = None
    bad: float | None = None


# Where the anchors are: ML-PEG's ml_peg/analysis/*/metrics.yml, MLIPAudit's
# docs/source/scores/index.rst, MLIP Arena's diatomics leaderboard.
def bound(good: float, bad: float) -> Bound:
    """A metric's default :class:`Bound` (``good`` scores 1, ``bad`` 0)."""
    return Bound(good=good, bad=bad)


class RelaxSettings(Section):
    """Geometry relaxation with ASE's FIRE (Bitzek et al., PRL 97, 170201 (2006))."""

    fmax: float = Field(
        0.05, gt=0, description="converged below this max force, eV/Å (MLIPAudit's 0.05)"
    )
    max_steps: int = Field(200, ge=1, description="optimiser steps before giving up")


class MDProbeBase(Section):
    """Settings every MD probe shares: timestep, step cap, cell size and member runs."""

    timestep_fs: float = Field(2.0, gt=0, le=10, description="MD timestep, fs")
    steps: int = Field(250, ge=10, description="MD steps (the cap)")
    min_atoms: int = Field(
        32, ge=1, description="crystals: the smallest n×n×n supercell with this many atoms"
    )
    members: bool = Field(
        False,
        description="also run every member, for a band (each member walker is evaluated by all "
        "K members: about K + 1 times the cost)",
    )


@dataclass(frozen=True)
class ProbeDefinition:
    """One probe on the spec side, as its settings module registers it.

    Attributes:
        name: the probe's name: its :class:`~.registry.ProbeName` value (the member is the name
            in upper case) and the key of its settings under ``probes:``.
        summary: what it measures, in one line.
        settings: its settings section (a :class:`~chemgap.campaigns.spec.base.Section`).
        bounds: its metrics' default bounds, metric -> :class:`Bound`, in report order.
    """

    name: str
    summary: str
    settings: type[Section]
    bounds: Mapping[str, Bound]

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"probe name {self.name!r} must be a lower-case identifier")
        if not self.bounds:
            raise ValueError(f"probe {self.name!r} has no metric")
