"""The trust window on the ensemble's force uncertainty: per-element lower and upper levels.

Below ``lower`` a frame is accurate; above it, a candidate for labelling; above ``upper`` the
dynamics are no longer trusted (DP-GEN's ``model_devi_f_trust_lo``/``_hi``: Y. Zhang et al.,
Comput. Phys. Commun. 253, 107206 (2020)). Levels are either the spec's fixed numbers or
calibrated per element from held-out in-distribution data (:func:`trust_levels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from chemgap.campaigns.spec import TrustConfig, TrustMode

__all__ = ["MIN_STRUCTURES", "TrustLevels", "trust_levels"]

MIN_STRUCTURES = 3  # held-out structures an element needs for a level of its own


@dataclass(kw_only=True)
class TrustLevels:
    """Per-element trust levels on the calibrated per-atom force std, eV/Å.

    Attributes:
        lower, upper: per chemical symbol, eV/Å.
        default_lower, default_upper: for elements without their own level, eV/Å.
        n_structures: held-out structures the calibrated levels come from (0: fixed levels).
        pooled: elements of those structures that use the pooled default level because fewer
            than :data:`MIN_STRUCTURES` structures hold them (calibrated mode only).
    """

    lower: dict[str, float]
    upper: dict[str, float]
    default_lower: float
    default_upper: float
    n_structures: int = 0
    pooled: list[str] = field(default_factory=list)

    def per_atom(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n_atoms,) lower and upper levels, eV/Å, for atoms with ``numbers`` (n_atoms,)."""
        sym = [chemical_symbols[int(z)] for z in numbers]
        lo = np.array([self.lower.get(s, self.default_lower) for s in sym])
        hi = np.array([self.upper.get(s, self.default_upper) for s in sym])
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        """The levels as JSON-ready data (``TrustLevels(**d)`` reads it back)."""
        return {
            "lower": self.lower,
            "upper": self.upper,
            "default_lower": self.default_lower,
            "default_upper": self.default_upper,
            "n_structures": self.n_structures,
            "pooled": list(self.pooled),
        }

    def describe(self) -> str | None:
        """One line when some element uses the pooled level (None when none does)."""
        if not self.pooled:
            return None
        return (
            f"trust level of {', '.join(self.pooled)}: pooled over all "
            f"{self.n_structures} calibration structures (an element needs "
            f"{MIN_STRUCTURES} of its own)"
        )


def trust_levels(
    cfg: TrustConfig,
    *,
    force_std_atom_cal: np.ndarray | None = None,
    numbers: np.ndarray | None = None,
    system_idx: np.ndarray | None = None,
) -> TrustLevels:
    """Trust levels from the spec: fixed numbers, or calibrated from held-out data.

    In calibrated mode, for each element: ``lower`` = the ``cfg.quantile`` of the per-structure
    maximum calibrated force std of that element's atoms on held-out in-distribution data (so
    that fraction of in-distribution frames counts as accurate), ``upper = cfg.upper_ratio x
    lower``. Elements with fewer than :data:`MIN_STRUCTURES` held-out structures use the pooled
    level (listed in ``pooled``). Fixed mode, or
    no data, gives ``cfg.lower``/``cfg.upper`` for every element.

    Args:
        cfg: the spec's trust section (mode, fixed levels, quantile, upper ratio).
        force_std_atom_cal: (n_atoms,) calibrated per-atom force std on the held-out set, eV/Å.
        numbers: (n_atoms,) atomic numbers.
        system_idx: (n_atoms,) held-out structure of each atom.
    """
    if cfg.mode == TrustMode.FIXED or force_std_atom_cal is None:
        return TrustLevels(lower={}, upper={}, default_lower=cfg.lower, default_upper=cfg.upper)
    std = np.asarray(force_std_atom_cal, dtype=float)
    n_struct = int(system_idx.max()) + 1
    pooled = np.zeros(n_struct)
    np.maximum.at(pooled, system_idx, std)
    default = float(np.quantile(pooled, cfg.quantile))
    lower, upper, pooled_elements = {}, {}, []
    for z in np.unique(numbers):
        mask = numbers == z
        per = np.full(n_struct, -np.inf)
        np.maximum.at(per, system_idx[mask], std[mask])
        per = per[np.isfinite(per)]
        sym = chemical_symbols[int(z)]
        if len(per) >= MIN_STRUCTURES:
            lower[sym] = float(np.quantile(per, cfg.quantile))
            upper[sym] = cfg.upper_ratio * lower[sym]
        else:
            pooled_elements.append(sym)
    return TrustLevels(
        lower=lower,
        upper=upper,
        default_lower=default,
        default_upper=cfg.upper_ratio * default,
        n_structures=n_struct,
        pooled=pooled_elements,
    )
