"""``probes.nve_drift``: the settings and default bounds of the NVE-drift probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/nve_drift.py``.
"""

from __future__ import annotations

from pydantic import Field

from .base import MDProbeBase, ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "NveDriftProbeConfig"]


class NveDriftProbeConfig(MDProbeBase):
    """Velocity-Verlet NVE from Maxwell-Boltzmann velocities at ``temperature_K``."""

    temperature_K: float = Field(300.0, gt=0, description="initial temperature, K")
    oracle: bool | None = Field(
        None, description="also run the oracle (default: when it is cheap: emt, sw, tersoff)"
    )


BOUNDS = {
    "drift_ratio": bound(1.0, 1.5),  # r ≤ 1 scores 1 (MLIPAudit); 0.5 at r = 1.25
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="nve_drift",
    summary="energy drift of NVE dynamics and its ratio to KE fluctuations",
    settings=NveDriftProbeConfig,
    bounds=BOUNDS,
)
