"""``probes.md_stability``: the settings and default bounds of the MD-stability probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/md_stability.py``.
"""

from __future__ import annotations

from pydantic import Field

from .base import MDProbeBase, ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "MDStabilityProbeConfig"]


class MDStabilityProbeConfig(MDProbeBase):
    """BAOAB Langevin NVT at each temperature until the step cap or a failure."""

    temperatures_K: list[float] | None = Field(
        None, description="K (default: the exploration temperatures)"
    )
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction, 1/fs")
    oracle: bool = Field(False, description="also run the oracle (its time to failure)")


BOUNDS = {
    "score": bound(1.0, 0.0),  # MLIPAudit stability score: < 0.5 means an explosion
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="md_stability",
    summary="NVT until a step cap or a failure (MLIPAudit score)",
    settings=MDStabilityProbeConfig,
    bounds=BOUNDS,
)
