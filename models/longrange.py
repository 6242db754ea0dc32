"""MACE members with long-range terms: learned-charge electrostatics and D3(BJ) dispersion.

:class:`LongRangeMACE` is a ``ScaleShiftMACE`` (Batatia et al., NeurIPS 2022) whose energy gets
one or both of

- ``coulomb``: per-atom charges read out of the member's invariant node features by a small MLP
  (learned charges as in Grisafi & Ceriotti, J. Chem. Phys. 151, 204105, 2019, and Cheng's
  latent Ewald summation, npj Comput. Mater. 11, 80, 2025), shifted equally on every atom so
  that they sum to the structure's total charge (``atoms.info["charge"]``, default 0), smeared
  as Gaussians of width ``charge_width`` and summed with
  :func:`chemgap.models.electrostatics.coulomb_energy` (torch-pme Ewald/P3M for periodic cells,
  a direct sum without periodic images for molecules and clusters);
- ``d3``: D3(BJ) dispersion of a named functional (Grimme et al. 2010, 2011), through
  :mod:`chemgap.models.dispersion` (tad-dftd3), a fixed term the MACE part learns around.

The long-range terms overlap with the short-range MACE part inside its cutoff; that is not an
error (MACE learns the difference) but the terms alone are not the short-range physics.

Forces and stress are minus the gradients of the *total* energy (autograd through the charges,
the node features and the terms), so they are consistent with it, and training on energies,
forces and stress fits the whole member. The call signature and outputs are MACE's (``energy``,
``forces``, ``stress``, ``virials``, ``node_feats``, ...), plus ``charges`` (n_atoms,) e and the
per-structure ``energy_coulomb`` and ``energy_d3`` (eV): everything in chemgap that runs a member
(training with the sparse contraction, :func:`chemgap.models.predict.evaluate_members`, the
explorer's batches, descriptors, transfer) runs this class unchanged. A member without long-range
terms stays a plain ``ScaleShiftMACE``, with no extra work.

Batches need the graph keys mace's ``AtomicData`` provides: ``cell`` (n_struct·3, 3), ``pbc``
(n_struct, 3) and ``total_charge`` (n_struct,) (chemgap's graphs fill it from
``atoms.info["charge"]``); without ``pbc``, a structure with a non-degenerate cell counts as
periodic.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from mace.modules import ScaleShiftMACE
from mace.modules.utils import get_symmetric_displacement

from .dispersion import D3BJ
from .electrostatics import DEFAULT_ACCURACY, coulomb_energy

log = logging.getLogger(__name__)

TERMS = ("coulomb", "d3")

INIT_SCALE = 0.01
"""Factor on the initial weights of the charge readout's last layer (its bias starts at 0)."""

__all__ = ["TERMS", "ChargeReadout", "GaussianCoulomb", "LongRangeMACE", "parse_terms"]


def parse_terms(long_range: str) -> tuple[str, ...]:
    """``"coulomb+d3"`` -> ``("coulomb", "d3")``; ``"none"`` -> ``()``.

    Raises:
        ValueError: an unknown term.
    """
    value = str(long_range)
    if value == "none":
        return ()
    terms = tuple(value.split("+"))
    unknown = [t for t in terms if t not in TERMS]
    if unknown or len(set(terms)) != len(terms):
        raise ValueError(f"model.long_range: {value!r} is not one of none, coulomb, d3, coulomb+d3")
    return terms


def scalar_columns(model: torch.nn.Module) -> torch.Tensor:
    """Column indices of the invariant (0e) channels of a MACE model's ``node_feats``."""
    from e3nn import o3

    cols, offset = [], 0
    for product in model.products:
        for mul, ir in o3.Irreps(product.linear.irreps_out):
            width = mul * ir.dim
            if ir == o3.Irrep("0e"):
                cols.extend(range(offset, offset + width))
            offset += width
    return torch.tensor(cols, dtype=torch.long)


class ChargeReadout(torch.nn.Module):
    """Per-atom charges from invariant node features, constrained to each total charge.

    ``q̃_i = MLP(h_i)`` (Linear, SiLU, Linear on the 0e channels of every layer), then
    ``q_i = q̃_i + (Q − Σ_{j∈s} q̃_j) / n_s`` for the structure s of atom i: the charges sum to
    ``Q`` exactly and are invariant under rotations, translations and permutations.

    The electrostatic energy of a neutral structure is even in the charges (q and −q give the
    same energy and forces), so neutral data alone cannot fix their sign; structures with a
    total charge can. The readout therefore starts near zero charges (last layer scaled by
    :data:`INIT_SCALE`, bias 0), where the charged structures' gradient sets the sign rather
    than the random initialisation (Adam's step does not shrink with the gradient, so training
    still leaves zero quickly).

    Args:
        columns: indices of the invariant channels in ``node_feats``.
        hidden: width of the hidden layer.
    """

    def __init__(self, columns: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("columns", columns.clone(), persistent=False)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(len(columns), hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, 1),
        )
        with torch.no_grad():  # start near zero charges: see the class docstring
            self.mlp[2].weight.mul_(INIT_SCALE)
            self.mlp[2].bias.zero_()

    def forward(
        self, node_feats: torch.Tensor, batch: torch.Tensor, total_charge: torch.Tensor
    ) -> torch.Tensor:
        """Charges, e.

        Args:
            node_feats: (n_atoms, d) MACE node features.
            batch: (n_atoms,) structure index of each atom.
            total_charge: (n_struct,) e.

        Returns:
            (n_atoms,) e, in the dtype of ``node_feats``.
        """
        raw = self.mlp(node_feats.index_select(1, self.columns)).squeeze(-1)
        n_struct = total_charge.shape[0]
        count = torch.bincount(batch, minlength=n_struct).to(raw.dtype)
        sums = raw.new_zeros(n_struct).index_add(0, batch, raw)
        excess = (total_charge.to(raw.dtype) - sums) / count.clamp(min=1)
        return raw + excess[batch]


class GaussianCoulomb(torch.nn.Module):
    """Electrostatic energy of Gaussian charges over a batch of structures (no parameters).

    Args:
        width: Gaussian width σ, Å.
        accuracy: Ewald accuracy target (:func:`chemgap.models.electrostatics.ewald_split`).
    """

    def __init__(self, width: float = 1.0, accuracy: float = DEFAULT_ACCURACY):
        super().__init__()
        self.width = float(width)
        self.accuracy = float(accuracy)

    def extra_repr(self) -> str:
        """Width and accuracy, shown by ``print(model)``."""
        return f"width={self.width} Å, accuracy={self.accuracy:g}"

    def forward(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom energies, eV, computed in float64.

        Args:
            charges: (n_atoms,) e.
            positions: (n_atoms, 3) Å.
            cell: (n_struct, 3, 3) Å.
            pbc: (n_struct, 3) bool.
            ptr: (n_struct + 1,) offsets of each structure's atoms.

        Returns:
            (n_atoms,) eV, float64.
        """
        q, pos, lattice = charges.double(), positions.double(), cell.double()
        bounds = ptr.tolist()
        parts = [
            coulomb_energy(
                q[a:b], pos[a:b], lattice[g], pbc[g], width=self.width, accuracy=self.accuracy
            )
            for g, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
        return torch.cat(parts) if parts else pos.new_zeros(0)


class LongRangeMACE(ScaleShiftMACE):
    """A ``ScaleShiftMACE`` plus long-range terms (see the module docstring).

    Args:
        long_range: ``coulomb``, ``d3`` or ``coulomb+d3``.
        charge_width: Gaussian width of the charges, Å.
        d3_functional: functional whose D3(BJ) parameters ``d3`` uses.
        charge_hidden: hidden width of the charge readout.
        **mace_kwargs: ``ScaleShiftMACE``'s arguments.
    """

    def __init__(
        self,
        *,
        long_range: str,
        charge_width: float = 1.0,
        d3_functional: str = "PBE",
        charge_hidden: int = 16,
        **mace_kwargs: Any,
    ):
        super().__init__(**mace_kwargs)
        terms = parse_terms(long_range)
        if not terms:
            raise ValueError("LongRangeMACE: long_range 'none' is a plain ScaleShiftMACE")
        self.long_range = "+".join(terms)
        self.charge_width = float(charge_width)
        self.d3_functional = str(d3_functional)
        self.charge_readout = None
        self.coulomb = None
        self.dispersion = None
        if "coulomb" in terms:
            self.charge_readout = ChargeReadout(scalar_columns(self), charge_hidden)
            self.coulomb = GaussianCoulomb(charge_width)
        if "d3" in terms:
            self.dispersion = D3BJ(d3_functional)

    @property
    def terms(self) -> tuple[str, ...]:
        """The long-range terms, e.g. ``("coulomb", "d3")``."""
        return parse_terms(self.long_range)

    def _displace(self, data: dict[str, torch.Tensor], n_struct: int) -> torch.Tensor:
        """Strain the positions, shifts and cells of ``data`` (in place) by a symmetric
        displacement (zero, requiring grad) as mace does for stress; returns the displacement.
        """
        displacement = torch.zeros(
            (n_struct, 3, 3), dtype=data["positions"].dtype, device=data["positions"].device
        ).requires_grad_(True)
        positions, shifts, _ = get_symmetric_displacement(
            positions=data["positions"],
            unit_shifts=data["unit_shifts"],
            cell=data["cell"],
            edge_index=data["edge_index"],
            num_graphs=n_struct,
            batch=data["batch"],
            displacement=displacement,
        )
        sym = 0.5 * (displacement + displacement.transpose(-1, -2))
        cell = data["cell"].view(-1, 3, 3)
        data["positions"], data["shifts"] = positions, shifts
        data["cell"] = (cell + cell @ sym).view(-1, 3)
        return displacement

    def _long_range(self, data: dict[str, torch.Tensor], node_feats: torch.Tensor) -> dict:
        """Charges (n_atoms,) e; per-atom long-range energies ``node_lr`` (n_atoms,) eV and the
        per-structure energies of the terms, ``coulomb`` and ``d3`` (n_struct,) eV, float64
        (the structure energies carry the gradients; D3's per-atom values are detached).
        """
        positions, batch, ptr = data["positions"], data["batch"], data["ptr"]
        n_struct = ptr.numel() - 1
        cell = data["cell"].view(-1, 3, 3)
        pbc = data.get("pbc")
        if pbc is None:
            pbc = (torch.linalg.det(cell.detach()).abs() > 1e-6)[:, None].expand(-1, 3)
        pbc = pbc.view(-1, 3)
        zeros = positions.new_zeros(positions.shape[0], dtype=torch.float64)
        out: dict[str, torch.Tensor] = {"node_lr": zeros}
        if self.charge_readout is not None:
            total = data.get("total_charge")
            if total is None:
                total = positions.new_zeros(n_struct)
            charges = self.charge_readout(node_feats, batch, total.view(-1))
            e_coul = self.coulomb(charges, positions, cell, pbc, ptr)
            out["charges"] = charges
            out["node_lr"] = out["node_lr"] + e_coul
            out["coulomb"] = zeros.new_zeros(n_struct).index_add(0, batch, e_coul)
        if self.dispersion is not None:
            numbers = self.atomic_numbers[data["node_attrs"].argmax(dim=1)]
            node_d3, out["d3"] = self.dispersion(numbers, positions, cell, pbc, ptr)
            out["node_lr"] = out["node_lr"] + node_d3
        return out

    def forward(
        self,
        data: dict[str, torch.Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
        compute_displacement: bool = False,
        **_unused: Any,
    ) -> dict[str, torch.Tensor | None]:
        """Energy (n_struct,) eV with the long-range terms; forces (n_atoms, 3) eV/Å, stress
        (n_struct, 3, 3) eV/Å³ (ASE sign, as mace) and virials by autograd of that energy;
        ``charges`` (n_atoms,) e; ``energy_coulomb`` / ``energy_d3`` (n_struct,) eV.

        ``data`` is not modified (a shallow copy is strained for stress). Other mace options
        (Hessians, edge forces, atomic stresses, LAMMPS) are not supported and ignored.
        """
        data = dict(data)
        leaf = data["positions"]
        leaf.requires_grad_(True)
        n_struct = data["ptr"].numel() - 1
        cell0 = data["cell"].view(-1, 3, 3)
        strain = compute_stress or compute_virials or compute_displacement
        displacement = self._displace(data, n_struct) if strain else None
        out = super().forward(data, training=training, compute_force=False)
        lr = self._long_range(data, out["node_feats"])
        energy = out["energy"]
        e_lr = sum((lr[t] for t in ("coulomb", "d3") if t in lr), energy.new_zeros(n_struct))
        total = energy + e_lr.to(energy.dtype)
        result = dict(out)
        result.update(
            energy=total,
            node_energy=out["node_energy"] + lr["node_lr"],
            charges=lr.get("charges"),
            energy_coulomb=lr.get("coulomb"),
            energy_d3=lr.get("d3"),
            displacement=displacement,
            forces=None,
            stress=None,
            virials=None,
        )
        if compute_force or strain:
            result.update(_gradients(total, leaf, displacement, cell0, training, compute_stress))
        return result


def _gradients(
    energy: torch.Tensor,
    positions: torch.Tensor,
    displacement: torch.Tensor | None,
    cell: torch.Tensor,
    training: bool,
    compute_stress: bool,
) -> dict[str, torch.Tensor | None]:
    """Forces −dE/dx, virials −dE/dε and stress (1/V) dE/dε (zero for a degenerate cell)."""
    inputs = [positions] if displacement is None else [positions, displacement]
    grads = torch.autograd.grad(
        [energy.sum()],
        inputs,
        retain_graph=training,
        create_graph=training,
        allow_unused=True,
    )
    d_pos = grads[0] if grads[0] is not None else torch.zeros_like(positions)
    out: dict[str, torch.Tensor | None] = {"forces": -d_pos}
    if displacement is not None:
        d_eps = grads[1] if grads[1] is not None else torch.zeros_like(displacement)
        out["virials"] = -d_eps
        if compute_stress:
            volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            out["stress"] = torch.where(volume > 0, d_eps / safe, torch.zeros_like(d_eps))
    return out
