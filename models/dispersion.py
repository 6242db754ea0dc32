"""D3(BJ) dispersion through tad-dftd3, for molecules and periodic cells, in eV and Å.

The DFT-D3 model (Grimme, Antony, Ehrlich & Krieg, J. Chem. Phys. 132, 154104, 2010) with
Becke–Johnson rational damping (Grimme, Ehrlich & Goerigk, J. Comput. Chem. 32, 1456, 2011)::

    E = −½ Σ_i Σ_{(j, n) ≠ (i, 0)} Σ_{k=6,8} s_k C_k^{ij} / (r^k + (a1 R0_ij + a2)^k),
    C8_ij = 3 C6_ij Q_i Q_j,   R0_ij = √(C8_ij / C6_ij)
    (Q_i: the element's tabulated ⟨r⁴⟩/⟨r²⟩ factor),

with C6 interpolated between reference systems by the atoms' fractional coordination numbers
(counting function with k1 = 16). Only the two-body term is included, as the ``dftd3`` package
(simple-dftd3) computes it for a named method; the three-body (ATM) term is not.

tad-dftd3 supplies the reference C6 table, covalent radii, ⟨r⁴⟩/⟨r²⟩, the reference weights, the
damping function and the functional parameters (s-dftd3's data base,
:func:`tad_dftd3.param.get_functional_params`); its ``dftd3`` entry point handles single
molecules only, so the sums over atom pairs and periodic images are done here, on a neighbour
list (matscipy) within the same real-space cutoffs as s-dftd3: 40 Bohr for coordination numbers,
60 Bohr for the two-body energy. The energy is differentiable in positions and cell (forces,
stress by autograd), evaluated in float64, and is a fixed physical term: a member with ``d3``
learns the rest of the energy around it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ase import units as ase_units

log = logging.getLogger(__name__)

BOHR = float(ase_units.Bohr)
"""Å per Bohr (ASE's CODATA 2014 value, the one ``dftd3.ase.DFTD3`` converts with)."""

HARTREE = float(ase_units.Hartree)
"""eV per Hartree (ASE's CODATA 2014 value, as ``dftd3.ase.DFTD3``)."""

CN_CUTOFF_BOHR = 40.0
DISP2_CUTOFF_BOHR = 60.0
KCN = 16.0

__all__ = ["D3BJ", "d3_energy", "d3_parameters", "known_functional", "shared_d3_energy"]


def d3_parameters(functional: str) -> dict[str, float]:
    """The D3(BJ) damping parameters of ``functional`` (s-dftd3's data base, via tad-dftd3).

    Args:
        functional: a density functional name, case- and hyphen-insensitive (``PBE``,
            ``B3LYP``, ``r2SCAN``, ...).

    Returns:
        ``{"s6", "s8", "a1", "a2"}`` (a2 in Bohr).

    Raises:
        ValueError: the functional is unknown or has no BJ parameters.
    """
    from tad_dftd3.param import get_functional_params

    try:
        params = get_functional_params(functional, damping="bj", dtype=torch.float64)
    except (KeyError, ValueError):
        raise ValueError(
            f"model.d3_functional: {functional!r} has no D3(BJ) parameters in s-dftd3's "
            "data base (e.g. PBE, PBE0, B3LYP, revPBE, r2SCAN, TPSS)"
        ) from None
    return {k: float(params[k]) for k in ("s6", "s8", "a1", "a2")}


def known_functional(functional: str) -> bool:
    """Whether ``functional`` has D3(BJ) parameters (see :func:`d3_parameters`)."""
    try:
        d3_parameters(functional)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4)
def _reference(dtype: torch.dtype, device: str):
    """tad-dftd3's reference C6 table and coordination numbers (loaded once per dtype/device)."""
    from tad_dftd3.reference import Reference

    return Reference(dtype=dtype, device=torch.device(device))


_LISTS: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()
_LISTS_LOCK = threading.Lock()
_LISTS_SIZE = 64


def _neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, ...]:
    """The (i, j, image) list of matscipy within ``cutoff``, kept for the last few geometries:
    the K members of an ensemble evaluate the same positions one after another.
    """
    from matscipy.neighbours import neighbour_list

    key = (positions.tobytes(), cell.tobytes(), pbc.tobytes(), float(cutoff))
    with _LISTS_LOCK:
        hit = _LISTS.get(key)
        if hit is not None:
            _LISTS.move_to_end(key)
            return hit
    out = neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    with _LISTS_LOCK:
        _LISTS[key] = out
        while len(_LISTS) > _LISTS_SIZE:
            _LISTS.popitem(last=False)
    return out


def _pairs(
    positions: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full pair list (i, j, image) within ``cutoff``: indices and distance vectors (in the
    units of ``positions``), differentiable in positions and cell.
    """
    n = positions.shape[0]
    if not pbc.any():
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = i != j
        i, j = i[keep].to(positions.device), j[keep].to(positions.device)
        with torch.no_grad():
            near = torch.linalg.vector_norm(positions[j] - positions[i], dim=1) <= cutoff
        i, j = i[near], j[near]
        return i, j, positions[j] - positions[i]
    ii, jj, shifts = _neighbour_list(
        positions.detach().cpu().double().numpy(),
        cell.detach().cpu().double().numpy(),
        np.asarray(pbc, dtype=bool),
        cutoff,
    )
    i = torch.as_tensor(ii, dtype=torch.long, device=positions.device)
    j = torch.as_tensor(jj, dtype=torch.long, device=positions.device)
    shift = torch.as_tensor(shifts, dtype=positions.dtype, device=positions.device)
    vec = positions[j] - positions[i] + shift @ cell
    return i, j, vec


def d3_energy(
    numbers: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor | np.ndarray | tuple[bool, bool, bool],
    params: Mapping[str, float],
) -> torch.Tensor:
    """Per-atom D3(BJ) two-body dispersion energies of one structure, eV.

    Args:
        numbers: (n,) atomic numbers (≤ 103).
        positions: (n, 3) Å.
        cell: (3, 3) Å, lattice vectors as rows (used along periodic directions).
        pbc: (3,) bool.
        params: ``s6``, ``s8``, ``a1``, ``a2`` (Bohr), e.g. from :func:`d3_parameters`.

    Returns:
        (n,) eV, in the dtype of ``positions`` (computed in float64); differentiable in
        positions and cell.
    """
    from tad_dftd3.data import R4R2
    from tad_dftd3.model import atomic_c6, weight_references
    from tad_mctc.data.radii import COV_D3
    from tad_mctc.ncoord.count import exp_count

    out_dtype = positions.dtype
    pos = positions.double() / BOHR
    lattice = cell.double() / BOHR
    periodic = np.asarray(pbc.cpu() if torch.is_tensor(pbc) else pbc, dtype=bool)
    if positions.shape[0] < 2 and not periodic.any():
        return positions.new_zeros(positions.shape[0])
    numbers = numbers.to(device=positions.device, dtype=torch.long)
    dev = {"dtype": torch.float64, "device": positions.device}
    i, j, vec = _pairs(pos, lattice, periodic, DISP2_CUTOFF_BOHR)
    r = torch.linalg.vector_norm(vec, dim=1)
    # fractional coordination numbers (tad-mctc's D3 counting function and radii)
    rcov = COV_D3(**dev)[numbers]
    near = r <= CN_CUTOFF_BOHR
    count = exp_count(r[near], rcov[i[near]] + rcov[j[near]], KCN)
    cn = torch.zeros(len(numbers), **dev).index_add(0, i[near], count)
    # C6 of every atom pair of the cell, then per listed pair (images share their atom's C6)
    ref = _reference(torch.float64, str(positions.device))
    c6 = atomic_c6(numbers, weight_references(numbers, cn, ref), ref)[i, j]
    r4r2 = R4R2(**dev)[numbers]
    qq = 3.0 * r4r2[i] * r4r2[j]
    r0 = params["a1"] * torch.sqrt(qq) + params["a2"]
    e6 = c6 / (r**6 + r0**6)
    e8 = c6 * qq / (r**8 + r0**8)
    e_pair = -0.5 * (params["s6"] * e6 + params["s8"] * e8)
    energy = torch.zeros(len(numbers), **dev).index_add(0, i, e_pair)
    return (energy * HARTREE).to(out_dtype)


class _Fixed(torch.autograd.Function):
    """A structure's D3 energy with its gradients computed beforehand (a fixed term: the same
    for every member, with no parameters), so that K members share one evaluation.
    """

    @staticmethod
    def forward(
        ctx: Any,
        positions: torch.Tensor,
        cell: torch.Tensor,
        energy: torch.Tensor,
        grad_positions: torch.Tensor,
        grad_cell: torch.Tensor,
    ) -> torch.Tensor:
        """``energy`` (0-dim, eV), remembering dE/dpositions (n, 3) and dE/dcell (3, 3)."""
        ctx.save_for_backward(grad_positions, grad_cell)
        return energy.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The remembered gradients times ``grad``."""
        grad_positions, grad_cell = ctx.saved_tensors
        return grad * grad_positions, grad * grad_cell, None, None, None


_SHARED: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()


def shared_d3_energy(
    numbers: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor | np.ndarray,
    params: Mapping[str, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One structure's D3(BJ) energy, evaluated once per geometry and shared.

    The energy and its gradients with respect to positions and cell are computed on detached
    copies and kept for the last few geometries (the K members of an ensemble evaluate the same
    positions one after another); the returned energy carries those gradients back to
    ``positions`` and ``cell`` (forces and stress by autograd, as :func:`d3_energy`). Second
    derivatives through it are zero: enough for training (the term has no parameters), not
    for Hessians.

    Args:
        numbers: (n,) atomic numbers.
        positions: (n, 3) Å.
        cell: (3, 3) Å.
        pbc: (3,) bool.
        params: damping parameters (:func:`d3_parameters`).

    Returns:
        Per-atom energies (n,) eV (detached) and the total (0-dim, differentiable), float64.
    """
    periodic = np.asarray(pbc.cpu() if torch.is_tensor(pbc) else pbc, dtype=bool)
    pos, lattice = positions.detach().double(), cell.detach().double()
    key = (
        numbers.cpu().numpy().tobytes(),
        pos.cpu().numpy().tobytes(),
        lattice.cpu().numpy().tobytes(),
        periodic.tobytes(),
        tuple(sorted(params.items())),
        str(positions.device),
    )
    with _LISTS_LOCK:
        hit = _SHARED.get(key)
    if hit is None:
        with torch.enable_grad():
            p = pos.clone().requires_grad_(True)
            c = lattice.clone().requires_grad_(True)
            atoms = d3_energy(numbers, p, c, periodic, params)
            total = atoms.sum()
            g_pos, g_cell = torch.autograd.grad(total, [p, c], allow_unused=True)
        g_cell = torch.zeros_like(lattice) if g_cell is None else g_cell
        hit = (atoms.detach(), total.detach(), g_pos, g_cell)
        with _LISTS_LOCK:
            _SHARED[key] = hit
            while len(_SHARED) > _LISTS_SIZE:
                _SHARED.popitem(last=False)
    atoms, total, g_pos, g_cell = hit
    energy = _Fixed.apply(positions.double(), cell.double(), total, g_pos, g_cell)
    return atoms, energy


class D3BJ(torch.nn.Module):
    """D3(BJ) dispersion of a named functional as a module over a batch of structures.

    Holds only the functional's name and parameters (the reference tables are loaded once per
    process, not stored in the model). Each structure is evaluated by
    :func:`shared_d3_energy`: once per geometry, whatever the number of members.

    Args:
        functional: see :func:`d3_parameters`.
    """

    def __init__(self, functional: str = "PBE"):
        super().__init__()
        self.functional = functional
        self.params = d3_parameters(functional)

    def extra_repr(self) -> str:
        """The functional, shown by ``print(model)``."""
        return f"functional={self.functional!r}"

    def forward(
        self,
        numbers: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies, eV, of a batch of structures laid end to end.

        Args:
            numbers: (n_atoms,) atomic numbers.
            positions: (n_atoms, 3) Å.
            cell: (n_struct, 3, 3) Å.
            pbc: (n_struct, 3) bool.
            ptr: (n_struct + 1,) offsets of each structure's atoms.

        Returns:
            Per-atom energies (n_atoms,) (detached, for reporting) and per-structure energies
            (n_struct,) (differentiable), eV, float64.
        """
        atoms, totals = [], []
        for g, (a, b) in enumerate(itertools.pairwise(ptr.tolist())):
            e_atoms, e_total = shared_d3_energy(
                numbers[a:b], positions[a:b], cell[g], pbc[g], self.params
            )
            atoms.append(e_atoms)
            totals.append(e_total)
        dev = {"dtype": torch.float64, "device": positions.device}
        if not totals:
            return torch.zeros(0, **dev), torch.zeros(0, **dev)
        return torch.cat(atoms), torch.stack(totals)
