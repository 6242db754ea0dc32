"""``probes.rdf``: the settings and default bounds of the RDF probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/rdf.py``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import MDProbeBase, ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "RdfProbeConfig"]


class RdfProbeConfig(MDProbeBase):
    """g(r) of model and oracle NVT runs with common random numbers (cheap oracles only)."""

    temperature_K: float = Field(600.0, gt=0, description="K")
    friction_per_fs: float = Field(0.02, gt=0, description="Langevin friction, 1/fs")
    steps: int = Field(300, ge=10, description="MD steps")
    equilibration: int = Field(100, ge=0, description="steps discarded first")
    stride: int = Field(5, ge=1, description="steps between sampled frames")
    r_max_A: float = Field(6.0, gt=0, description="largest distance, Å")
    bins: int = Field(60, ge=10)
    expensive_oracle: bool = Field(False, description="allow oracles other than emt/sw/tersoff")

    @model_validator(mode="after")
    def _frames_left(self) -> RdfProbeConfig:
        if self.equilibration >= self.steps:
            raise ValueError(
                f"equilibration ({self.equilibration}) must be below steps ({self.steps}), "
                "or no frame is sampled"
            )
        return self


BOUNDS = {
    "overlap": bound(1.0, 0.8),  # Σmin/Σmax of the two g(r) (chemgap's)
    "first_peak": bound(0.0, 0.2),  # Å; passes ≤ 0.1 Å (MLIPAudit's RDF threshold)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="rdf",
    summary="radial distribution function of model MD against oracle MD",
    settings=RdfProbeConfig,
    bounds=BOUNDS,
)
