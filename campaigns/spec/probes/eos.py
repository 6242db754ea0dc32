"""``probes.eos``: the settings and default bounds of the EOS probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/eos.py``.
"""

from __future__ import annotations

from pydantic import Field

from ..base import Section
from .base import ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "EosProbeConfig"]


class EosProbeConfig(Section):
    """E(V) of the crystal, isotropically scaled (atoms not relaxed), around each row's own
    equilibrium volume (its lattice relaxed first).
    """

    volume_range: float = Field(
        0.06, gt=0, lt=0.3, description="± fractional volume change around each row's V0"
    )
    points: int = Field(9, ge=5, le=41, description="volumes sampled")


BOUNDS = {
    "V0": bound(0.0, 0.15),  # relative; ~0.2 Å on a 4 Å lattice (ML-PEG lattice_constants)
    "E0": bound(0.0, 0.2),  # eV/atom (ML-PEG energy_volume_curves_metals, 200 meV/atom)
    "B0": bound(2.0, 30.0),  # GPa (ML-PEG elasticity, bulk modulus MAE)
    "curve_rmse": bound(0.0, 0.2),  # eV/atom, minima aligned (ML-PEG EOS Δ)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="eos",
    summary="E(V) around each row's own minimum, Birch-Murnaghan V0, E0, B0",
    settings=EosProbeConfig,
    bounds=BOUNDS,
)
