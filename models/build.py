"""Build a MACE member (``ScaleShiftMACE``, Batatia et al., NeurIPS 2022) from the spec.

The data-dependent constants follow mace-torch's own training script: per-element reference
energies E0 (:mod:`.e0`: the isolated atoms', least squares or given), the average number of
neighbours within the cutoff, and the scale/shift of the interaction energy (scale: RMS of the
force components, ``rms_forces_scaling``; shift: 0 as in mace-torch's ``MACE`` model, or the
mean per-atom interaction energy with least-squares E0s, as chemgap's members had before E0s
came from isolated atoms).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from ase import Atoms

from .config import E0Method, ModelConfig
from .data import ENERGY_KEY, FORCES_KEY, default_dtype, to_graphs
from .e0 import AtomicEnergies, fit_average

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DataStats:
    """Constants a member is built with.

    Attributes:
        z_table: atomic numbers, ascending (the one-hot order of ``node_attrs``).
        atomic_energies: (n_elements,) eV, reference energy per element.
        avg_num_neighbors: mean neighbours within ``r_max``.
        shift: eV/atom, mean interaction energy per atom.
        scale: eV/Å, RMS of force components (1 when the data carry no forces).
    """

    z_table: list[int]
    atomic_energies: list[float]
    avg_num_neighbors: float
    shift: float
    scale: float

    def to_dict(self) -> dict:
        """A JSON-ready dict of the constants."""
        return asdict(self)


def compute_stats(
    structures: Sequence[Atoms],
    z_table: Sequence[int],
    r_max: float,
    e0: AtomicEnergies | None = None,
) -> DataStats:
    """E0s, average neighbour count and scale/shift from labelled ``structures``.

    Args:
        structures: the training structures (labelled).
        z_table: the model's atomic numbers.
        r_max: cutoff, Å.
        e0: the reference energies (default: least squares on ``structures``). With any but
            least-squares E0s the shift is 0, so that an atom without neighbours has exactly
            its E0 (mace-torch's ``MACE`` model).
    """
    if not structures:
        raise ValueError("training data: no labelled structures to compute statistics from")
    z_table = sorted(int(z) for z in z_table)
    average = e0 is None or e0.method == E0Method.AVERAGE
    values = e0.for_table(z_table) if e0 is not None else fit_average(structures, z_table)
    graphs = to_graphs(structures, z_table, r_max, "float64", labels=False)
    n_edges = sum(int(g.edge_index.shape[1]) for g in graphs)
    n_atoms = sum(len(a) for a in structures)
    avg_nn = max(n_edges / max(n_atoms, 1), 1.0)
    zidx = {z: i for i, z in enumerate(z_table)}
    inter = [
        (float(a.info[ENERGY_KEY]) - sum(values[zidx[int(z)]] for z in a.numbers)) / len(a)
        for a in structures
    ]
    forces = [np.ravel(a.arrays[FORCES_KEY]) for a in structures if FORCES_KEY in a.arrays]
    rms = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 0.0
    return DataStats(
        z_table=list(z_table),
        atomic_energies=[float(x) for x in values],
        avg_num_neighbors=float(avg_nn),
        shift=float(np.mean(inter)) if average else 0.0,
        scale=rms if rms > 1e-8 else 1.0,
    )


def build_model(cfg: ModelConfig, stats: DataStats, *, seed: int | None = None) -> torch.nn.Module:
    """A fresh ``ScaleShiftMACE`` with ``cfg``'s architecture and ``stats``'s constants; with
    ``cfg.long_range`` other than ``none``, a :class:`chemgap.models.longrange.LongRangeMACE`
    (the same MACE part plus the long-range terms).

    Weights are drawn from torch's RNG seeded with ``seed`` (when given), in ``cfg.dtype``.
    The first interaction block has no residual connection unless ``cfg.residual_first``
    (mace-torch's ``MACE`` model): with no neighbours its message, and so every later layer's
    features and readouts, vanish, and a lone atom's energy is its E0 plus the shift.

    e3nn's TorchScript code generation is switched off (``jit_script_fx=False``, process-wide):
    the scripted fx graphs cost ~1 s per block to build and re-specialise for every new batch
    shape, which made loading 2x and evaluating batches of changing size ~4x slower here; the
    plain fx modules compute the same numbers.
    """
    # mace first: its import sets the torch.load default that e3nn's import relies on
    from mace.modules import ScaleShiftMACE, interaction_classes  # noqa: I001
    import e3nn
    from e3nn import o3

    e3nn.set_optimization_defaults(jit_script_fx=False)

    if seed is not None:
        torch.manual_seed(seed)
    ch, L = cfg.num_channels, cfg.max_L
    parity = ["e", "o"]
    hidden = o3.Irreps("+".join(f"{ch}x{ell}{parity[ell % 2]}" for ell in range(L + 1)))
    kwargs = dict(
        r_max=float(cfg.r_max),
        num_bessel=cfg.num_bessel,
        num_polynomial_cutoff=cfg.num_polynomial_cutoff,
        max_ell=cfg.max_ell,
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes[
            "RealAgnosticResidualInteractionBlock"
            if cfg.residual_first
            else "RealAgnosticInteractionBlock"
        ],
        num_interactions=cfg.num_interactions,
        num_elements=len(stats.z_table),
        hidden_irreps=hidden,
        MLP_irreps=o3.Irreps(f"{cfg.mlp_channels}x0e"),
        atomic_energies=np.asarray(stats.atomic_energies, dtype=float),
        avg_num_neighbors=float(stats.avg_num_neighbors),
        atomic_numbers=list(stats.z_table),
        correlation=cfg.correlation,
        gate=torch.nn.functional.silu,
        radial_MLP=list(cfg.radial_mlp),
        atomic_inter_scale=float(stats.scale),
        atomic_inter_shift=float(stats.shift),
    )
    with default_dtype(cfg.dtype):
        if cfg.terms:  # weights drawn after MACE's: the same seed gives the same MACE part
            from .longrange import LongRangeMACE

            model = LongRangeMACE(
                long_range=str(cfg.long_range),
                charge_width=cfg.charge_width_A,
                d3_functional=cfg.d3_functional,
                charge_hidden=cfg.mlp_channels,
                **kwargs,
            )
        else:
            model = ScaleShiftMACE(**kwargs)
    return model.to(dtype=torch.float64 if cfg.dtype == "float64" else torch.float32)


_TEMPLATES: dict[str, bytes] = {}  # architecture key -> a pickled member built in this process


def build_for_loading(cfg: ModelConfig, stats: DataStats) -> torch.nn.Module:
    """A member with ``cfg``'s architecture and ``stats``'s constants, for a state dict to be
    loaded into (its own weights are arbitrary).

    Building costs ~1.3 s (Clebsch–Gordan tensors, e3nn modules); unpickling a member built
    earlier in this process costs ~0.15 s, so the first build per architecture is kept as bytes
    and copied after that. E0s and scale/shift are in the state dict; the average neighbour
    count is a plain attribute of the interaction blocks, so it is set here.
    """
    import io

    key = cfg.model_dump_json() + repr(list(stats.z_table))
    blob = _TEMPLATES.get(key)
    if blob is None:
        model = build_model(cfg, stats)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        _TEMPLATES[key] = buffer.getvalue()
        return model
    model = torch.load(io.BytesIO(blob), weights_only=False)  # bytes this process wrote
    for module in model.modules():
        if hasattr(module, "avg_num_neighbors"):
            module.avg_num_neighbors = float(stats.avg_num_neighbors)
    return model


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a member's parameters."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
