"""Transfer initialisation across chemically similar elements (e.g. Si -> Ge).

A target model with the source's architecture is built for the target elements; every weight is
copied from the source, and the element-indexed tensors of MACE (Batatia et al. 2022) — the
species embedding, the element-dependent skip connections of the interaction blocks, the
per-element weights of the symmetric contractions and the reference energies E0 — are gathered
along their element axis through the element map. The network then starts from the source's
learned chemistry of the mapped element and is fine-tuned on the target data (optionally with
blocks frozen, see :func:`chemgap.models.train.freeze_blocks`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers as ASE_Z
from ase.data import chemical_symbols

from .build import DataStats, build_model
from .config import ModelConfig
from .data import ENERGY_KEY, make_batch

log = logging.getLogger(__name__)

_SYMCON = re.compile(r"^products\.\d+\.symmetric_contractions\.contractions\.\d+\.weights")
_SKIP = re.compile(r"^(interactions\.\d+\.skip_tp)\.weight$")


def parse_element_map(spec: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``"Si=Ge"``, ``"Si->Ge,O=O"`` or ``["Si=Ge"]`` or a dict -> ``{"Si": "Ge", ...}``."""
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
        pairs = []
        for item in items:
            for part in str(item).split(","):
                part = part.strip()
                if not part:
                    continue
                src, sep, dst = part.replace("->", "=").partition("=")
                if not sep:
                    raise ValueError(f"element map: expected SRC=DST (got {part!r})")
                pairs.append((src.strip(), dst.strip()))
    out: dict[str, str] = {}
    for src, dst in pairs:
        for el in (src, dst):
            if el not in ASE_Z:
                raise ValueError(f"element map: {el!r} is not a chemical symbol")
        if src in out and out[src] != dst:
            raise ValueError(f"element map: {src} mapped twice ({out[src]}, {dst})")
        out[src] = dst
    return out


def _source_index(
    source_z: Sequence[int], element_map: Mapping[str, str], target_elements: Sequence[str] | None
) -> tuple[list[int], list[int]]:
    """Target atomic numbers (ascending) and, for each, the index of its source element."""
    src_syms = [chemical_symbols[z] for z in source_z]
    for s in element_map:
        if s not in src_syms:
            raise ValueError(f"element map: source element {s} is not in the model ({src_syms})")
    image: dict[str, str] = {}  # target symbol -> source symbol: the map first, then identity
    for s, t in element_map.items():
        if t in image:
            raise ValueError(f"element map: {image[t]} and {s} both map to {t}")
        image[t] = s
    for s in src_syms:  # a source element keeps its own weights where the map names no other
        image.setdefault(s, s)
    default = list(dict.fromkeys(element_map.get(s, s) for s in src_syms))
    wanted = list(target_elements) if target_elements else default
    missing = [t for t in wanted if t not in image]
    if missing:
        raise ValueError(
            f"element map: target element(s) {missing} have no source; map one of {src_syms}"
        )
    target_z = sorted(ASE_Z[t] for t in wanted)
    idx = [src_syms.index(image[chemical_symbols[z]]) for z in target_z]
    return target_z, idx


def transfer_model(
    source: torch.nn.Module,
    model_cfg: ModelConfig,
    element_map: Mapping[str, str] | str,
    *,
    target_elements: Sequence[str] | None = None,
) -> torch.nn.Module:
    """A model for the target elements initialised from ``source`` through ``element_map``.

    A target element named in the map starts from its source element (``Si=Ge``: Ge from Si,
    also when the source model has an untrained Ge of its own); every other target element
    starts from itself. ``target_elements`` (default: the image of all source elements)
    chooses which end up in the target model.
    """
    if isinstance(element_map, str):
        element_map = parse_element_map(element_map)
    source_z = [int(z) for z in source.atomic_numbers.tolist()]
    target_z, idx = _source_index(source_z, element_map, target_elements)
    e0_src = torch.atleast_2d(source.atomic_energies_fn.atomic_energies).detach().cpu()
    stats = DataStats(
        z_table=target_z,
        atomic_energies=[float(e0_src[0, i]) for i in idx],
        avg_num_neighbors=float(source.interactions[0].avg_num_neighbors),
        shift=float(torch.atleast_1d(source.scale_shift.shift)[0]),
        scale=float(torch.atleast_1d(source.scale_shift.scale)[0]),
    )
    target = build_model(model_cfg, stats, seed=0)
    src_state = source.state_dict()
    tgt_state = target.state_dict()
    index = torch.tensor(idx, dtype=torch.long)
    new_state = {}
    for name, tgt in tgt_state.items():
        if name not in src_state:
            raise ValueError(f"transfer: source model lacks {name}; architectures differ")
        src = src_state[name].detach().cpu()
        if name == "atomic_numbers":
            new = tgt
        elif name == "atomic_energies_fn.atomic_energies":
            new = src.index_select(src.dim() - 1, index)
        elif name == "node_embedding.linear.weight":
            new = src.view(len(source_z), -1).index_select(0, index).reshape(-1)
        elif _SYMCON.match(name) and src.dim() >= 1 and src.shape[0] == len(source_z):
            new = src.index_select(0, index)
        elif m := _SKIP.match(name):
            new = _gather_skip_tp(source.get_submodule(m.group(1)), src, index)
        else:
            new = src
        if new.shape != tgt.shape:
            raise ValueError(
                f"transfer: {name} has shape {tuple(src.shape)} in the source and "
                f"{tuple(tgt.shape)} in the target; check that model settings match the source"
            )
        new_state[name] = new.to(tgt.dtype)
    target.load_state_dict(new_state)
    log.info(
        "transfer: %s -> %s",
        [chemical_symbols[z] for z in source_z],
        [chemical_symbols[z] for z in target_z],
    )
    return target


def _gather_skip_tp(tp: torch.nn.Module, weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather the element axis (second input = one-hot species) of a FullyConnectedTP's weight."""
    chunks, offset = [], 0
    for ins in tp.instructions:
        shape = tuple(ins.path_shape)
        n = int(np.prod(shape))
        w = weight[offset : offset + n].view(shape)
        chunks.append(w.index_select(1, index).reshape(-1))
        offset += n
    if offset != weight.numel():
        raise ValueError("transfer: unexpected skip_tp weight layout")
    return torch.cat(chunks)


def refit_atomic_energies(model: torch.nn.Module, structures: Sequence[Atoms]) -> np.ndarray:
    """Shift E0s so the model's energy residuals on ``structures`` are least-squares zero.

    As mace-torch does for fine-tuning foundation models: solve counts · ΔE0 ≈ E_ref − E_model
    and add ΔE0 (eV per element) to the model's reference energies (forces are unchanged).
    """
    z_table = [int(z) for z in model.atomic_numbers.tolist()]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    r_max = float(model.r_max)
    dev = next(model.parameters()).device
    batch = make_batch(structures, z_table, r_max, dtype, dev)
    out = model(dict(batch.data), training=False, compute_force=False)
    pred = out["energy"].detach().double().cpu().numpy()
    ref = np.array([float(a.info[ENERGY_KEY]) for a in structures])
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in z_table] for a in structures])
    delta, *_ = np.linalg.lstsq(counts.astype(float), ref - pred, rcond=None)
    with torch.no_grad():
        e0 = model.atomic_energies_fn.atomic_energies
        e0 += torch.as_tensor(delta, dtype=e0.dtype, device=e0.device).view_as(e0)
    return delta
