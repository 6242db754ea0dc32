"""``probes.vacancy``: the settings and default bounds of the vacancy probe.

Registered in :mod:`.registry`; the probe itself is ``agent/probes/vacancy.py``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..base import Section
from .base import ProbeDefinition, RelaxSettings, bound

__all__ = ["BOUNDS", "PROBE", "VacancyProbeConfig"]


class VacancyProbeConfig(Section):
    """Vacancy formation energy, relaxed (fixed cell; judged) and unrelaxed, in n×n×n
    supercells of the unit cell at the system's lattice.
    """

    sizes: list[int] = Field([2], min_length=1, description="supercell repetitions n")
    relax: RelaxSettings = Field(default_factory=RelaxSettings)

    @field_validator("sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("sizes must be >= 1")
        return sorted(set(value))


BOUNDS = {
    "E_vac": bound(0.05, 0.5),  # eV (ML-PEG elemental_tm_vacancies MAE)
    "rmsd": bound(0.0, 0.2),  # Å (ML-PEG split_vacancy RMSD)
    "size_spearman": bound(1.0, 0.6),  # (ML-PEG split_vacancy Spearman)
}
"""Default bounds per metric (anchors: :mod:`.base`)."""

PROBE = ProbeDefinition(
    name="vacancy",
    summary="vacancy formation energy (relaxed, unrelaxed) against supercell size",
    settings=VacancyProbeConfig,
    bounds=BOUNDS,
)
