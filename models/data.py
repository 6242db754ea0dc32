"""From labelled ``ase.Atoms`` to MACE graphs: label checks, element tables, batches, data hashes.

Labels live under the keys of :mod:`chemgap.common.keys` (MACE's ``REF_`` convention); a
structure whose label status is anything but ``'ok'`` is not used for training.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers as ASE_Z
from ase.data import chemical_symbols

from chemgap.common.keys import ENERGY_KEY, FORCES_KEY, STRESS_KEY, has_labels

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

CHARGE_KEY = "charge"
"""``atoms.info`` key of a structure's total charge, e (absent: neutral); graphs carry it as
``total_charge``, which members with learned charges are constrained to."""


@contextlib.contextmanager
def default_dtype(dtype: str | torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default dtype (mace builds its tensors in it)."""
    want = TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(want)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def is_labelled(atoms: Atoms, *, need_forces: bool = True) -> bool:
    """True when ``atoms`` carries usable labels (status ok, energy and forces present)."""
    return has_labels(atoms, need_forces=need_forces)


def usable(structures: Sequence[Atoms]) -> list[Atoms]:
    """The labelled structures with ``label_status == 'ok'``; logs how many were skipped."""
    out = [a for a in structures if is_labelled(a)]
    if len(out) < len(structures):
        log.info("skipping %d unlabelled or failed structures", len(structures) - len(out))
    return out


def element_list(structures: Sequence[Atoms]) -> list[str]:
    """Chemical symbols present in ``structures``, ordered by atomic number."""
    zs = sorted({int(z) for a in structures for z in a.numbers})
    return [chemical_symbols[z] for z in zs]


def symbols_to_z(elements: Sequence[str]) -> list[int]:
    """Atomic numbers of ``elements``; an unknown symbol is a ``ValueError``."""
    out = []
    for el in elements:
        if el not in ASE_Z:
            raise ValueError(f"element: {el!r} is not a chemical symbol")
        out.append(ASE_Z[el])
    return sorted(out)


def data_hash(structures: Sequence[Atoms]) -> str:
    """SHA-256 over numbers, positions, cell, pbc and labels (stable across runs)."""
    h = hashlib.sha256()
    for a in structures:
        h.update(np.ascontiguousarray(a.numbers, dtype=np.int64).tobytes())
        h.update(np.round(np.asarray(a.positions, dtype=np.float64), 8).tobytes())
        h.update(np.round(np.asarray(a.cell[:], dtype=np.float64), 8).tobytes())
        h.update(np.asarray(a.pbc, dtype=np.int8).tobytes())
        e = a.info.get(ENERGY_KEY)
        h.update(repr(None if e is None else round(float(e), 8)).encode())
        if FORCES_KEY in a.arrays:
            h.update(np.round(np.asarray(a.arrays[FORCES_KEY], dtype=np.float64), 8).tobytes())
    return h.hexdigest()


def _key_spec(use_stress: bool):
    from mace.data import KeySpecification

    info = {"energy": ENERGY_KEY, "total_charge": CHARGE_KEY}
    if use_stress:
        info["stress"] = STRESS_KEY
    return KeySpecification(info_keys=info, arrays_keys={"forces": FORCES_KEY})


def to_graphs(
    structures: Sequence[Atoms],
    z_table: Sequence[int],
    r_max: float,
    dtype: str = "float32",
    *,
    labels: bool = True,
) -> list:
    """One ``mace.data.AtomicData`` graph per structure (neighbour list within ``r_max``, Å).

    With ``labels`` the REF_* targets are attached (stress only on periodic cells that carry
    one; structures without it get stress weight 0). Without, the graphs carry positions only.
    Either way a graph's ``total_charge`` is ``atoms.info["charge"]`` (0 when absent).
    """
    from mace.data import AtomicData, config_from_atoms
    from mace.tools import AtomicNumberTable

    table = AtomicNumberTable([int(z) for z in z_table])
    known = set(table.zs)
    graphs = []
    with default_dtype(dtype):
        for i, atoms in enumerate(structures):
            extra = set(int(z) for z in atoms.numbers) - known
            if extra:
                names = ", ".join(chemical_symbols[z] for z in sorted(extra))
                allowed = ", ".join(chemical_symbols[z] for z in table.zs)
                raise ValueError(
                    f"structure {i}: element(s) {names} not in the model's elements ({allowed})"
                )
            a = atoms.copy()
            a.calc = None
            use_stress = labels and a.info.get(STRESS_KEY) is not None and all(a.pbc)
            if not labels:
                for key in (ENERGY_KEY, STRESS_KEY):
                    a.info.pop(key, None)
                a.arrays.pop(FORCES_KEY, None)
            config = config_from_atoms(a, key_specification=_key_spec(use_stress))
            graph = AtomicData.from_config(config, z_table=table, cutoff=float(r_max))
            # mace defaults a missing stress's weight to 1: only real labels count
            graph.stress_weight = torch.tensor(1.0 if use_stress else 0.0)
            graphs.append(graph)
    return graphs


@dataclass(kw_only=True)
class Batch:
    """A batch of structures as one disjoint MACE graph, ready for every member.

    Attributes:
        data: mace's batch dict (positions (n_atoms, 3) Å, edge_index (2, n_edges), shifts, cell
            (n_struct*3, 3) Å, node_attrs one-hot (n_atoms, n_elements), batch, ptr, ...).
        system_idx: (n_atoms,) int64, the structure each atom belongs to.
        n_atoms: (n_struct,) int64, atoms per structure.
        numbers: (n_atoms,) int64, atomic numbers.
    """

    data: dict[str, torch.Tensor]
    system_idx: np.ndarray
    n_atoms: np.ndarray
    numbers: np.ndarray

    @property
    def n_struct(self) -> int:
        """Number of structures in the batch."""
        return len(self.n_atoms)


def make_batch(
    structures: Sequence[Atoms],
    z_table: Sequence[int],
    r_max: float,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    *,
    labels: bool = False,
) -> Batch:
    """Build one batched graph of ``structures`` (the unit every member evaluates)."""
    from mace.tools.torch_geometric.batch import Batch as PygBatch

    if not structures:
        raise ValueError("structures: got an empty list, expected at least one structure")
    graphs = to_graphs(structures, z_table, r_max, dtype, labels=labels)
    pyg = PygBatch.from_data_list(graphs).to(device)
    n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
    return Batch(
        data=pyg.to_dict(),
        system_idx=np.repeat(np.arange(len(structures)), n_atoms),
        n_atoms=n_atoms,
        numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
    )


def bootstrap(structures: Sequence[Atoms], rng: np.random.Generator) -> list[Atoms]:
    """A bootstrap resample (with replacement, same size) for bagging (Breiman 1996)."""
    idx = rng.integers(0, len(structures), size=len(structures))
    return [structures[i] for i in idx]


def split_valid(
    structures: Sequence[Atoms], fraction: float, rng: np.random.Generator
) -> tuple[list[Atoms], list[Atoms]]:
    """Random train/validation split; the validation part has at least one structure."""
    n = len(structures)
    if n < 2:
        raise ValueError(f"training data: got {n} labelled structure(s), need at least 2")
    n_valid = min(n - 1, max(1, round(fraction * n)))
    perm = rng.permutation(n)
    valid = [structures[i] for i in perm[:n_valid]]
    train = [structures[i] for i in perm[n_valid:]]
    return train, valid


def labels_from_calculator(atoms: Atoms) -> Atoms:
    """Move results of an attached (single-point) calculator into the REF_* keys.

    extxyz files with plain ``energy``/``forces``/``stress`` columns come back from
    ``ase.io.read`` with a ``SinglePointCalculator``; chemgap stores labels under REF_* keys.
    Existing REF_* labels win. Returns ``atoms`` (modified in place, calculator detached).
    """
    calc = atoms.calc
    if calc is not None:
        res = getattr(calc, "results", {}) or {}
        if ENERGY_KEY not in atoms.info and res.get("energy") is not None:
            atoms.info[ENERGY_KEY] = float(res["energy"])
        if FORCES_KEY not in atoms.arrays and res.get("forces") is not None:
            atoms.arrays[FORCES_KEY] = np.asarray(res["forces"], dtype=float)
        if STRESS_KEY not in atoms.info and res.get("stress") is not None:
            stress = np.asarray(res["stress"], dtype=float)
            if stress.shape == (3, 3):
                from ase.stress import full_3x3_to_voigt_6_stress

                stress = full_3x3_to_voigt_6_stress(stress)
            atoms.info[STRESS_KEY] = stress
        atoms.calc = None
    return atoms
