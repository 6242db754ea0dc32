"""Ensemble predictions: every member on one batched graph, mean and spread per structure/atom.

The spread of a deep ensemble (Lakshminarayanan et al., NeurIPS 2017) is the uncertainty; the
largest per-atom force deviation of a structure is DP-GEN's ``max_devi_f`` (Zhang et al.,
Comput. Phys. Commun. 253, 107206, 2020): max_i sqrt(mean_k |F_i^k − <F_i>|²).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from .contraction import sparse_contractions
from .data import Batch


@dataclass(kw_only=True)
class MemberOutputs:
    """Raw outputs of K members on one batch (torch tensors on the batch's device).

    Attributes:
        energy: (K, n_struct) eV, total energies.
        forces: (K, n_atoms, 3) eV/Å.
        stress: (K, n_struct, 3, 3) eV/Å³ (ASE sign) or None when not asked for.
        node_feats: list of K (n_atoms, d) invariant node features, or None when not asked for.
        charges: (K, n_atoms) e, the members' learned charges, or None for members without a
            ``coulomb`` term (:mod:`chemgap.models.longrange`).
    """

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None = None
    node_feats: list[torch.Tensor] | None = None
    charges: torch.Tensor | None = None


def scalar_feature_index(model: torch.nn.Module) -> torch.Tensor:
    """Column indices of the invariant (0e) channels in ``model``'s concatenated ``node_feats``."""
    import mace  # noqa: F401  (sets torch.load defaults e3nn's import needs)
    from e3nn import o3

    cols, offset = [], 0
    for product in model.products:
        irreps = o3.Irreps(product.linear.irreps_out)
        for mul, ir in irreps:
            width = mul * ir.dim
            if ir == o3.Irrep("0e"):
                cols.extend(range(offset, offset + width))
            offset += width
    return torch.tensor(cols, dtype=torch.long)


def _member_threads(models: Sequence[torch.nn.Module], batch: Batch) -> int:
    """Python threads to run members on: one per torch thread on CPU (2+ members), else 1."""
    if len(models) < 2 or batch.data["positions"].device.type != "cpu":
        return 1
    return min(len(models), torch.get_num_threads())


# (pid, threads) -> pool; keyed by pid so that a forked child makes its own
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _one_torch_thread() -> None:
    torch.set_num_threads(1)
    torch.zeros(1 << 16).add_(1.0)  # a parallel op: fixes this thread's count while it is 1


def member_pool(n_threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``n_threads`` threads, each with one torch (OpenMP) thread.

    Left at the default, every pool thread keeps an OpenMP team of its own and the caller's
    later torch work runs several times slower. ``torch.set_num_threads`` also sets the count
    that threads created later start with, so all pool threads are started at once (a barrier)
    and the caller's count is put back afterwards.
    """
    key = (os.getpid(), n_threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            caller = torch.get_num_threads()
            pool = ThreadPoolExecutor(n_threads, "chemgap-member", initializer=_one_torch_thread)
            barrier = threading.Barrier(n_threads)
            list(pool.map(lambda _: barrier.wait(), range(n_threads)))
            torch.set_num_threads(caller)
            _POOLS[key] = pool
    return pool


def evaluate_members(
    models: Sequence[torch.nn.Module],
    batch: Batch,
    *,
    compute_stress: bool = False,
    node_features: bool = False,
) -> MemberOutputs:
    """Run each member on the same batched graph; forces by autograd of the energy.

    The batch dict is shallow-copied per member (mace's stress path rewrites positions and
    shifts in the dict it is given). The symmetric contractions run as sparse polynomials
    (:mod:`chemgap.models.contraction`; same numbers, less work). On CPU with more than one
    torch thread, members run concurrently on that many Python threads of one torch thread
    each: much of a small graph's time is per-operation overhead that one member cannot spread
    over the cores, and torch releases the GIL inside its kernels and the backward pass (see
    :func:`member_pool`). Outputs are detached. Members with learned charges
    (:class:`chemgap.models.longrange.LongRangeMACE`) also return them; a plain MACE member's
    output has none, and nothing is done for them.
    """

    def run(model: torch.nn.Module) -> tuple[torch.Tensor | None, ...]:
        data = dict(batch.data)
        data["positions"] = batch.data["positions"].detach().clone()
        out = model(data, training=False, compute_force=True, compute_stress=compute_stress)
        stress = out["stress"].detach() if compute_stress else None
        feats = None
        if node_features:
            idx = scalar_feature_index(model).to(out["node_feats"].device)
            feats = out["node_feats"].detach()[:, idx]
        charges = out.get("charges")
        charges = charges.detach() if charges is not None else None
        return out["energy"].detach(), out["forces"].detach(), stress, feats, charges

    n_threads = _member_threads(models, batch)
    with sparse_contractions(models):
        if n_threads > 1:
            results = list(member_pool(n_threads).map(run, models))
        else:
            results = [run(m) for m in models]
    energies, forces, stresses, feats, charges = zip(*results, strict=True)
    return MemberOutputs(
        energy=torch.stack(energies),
        forces=torch.stack(forces),
        stress=torch.stack(stresses) if compute_stress else None,
        node_feats=list(feats) if node_features else None,
        charges=torch.stack(charges) if all(q is not None for q in charges) else None,
    )


@dataclass(kw_only=True)
class Prediction:
    """Ensemble prediction on a list of structures (all arrays numpy, float64).

    Attributes:
        energy_mean: (n_struct,) eV, mean over members of the total energy.
        energy_std: (n_struct,) eV, std over members (ddof=0) of the total energy.
        forces_mean: (n_atoms_total, 3) eV/Å, atoms of all structures concatenated in order.
        forces_std: (n_atoms_total, 3) eV/Å, per-component std over members.
        force_std_atom: (n_atoms_total,) eV/Å, per-atom std magnitude sqrt(Σ_c var_c).
        max_force_std: (n_struct,) eV/Å, max over a structure's atoms of ``force_std_atom``
            (DP-GEN ``max_devi_f``).
        system_idx: (n_atoms_total,) int, the structure each atom belongs to.
        numbers: (n_atoms_total,) int, atomic numbers.
        energy_members: (K, n_struct) eV; forces_members: (K, n_atoms_total, 3) eV/Å.
        stress_mean / stress_std: (n_struct, 6) eV/Å³ Voigt (ASE sign), or None.
        calibrated: whether the ``*_cal`` fields hold a stored calibration (else they equal raw).
        energy_std_cal: (n_struct,) eV; forces_std_cal: (n_atoms_total, 3) eV/Å;
        force_std_atom_cal: (n_atoms_total,) eV/Å; max_force_std_cal: (n_struct,) eV/Å.
        charges_mean / charges_std: (n_atoms_total,) e, mean and std over members of the learned
            per-atom charges (members with a ``coulomb`` term), or None.
    """

    energy_mean: np.ndarray
    energy_std: np.ndarray
    forces_mean: np.ndarray
    forces_std: np.ndarray
    force_std_atom: np.ndarray
    max_force_std: np.ndarray
    system_idx: np.ndarray
    numbers: np.ndarray
    energy_members: np.ndarray
    forces_members: np.ndarray
    stress_mean: np.ndarray | None = None
    stress_std: np.ndarray | None = None
    calibrated: bool = False
    energy_std_cal: np.ndarray
    forces_std_cal: np.ndarray
    force_std_atom_cal: np.ndarray
    max_force_std_cal: np.ndarray
    charges_mean: np.ndarray | None = None
    charges_std: np.ndarray | None = None

    @property
    def struct_idx(self) -> np.ndarray:
        """Alias of ``system_idx``."""
        return self.system_idx

    @property
    def n_struct(self) -> int:
        """Number of structures predicted."""
        return len(self.energy_mean)

    def per_structure(self, i: int) -> slice:
        """Slice of structure ``i``'s atoms in the per-atom arrays."""
        idx = np.flatnonzero(self.system_idx == i)
        return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)

    def annotate(self, structures: Sequence[Atoms]) -> list[Atoms]:
        """Copies of the predicted ``structures`` with the prediction written on them.

        Per structure (``info``): ``pred_energy``, ``pred_energy_std`` (eV),
        ``pred_max_force_std`` (eV/Å, DP-GEN max_devi_f) and their ``*_cal`` calibrated
        versions, plus ``pred_stress`` / ``pred_stress_std`` (Voigt, eV/Å³) when predicted; per
        atom (``arrays``): ``pred_forces`` (eV/Å), ``pred_force_std`` and ``pred_force_std_cal``,
        plus ``pred_charges`` / ``pred_charges_std`` (e) from members with learned charges.
        """
        if len(structures) != self.n_struct:
            raise ValueError(
                f"annotate: {len(structures)} structures for {self.n_struct} predicted"
            )
        out = []
        for i, atoms in enumerate(structures):
            a = atoms.copy()
            sl = self.per_structure(i)
            a.info["pred_energy"] = float(self.energy_mean[i])
            a.info["pred_energy_std"] = float(self.energy_std[i])
            a.info["pred_energy_std_cal"] = float(self.energy_std_cal[i])
            a.info["pred_max_force_std"] = float(self.max_force_std[i])
            a.info["pred_max_force_std_cal"] = float(self.max_force_std_cal[i])
            a.arrays["pred_forces"] = self.forces_mean[sl]
            a.arrays["pred_force_std"] = self.force_std_atom[sl]
            a.arrays["pred_force_std_cal"] = self.force_std_atom_cal[sl]
            if self.stress_mean is not None:
                a.info["pred_stress"] = self.stress_mean[i]
                a.info["pred_stress_std"] = self.stress_std[i]
            if self.charges_mean is not None:
                a.arrays["pred_charges"] = self.charges_mean[sl]
                a.arrays["pred_charges_std"] = self.charges_std[sl]
            out.append(a)
        return out


def segment_max(values: np.ndarray, system_idx: np.ndarray, n_struct: int) -> np.ndarray:
    """Per-structure maximum of per-atom ``values``; shape (n_struct,)."""
    out = np.full(n_struct, -np.inf)
    np.maximum.at(out, system_idx, values)
    return out


def summarise(
    outputs: MemberOutputs,
    batch: Batch,
    *,
    energy_scale: float = 1.0,
    force_scale_per_atom: np.ndarray | None = None,
    calibrated: bool = False,
) -> Prediction:
    """Means and stds over members, with the calibration scales applied to the ``*_cal`` fields.

    ``force_scale_per_atom``: (n_atoms_total,) multiplicative scale of each atom's force std.
    """
    e = outputs.energy.double().cpu().numpy()
    f = outputs.forces.double().cpu().numpy()
    n = batch.n_struct
    f_std = f.std(axis=0)
    f_atom = np.sqrt((f_std**2).sum(axis=1))
    stress_mean = stress_std = None
    if outputs.stress is not None:
        from ase.stress import full_3x3_to_voigt_6_stress

        s = outputs.stress.double().cpu().numpy()
        voigt = np.stack([[full_3x3_to_voigt_6_stress(x) for x in member] for member in s])
        stress_mean, stress_std = voigt.mean(axis=0), voigt.std(axis=0)
    charges_mean = charges_std = None
    if outputs.charges is not None:
        q = outputs.charges.double().cpu().numpy()
        charges_mean, charges_std = q.mean(axis=0), q.std(axis=0)
    scale = np.ones(len(f_atom)) if force_scale_per_atom is None else force_scale_per_atom
    f_std_cal = f_std * scale[:, None]
    f_atom_cal = f_atom * scale
    return Prediction(
        energy_mean=e.mean(axis=0),
        energy_std=e.std(axis=0),
        forces_mean=f.mean(axis=0),
        forces_std=f_std,
        force_std_atom=f_atom,
        max_force_std=segment_max(f_atom, batch.system_idx, n),
        system_idx=batch.system_idx.copy(),
        numbers=batch.numbers.copy(),
        energy_members=e,
        forces_members=f,
        stress_mean=stress_mean,
        stress_std=stress_std,
        calibrated=calibrated,
        energy_std_cal=e.std(axis=0) * energy_scale,
        forces_std_cal=f_std_cal,
        force_std_atom_cal=f_atom_cal,
        max_force_std_cal=segment_max(f_atom_cal, batch.system_idx, n),
        charges_mean=charges_mean,
        charges_std=charges_std,
    )
