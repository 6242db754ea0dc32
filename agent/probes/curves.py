"""Shape metrics of a pair (diatomic) curve, implemented from their published definitions.

MLIP Arena (atomind-ai/mlip-arena, ``mlip_arena/flows/diatomics.py``, ``analyze``; the metric
explanations in ``serve/ranks/homonuclear-diatomics.py``) and ML-PEG (ddmms/ml-peg,
``ml_peg/analysis/physicality/diatomics/analyse_diatomics.py``, ``compute_pair_metrics``).
Both sort the points by decreasing distance and shift the energies to zero at the largest
distance (the far field); the force is the force on the second atom projected on the unit
vector from the first to the second (positive: repulsive).

- force flips (MLIP Arena ``force-flip-times``; ML-PEG ``count_sign_changes(F, 1e-2)``): forces
  with |F| < 0.01 eV/Å are dropped, then sign changes of the rest are counted. A bound pair
  curve (attractive beyond the well, repulsive inside it) has exactly **one**;
- tortuosity (MLIP Arena): total variation Σ|ΔE| over |E(r_max) − E_min| + (E(r_min) − E_min);
  1 for a curve that only falls into its well and rises again;
- energy jump (MLIP Arena): energy differences with |ΔE| < 1 meV are dropped; at every sign
  change of the remaining differences the two differences around it are added, in absolute value;
- conservation deviation (MLIP Arena): ⟨|F + dE/dr|⟩ with dE/dr by ``numpy.gradient``;
- Spearman repulsion / attraction (MLIP Arena, ML-PEG): Spearman's ρ of (r, E) for r ≤ r_o
  (well and inside, ideally −1) and r > r_o (ideally +1), r_o = argmin E;
- energy minima (ML-PEG): peaks of −E with ``scipy.signal.find_peaks(prominence=0.1, width=1)``;
- well depth E_far − E_min (eV) and well position r_o (Å): chemgap's, against the oracle.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ENERGY_TOL", "FORCE_TOL", "diatomic_metrics", "sorted_curve", "spearman"]

FORCE_TOL = 1e-2  # eV/Å, forces below it carry no sign (MLIP Arena, ML-PEG)
ENERGY_TOL = 1e-3  # eV, energy steps below it carry no sign (MLIP Arena)


def sorted_curve(
    r: np.ndarray, e: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, E − E(r_max), F), all (n,), sorted by decreasing distance (the definitions' order)."""
    order = np.argsort(np.asarray(r, dtype=float))[::-1]
    rs = np.asarray(r, dtype=float)[order]
    es = np.asarray(e, dtype=float)[order]
    return rs, es - es[0], np.asarray(f, dtype=float)[order]


def _sign_changes(values: np.ndarray, tol: float) -> np.ndarray:
    """Boolean (m − 1,) sign changes between consecutive entries of |values| > ``tol``."""
    kept = values[np.abs(values) > tol]
    signs = np.sign(kept)
    return signs[:-1] != signs[1:]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ of (x, y); NaN for fewer than 2 points or a constant input."""
    from scipy.stats import spearmanr

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def energy_jump(es: np.ndarray) -> float:
    """MLIP Arena's energy jump of energies ``es`` (n,) eV, in curve order."""
    ediff = np.diff(es)
    ediff = ediff[np.abs(ediff) >= ENERGY_TOL]
    signs = np.sign(ediff)
    flip = signs[:-1] != signs[1:]
    return float(np.abs(ediff[:-1][flip]).sum() + np.abs(ediff[1:][flip]).sum())


def diatomic_metrics(r: np.ndarray, e: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """Every shape metric of one pair curve (see the module docstring).

    Args:
        r: (n,) separations, Å, any order, at least 3 distinct.
        e: (n,) energies, eV.
        f: (n,) projected force on the second atom, eV/Å (positive: repulsive).

    Returns:
        ``force_flips``, ``energy_minima``, ``spearman_repulsion``, ``spearman_attraction``,
        ``tortuosity``, ``energy_jump`` (eV), ``conservation_deviation`` (eV/Å),
        ``well_depth`` (eV) and ``well_position`` (Å).
    """
    from scipy.signal import find_peaks

    rs, es, fs = sorted_curve(r, e, f)
    if len(rs) < 3:
        raise ValueError(f"a pair curve needs at least 3 points (got {len(rs)})")
    imin = int(np.argmin(es))
    e_min = es[imin]
    denominator = abs(es[0] - e_min) + (es[-1] - e_min)
    total_variation = float(np.abs(np.diff(es)).sum())
    minima, _ = find_peaks(-es, prominence=0.1, width=1)
    return {
        "force_flips": float(_sign_changes(fs, FORCE_TOL).sum()),
        "energy_minima": float(len(minima)),
        "spearman_repulsion": spearman(rs[imin:], es[imin:]),
        "spearman_attraction": spearman(rs[:imin], es[:imin]),
        "tortuosity": float(total_variation / denominator) if denominator > 0 else float("nan"),
        "energy_jump": energy_jump(es),
        "conservation_deviation": float(np.mean(np.abs(fs + np.gradient(es, rs)))),
        "well_depth": float(-e_min),
        "well_position": float(rs[imin]),
    }
