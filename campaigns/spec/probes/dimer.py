"""``probes.dimer``: the settings and default bounds of the dimer (pair-curve) probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/dimer.py``.
"""

from __future__ import annotations

from pydantic import Field

from ..base import Section
from .base import ProbeDefinition, bound

__all__ = ["BOUNDS", "PROBE", "DimerProbeConfig"]


class DimerProbeConfig(Section):
    """Pair curves for every element pair, from ``r_min_A`` to the model cutoff + ``beyond_A``."""

    r_min_A: float = Field(0.5, gt=0, description="shortest separation, Å")
    beyond_A: float = Field(1.0, ge=0, description="how far past the model's cutoff, Å")
    step_A: float = Field(0.02, gt=0, le=0.2, description="spacing of the separations, Å")


BOUNDS = {
    # counts judged by |model − oracle|: pass only when equal to the oracle's (one off
    # scores 0); ML-PEG diatomics' anchors (1 flip, 1 minimum) assume a physical oracle
    "force_flips": bound(0.0, 1.0),
    "energy_minima": bound(0.0, 1.0),
    # ρ(E, repulsion / attraction): ML-PEG diatomics' good ends; bad at 0 (chemgap's:
    # ML-PEG's ∓1 ends would pass a missing wall, ρ ≈ 0; MLIP Arena's worst has −0.42)
    "spearman_repulsion": bound(-1.0, 0.0),
    "spearman_attraction": bound(1.0, 0.0),
    "tortuosity": bound(1.0, 5.0),  # MLIP Arena's best is 1 (chemgap's bad)
    "energy_jump": bound(0.0, 1.0),  # eV; MLIP Arena's best models ≲ 0.04 eV (chemgap's bad)
    "conservation_deviation": bound(0.0, 1.0),  # eV/Å (chemgap's)
    "well_depth": bound(0.0, 0.5),  # eV (chemgap's)
    "well_position": bound(0.0, 0.2),  # Å (chemgap's, ML-PEG's lattice-constant scale)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="dimer",
    summary="pair curves with MLIP Arena's / ML-PEG's shape metrics",
    settings=DimerProbeConfig,
    bounds=BOUNDS,
)
