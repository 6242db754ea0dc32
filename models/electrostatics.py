"""Electrostatics of Gaussian-smeared (or point) charges through torch-pme, in eV and Å.

A structure's charges ``q_i`` (e) sit at the atoms as Gaussian charge densities of width σ
(``width``, Å; σ = 0 means point charges). Two Gaussians of width σ at distance r interact as
``k_e q_i q_j erf(r / 2σ) / r`` with ``k_e`` = :data:`K_E` = 14.399645 eV·Å/e² (torch-pme's
``prefactors.eV_A``). The energy is the sum over distinct pairs — and, for periodic cells, over
all their periodic images (Ewald, Ann. Phys. 369, 253, 1921) — without the self-energy of each
Gaussian (a function of q_i alone, which the short-range model absorbs)::

    E = ½ Σ_i Σ_{(j, n) ≠ (i, 0)} k_e q_i q_j erf(|r_ij + n·cell| / 2σ) / |r_ij + n·cell|.

How it is evaluated (:func:`coulomb_energy`):

- no periodic direction (molecules, clusters): the direct sum over pairs — no artificial
  periodic images, whatever cell the structure carries;
- three periodic directions: torch-pme's Ewald sum (:class:`torchpme.EwaldCalculator`, O(N²))
  up to :data:`MESH_MIN_ATOMS` atoms, particle-particle particle-mesh above
  (:class:`torchpme.P3MCalculator`, Hockney & Eastwood, *Computer simulation using particles*,
  1988; O(N log N)); smooth particle-mesh Ewald (:class:`torchpme.PMECalculator`; Essmann et
  al., J. Chem. Phys. 103, 8577, 1995) on request;
- two periodic directions (slabs; the cell's third vector spans the vacuum): Ewald with
  torch-pme's slab correction (Yeh & Berkowitz, J. Chem. Phys. 111, 3155, 1999);
- one periodic direction is refused.

The Ewald split, a stated rule (:func:`ewald_split`) for a target accuracy ε (default
:data:`DEFAULT_ACCURACY`, the relative size of the largest neglected term): for Gaussian charges
the splitting width of torch-pme's ``CoulombPotential`` is ``s = √2 σ``, where its long-range
kernel ``erf(r / √2 s) / r`` *is* the Gaussian-charge interaction, so the real-space sum vanishes
identically and no neighbour list is needed (the reciprocal-space-only form of the latent Ewald
summation of Cheng, npj Comput. Mater. 11, 80, 2025). For point charges ``s`` = 1 Å and the
real-space cutoff is ``√2 s erfc⁻¹(ε)``. The reciprocal sum keeps every k-vector up to
``k_c = √(−2 ln ε) / s`` (the Gaussian factor ``exp(−s² k² / 2)`` is ε there): torch-pme 0.5
keeps ``|k| ≲ π / lr_wavelength``, so ``lr_wavelength = π s / √(−2 ln ε)``, and the Ewald sum
here passes it exactly the k-vectors of that sphere (torch-pme's own box holds about twice as
many). torch-pme's tuners (``torchpme.tuning.tune_ewald``) time candidate parameters, so their
choice varies from run to run; a fixed rule keeps energies reproducible. The mesh methods have
no real-space part to hand work to, so the mesh must resolve the Gaussians: P3M with a mesh
spacing of ``s / 2`` and 5 interpolation nodes agrees with the Ewald sum to 1e-8 (σ = 1 Å) to
4e-6 (σ = 0.5 Å), relative, on rattled rock salt up to 512 atoms (PME at ``s / 4`` with 4
nodes: about 1e-5).
Measured on 2 CPU cores (energy + forces of rock salt, σ = 1 Å): Ewald 2.3 ms at 8 atoms,
4.6 ms at 64, 35 ms at 216, 0.55 s at 512; P3M 5, 20, 17 ms and 20-200 ms (its mesh is
rounded up to powers of two).

Periodic cells should be neutral: a charged cell gets torch-pme's uniform neutralising
background, and its energy depends on that convention. The short-range MACE part of a member
also sees pairs inside its cutoff: that double counting is not an error (the short-range model
learns the difference), but it means the Coulomb term alone is not the member's electrostatics
at short range.

All functions are differentiable in charges, positions and cell (forces and stress by autograd)
and compute in the dtype of ``positions`` (float64 recommended).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

log = logging.getLogger(__name__)

K_E = 14.399645478425667
"""Coulomb constant e²/(4π ε0) in eV·Å/e² (``torchpme.prefactors.eV_A``)."""

DEFAULT_ACCURACY = 1e-8
"""Relative size of the largest neglected Ewald term."""

MESH_MIN_ATOMS = 128
"""Periodic cells with more atoms than this use P3M instead of the Ewald sum (``auto``)."""

POINT_CHARGE_SPLIT = 1.0
"""Ewald splitting width ``s`` (Å) used for point charges."""

__all__ = [
    "DEFAULT_ACCURACY",
    "K_E",
    "MESH_MIN_ATOMS",
    "CoulombMethod",
    "EwaldSplit",
    "coulomb_energy",
    "direct_coulomb",
    "ewald_kvectors",
    "ewald_split",
    "pair_kernel",
    "periodic_coulomb",
]


class CoulombMethod(StrEnum):
    """How the energy of a periodic cell is summed (``auto`` chooses by size)."""

    AUTO = "auto"
    EWALD = "ewald"
    P3M = "p3m"
    PME = "pme"


@dataclass(frozen=True, kw_only=True)
class EwaldSplit:
    """Parameters of one Ewald evaluation (see :func:`ewald_split`).

    Attributes:
        smearing: torch-pme's splitting width ``s``, Å.
        lr_wavelength: torch-pme's reciprocal-space resolution, Å.
        cutoff: real-space cutoff, Å (0: the real-space sum vanishes).
        mesh_spacing: PME mesh spacing, Å.
    """

    smearing: float
    lr_wavelength: float
    cutoff: float
    mesh_spacing: float


def ewald_split(width: float, accuracy: float = DEFAULT_ACCURACY) -> EwaldSplit:
    """The stated Ewald rule for charges of Gaussian ``width`` σ (Å; 0 for point charges).

    Args:
        width: σ, Å, ≥ 0.
        accuracy: ε in (0, 1), relative size of the largest neglected term.

    Returns:
        ``s = √2 σ`` with no real-space part for σ > 0; ``s = 1 Å`` and a real-space cutoff
        ``√2 s erfc⁻¹(ε)`` for point charges; ``lr_wavelength = π s / √(−2 ln ε)``;
        PME mesh spacing ``s / 2``.
    """
    if width < 0:
        raise ValueError(f"charge width: {width!r} Å, expected ≥ 0")
    if not 0 < accuracy < 1:
        raise ValueError(f"Ewald accuracy: {accuracy!r}, expected a number in (0, 1)")
    if width > 0:
        s, cutoff = math.sqrt(2.0) * width, 0.0
    else:
        s = POINT_CHARGE_SPLIT
        cutoff = math.sqrt(2.0) * s * _erfcinv(accuracy)
    lam = math.pi * s / math.sqrt(-2.0 * math.log(accuracy))
    return EwaldSplit(smearing=s, lr_wavelength=lam, cutoff=cutoff, mesh_spacing=s / 2)


def _erfcinv(y: float) -> float:
    """The x with erfc(x) = y, for 0 < y < 1 (bisection; erfc is monotone)."""
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erfc(mid) > y else (lo, mid)
    return 0.5 * (lo + hi)


def pair_kernel(r: torch.Tensor, width: float) -> torch.Tensor:
    """Interaction per unit charges, ``erf(r / 2σ) / r`` (1/r for σ = 0), in 1/Å.

    Args:
        r: distances, Å, any shape, > 0.
        width: σ, Å.
    """
    if width > 0:
        return torch.erf(r / (2.0 * width)) / r
    return 1.0 / r


def direct_coulomb(charges: torch.Tensor, positions: torch.Tensor, width: float) -> torch.Tensor:
    """Per-atom energies of a finite system (no periodic images), eV.

    Args:
        charges: (n,) e.
        positions: (n, 3) Å.
        width: σ, Å.

    Returns:
        (n,) eV: ``½ Σ_{j≠i} k_e q_i q_j erf(r_ij / 2σ) / r_ij``.
    """
    n = positions.shape[0]
    if n < 2:
        return torch.zeros_like(charges)
    i, j = torch.triu_indices(n, n, offset=1, device=positions.device)
    r = torch.linalg.vector_norm(positions[j] - positions[i], dim=1)
    e_pair = 0.5 * K_E * charges[i] * charges[j] * pair_kernel(r, width)
    out = torch.zeros_like(charges)
    return out.index_add(0, i, e_pair).index_add(0, j, e_pair)


def _real_space_pairs(
    positions: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half neighbour list within ``cutoff`` (i < j, or i == j with a positive image) and its
    distances, differentiable in positions and cell.
    """
    from matscipy.neighbours import neighbour_list

    i, j, shifts = neighbour_list(
        "ijS",
        positions=positions.detach().cpu().double().numpy(),
        cell=cell.detach().cpu().double().numpy(),
        pbc=pbc,
        cutoff=cutoff,
    )
    first = [tuple(s) > (0, 0, 0) for s in shifts[i == j]]
    keep = i < j
    keep[np.flatnonzero(i == j)] = first
    idx = torch.as_tensor(np.stack([i[keep], j[keep]], axis=1), device=positions.device)
    shift = torch.as_tensor(shifts[keep], dtype=positions.dtype, device=positions.device)
    vec = positions[idx[:, 1]] - positions[idx[:, 0]] + shift @ cell
    return idx, torch.linalg.vector_norm(vec, dim=1)


def ewald_kvectors(cell: torch.Tensor, k_cutoff: float) -> torch.Tensor:
    """Reciprocal vectors ``k = 2π n · cell⁻ᵀ`` with ``0 < |k| ≤ k_cutoff``, 1/Å.

    Args:
        cell: (3, 3) Å, rows are lattice vectors (differentiable).
        k_cutoff: radius of the sphere, 1/Å.

    Returns:
        (n_k, 3) 1/Å, a function of ``cell`` (the choice of n is not).
    """
    recip = 2.0 * torch.pi * torch.linalg.inv(cell).mT
    n_max = torch.ceil(k_cutoff * torch.linalg.vector_norm(cell.detach(), dim=1) / (2 * torch.pi))
    axes = [torch.arange(-int(m), int(m) + 1, device=cell.device) for m in n_max.tolist()]
    grid = torch.cartesian_prod(*axes).to(cell.dtype)
    with torch.no_grad():
        norms = torch.linalg.vector_norm(grid @ recip.detach(), dim=1)
        keep = (norms <= k_cutoff) & (norms > 0)
    return grid[keep] @ recip


def _calculator(method: CoulombMethod, n_atoms: int, split: EwaldSplit, periodic: tuple):
    """torch-pme calculator for ``method`` (``auto``: Ewald up to MESH_MIN_ATOMS atoms)."""
    import torchpme

    if method == CoulombMethod.AUTO:
        method = CoulombMethod.P3M if n_atoms > MESH_MIN_ATOMS and all(periodic) else "ewald"
    potential = torchpme.CoulombPotential(smearing=split.smearing, prefactor=K_E)
    if method != CoulombMethod.EWALD and not all(periodic):
        raise ValueError(f"Coulomb: {method} needs three periodic directions")
    if method == CoulombMethod.P3M:
        return torchpme.P3MCalculator(
            potential, mesh_spacing=split.mesh_spacing, interpolation_nodes=5
        )
    if method == CoulombMethod.PME:
        return torchpme.PMECalculator(
            potential, mesh_spacing=split.mesh_spacing / 2, interpolation_nodes=4
        )
    return torchpme.EwaldCalculator(potential, lr_wavelength=split.lr_wavelength)


def periodic_coulomb(
    charges: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    *,
    width: float,
    periodic: tuple[bool, bool, bool] = (True, True, True),
    accuracy: float = DEFAULT_ACCURACY,
    method: CoulombMethod | str = CoulombMethod.AUTO,
) -> torch.Tensor:
    """Per-atom energies of a periodic cell through torch-pme, eV.

    Args:
        charges: (n,) e.
        positions: (n, 3) Å.
        cell: (3, 3) Å, lattice vectors as rows.
        width: σ, Å (0 for point charges).
        periodic: which lattice directions are periodic (three, or two for a slab).
        accuracy: ε of :func:`ewald_split`.
        method: ``ewald``, ``p3m``, ``pme`` (the mesh methods need three periodic directions)
            or ``auto``.

    Returns:
        (n,) eV, summing to the energy defined in the module docstring.
    """
    import torchpme

    split = ewald_split(width, accuracy)
    calc = _calculator(CoulombMethod(method), positions.shape[0], split, periodic)
    calc = calc.to(dtype=positions.dtype, device=positions.device)
    if split.cutoff > 0:
        idx, dist = _real_space_pairs(positions, cell, np.asarray(periodic), split.cutoff)
    else:
        idx = torch.zeros((0, 2), dtype=torch.long, device=positions.device)
        dist = positions.new_zeros((0,))
    kvectors = None
    if isinstance(calc, torchpme.EwaldCalculator):
        kvectors = ewald_kvectors(cell, math.pi / split.lr_wavelength)
    q = charges.unsqueeze(1)
    mask = torch.as_tensor(periodic, dtype=torch.bool, device=positions.device)
    pot = calc(q, cell, positions, idx, dist, periodic=mask, kvectors=kvectors)
    return (q * pot).squeeze(1)


def coulomb_energy(
    charges: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor | np.ndarray | tuple[bool, bool, bool],
    *,
    width: float = 1.0,
    accuracy: float = DEFAULT_ACCURACY,
    method: CoulombMethod | str = CoulombMethod.AUTO,
) -> torch.Tensor:
    """Per-atom electrostatic energies of one structure, eV (see the module docstring).

    Args:
        charges: (n,) e.
        positions: (n, 3) Å.
        cell: (3, 3) Å (ignored without periodic directions).
        pbc: (3,) bool.
        width: Gaussian width σ of the charges, Å (0: point charges).
        accuracy: ε of the Ewald rule.
        method: for periodic cells, ``ewald``, ``p3m``, ``pme`` or ``auto`` (P3M above
            :data:`MESH_MIN_ATOMS` atoms).

    Returns:
        (n,) eV; their sum is the energy.

    Raises:
        ValueError: one periodic direction, or a periodic direction with a degenerate cell.
    """
    periodic = tuple(bool(p) for p in np.asarray(pbc.cpu() if torch.is_tensor(pbc) else pbc))
    n_periodic = sum(periodic)
    if n_periodic == 0:
        return direct_coulomb(charges, positions, width)
    if n_periodic == 1:
        raise ValueError(
            f"Coulomb: pbc {list(periodic)} has one periodic direction; "
            "allowed: none (molecules), two (slabs) or three"
        )
    volume = float(torch.linalg.det(cell.detach()).abs())
    if volume < 1e-6:
        raise ValueError(
            f"Coulomb: periodic structure with a degenerate cell (volume {volume:.3g} Å³)"
        )
    return periodic_coulomb(
        charges, positions, cell, width=width, periodic=periodic, accuracy=accuracy, method=method
    )
