"""``probes.elastic``: the settings and default bounds of the elastic-constants probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/elastic.py``.
"""

from __future__ import annotations

from pydantic import Field

from ..base import Section
from .base import ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "ElasticProbeConfig"]


class ElasticProbeConfig(Section):
    """Clamped-ion C_ij by central differences of the stress over ± each Voigt strain, at each
    row's own relaxed lattice.
    """

    strain: float = Field(0.005, gt=0, le=0.05, description="magnitude of each applied strain")


BOUNDS = {
    "C11": bound(5.0, 50.0),  # GPa (ML-PEG elasticity tensor MAE)
    "C12": bound(5.0, 50.0),
    "C44": bound(5.0, 50.0),
    "Cij_mae": bound(5.0, 50.0),
    "B_voigt": bound(2.0, 30.0),  # GPa (ML-PEG bulk modulus MAE)
    "G_voigt": bound(2.0, 30.0),  # GPa (ML-PEG shear modulus MAE)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="elastic",
    summary="C_ij from finite strains and stresses at each row's own lattice",
    settings=ElasticProbeConfig,
    bounds=BOUNDS,
)
