"""``probes.vibrations``: the settings and default bounds of the vibrations probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/vibrations.py``.
"""

from __future__ import annotations

from pydantic import Field

from ..base import Section
from .base import ProbeDefinition, RelaxSettings, bound

__all__ = ["BOUNDS", "PROBE", "VibrationsProbeConfig"]


class VibrationsProbeConfig(Section):
    """Harmonic frequencies by central finite differences (ASE's Vibrations scheme)."""

    delta_A: float = Field(0.01, gt=0, le=0.1, description="displacement, Å")
    supercell: int = Field(1, ge=1, le=3, description="crystals: n×n×n cell of the Γ point")
    imaginary_cm: float = Field(
        10.0, ge=0, description="|imaginary| frequencies above this count as unstable, cm⁻¹"
    )
    relax: RelaxSettings = Field(
        default_factory=lambda: RelaxSettings(fmax=1e-3, max_steps=500),
        description="molecules are relaxed with each potential first",
    )


BOUNDS = {
    "freq_mae": bound(0.0, 35.0),  # cm⁻¹ = 50 K (ML-PEG phonons ω MAE)
    "freq_max": bound(0.0, 35.0),  # cm⁻¹ (ML-PEG phonons ω_max)
    "imaginary_modes": bound(0.0, 1.0),  # extra imaginary modes (ML-PEG stability F1)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="vibrations",
    summary="harmonic frequencies (molecules) or Γ-point phonons (crystals)",
    settings=VibrationsProbeConfig,
    bounds=BOUNDS,
)
