"""``probes.surface``: the settings and default bounds of the surface-energy probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/surface.py``.
"""

from __future__ import annotations

from pydantic import Field

from ..base import Section
from .base import ProbeDefinition, RelaxSettings, bound

__all__ = ["BOUNDS", "PROBE", "SurfaceProbeConfig"]


class SurfaceProbeConfig(Section):
    """Surface energies, relaxed (judged) and unrelaxed, of slabs of the unit cell at the
    system's lattice, one per facet.
    """

    facets: list[tuple[int, int, int]] = Field(
        [(1, 0, 0), (1, 1, 0), (1, 1, 1)], min_length=1, description="Miller indices"
    )
    layers: int = Field(3, ge=1, description="repeats of the unit cell along the normal")
    vacuum_A: float = Field(8.0, gt=0, description="vacuum on each side, Å")
    relax: RelaxSettings = Field(default_factory=RelaxSettings)


BOUNDS = {
    "gamma": bound(0.0, 0.0169),  # eV/Å²: ML-PEG cleavage_energy 33.8 meV/Å², halved
    "facet_spearman": bound(1.0, 0.6),  # facet order (ML-PEG's Spearman bounds)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="surface",
    summary="surface energies (relaxed, unrelaxed) of low-index facets",
    settings=SurfaceProbeConfig,
    bounds=BOUNDS,
)
