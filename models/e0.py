"""Reference energies E0 per element: the isolated atoms', least squares, or given values.

A MACE member's energy is ``Σ_i E0(Z_i) + E_interaction``. Which E0 decides what the model
extrapolates to (mace-torch's ``--E0s``; its documentation advises isolated-atom energies):

- ``isolated``: the reference calculation of each element's isolated atom, so an atom without
  neighbours has exactly its free-atom energy (with mace-torch's ``MACE`` model: no shift of the
  interaction energy and no residual connection in the first interaction block, see
  :func:`chemgap.models.build.build_model`) and the interaction energy is a binding energy.
  The energies come from ``IsolatedAtom`` frames of the data (mace-torch's convention: one
  atom, ``info['config_type'] == 'IsolatedAtom'``, ``REF_energy``; such frames are never
  trained on) or from the oracle, which the caller asks (``models`` does not import
  ``oracle``);
- ``average``: least squares of the training energies on element counts (mace-torch's
  ``average``): with data of one environment, E0 is that environment's energy per atom;
- ``{element: eV}``: values given by the user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from chemgap.common.keys import ENERGY_KEY, OK, STATUS_KEY

from .config import E0Method
from .io import member_stem, read_json

CONFIG_TYPE_KEY = "config_type"
"""``atoms.info`` key of mace-torch's configuration type."""
ISOLATED_ATOM = "IsolatedAtom"
"""The configuration type of an isolated-atom frame (mace-torch's)."""

__all__ = [
    "CONFIG_TYPE_KEY",
    "ISOLATED_ATOM",
    "AtomicEnergies",
    "fit_average",
    "is_isolated_atom",
    "resolve_atomic_energies",
    "saved_atomic_energies",
    "split_isolated_atoms",
]


@dataclass(kw_only=True)
class AtomicEnergies:
    """The E0s a model is built with, and where they come from (recorded in ensemble.json).

    Attributes:
        method: ``isolated``, ``average`` or ``given``.
        values: element symbol -> E0, eV.
        sources: element symbol -> where its value comes from (``oracle emt``,
            ``IsolatedAtom frame``, ``least squares``, ``model.e0``).
        note: why the method differs from the one asked for, when it does.
    """

    method: str
    values: dict[str, float]
    sources: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def for_table(self, z_table: Sequence[int]) -> list[float]:
        """(n_elements,) eV in the order of ``z_table``."""
        return [float(self.values[chemical_symbols[int(z)]]) for z in z_table]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def is_isolated_atom(atoms: Atoms) -> bool:
    """Whether ``atoms`` is an isolated-atom frame (one atom, config_type IsolatedAtom)."""
    return len(atoms) == 1 and atoms.info.get(CONFIG_TYPE_KEY) == ISOLATED_ATOM


def split_isolated_atoms(structures: Sequence[Atoms]) -> tuple[list[Atoms], dict[str, float]]:
    """The structures without isolated-atom frames, and the frames' energies per element (eV).

    As mace-torch's ``load_from_xyz``: the frames leave the training data whatever the E0
    choice; a frame without an energy or with a failed label gives nothing.
    """
    rest, energies = [], {}
    for atoms in structures:
        if not is_isolated_atom(atoms):
            rest.append(atoms)
            continue
        energy = atoms.info.get(ENERGY_KEY)
        if energy is not None and atoms.info.get(STATUS_KEY, OK) == OK:
            energies[atoms.get_chemical_symbols()[0]] = float(energy)
    return rest, energies


def fit_average(structures: Sequence[Atoms], z_table: Sequence[int]) -> np.ndarray:
    """Least-squares E0 per element: min ‖counts · E0 − E_ref‖² (eV); shape (n_elements,).

    An element no structure holds gets 0 (the minimum-norm solution).
    """
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in z_table] for a in structures])
    energies = np.array([float(a.info[ENERGY_KEY]) for a in structures])
    e0, *_ = np.linalg.lstsq(counts.astype(float), energies, rcond=None)
    return e0


def resolve_atomic_energies(
    choice: str | Mapping[str, float],
    data: Sequence[Atoms],
    z_table: Sequence[int],
    *,
    frames: Mapping[str, float] | None = None,
    isolated: Mapping[str, float] | None = None,
    isolated_source: str = "oracle",
) -> AtomicEnergies:
    """The E0 of every element of ``z_table`` by ``choice`` (``model.e0``).

    Args:
        choice: ``isolated``, ``average`` or a mapping element -> eV.
        data: the training structures (``average`` fits on them).
        z_table: the model's atomic numbers.
        frames: isolated-atom energies from ``IsolatedAtom`` frames of the data (they win).
        isolated: isolated-atom energies the caller computed (with the oracle).
        isolated_source: what ``isolated`` came from, for the record (``oracle emt``).

    Raises:
        ValueError: a mapping without some element, or ``isolated`` with an element that
            neither the frames nor ``isolated`` give.
    """
    symbols = [chemical_symbols[int(z)] for z in z_table]
    if isinstance(choice, Mapping):
        missing = [s for s in symbols if s not in choice]
        if missing:
            raise ValueError(
                f"model.e0: no value for {', '.join(missing)} (give one for every element of "
                f"the model: {', '.join(symbols)})"
            )
        return AtomicEnergies(
            method="given",
            values={s: float(choice[s]) for s in symbols},
            sources=dict.fromkeys(symbols, "model.e0"),
        )
    if choice == E0Method.AVERAGE:
        e0 = fit_average(data, z_table)
        return AtomicEnergies(
            method=str(E0Method.AVERAGE),
            values={s: float(v) for s, v in zip(symbols, e0, strict=True)},
            sources=dict.fromkeys(symbols, f"least squares over {len(data)} structures"),
        )
    values, sources = {}, {}
    for s in symbols:
        if frames and s in frames:
            values[s], sources[s] = float(frames[s]), f"{ISOLATED_ATOM} frame"
        elif isolated and s in isolated:
            values[s], sources[s] = float(isolated[s]), isolated_source
    missing = [s for s in symbols if s not in values]
    if missing:
        raise ValueError(
            f"model.e0: 'isolated' needs the isolated-atom energy of {', '.join(missing)}: "
            f"give {ISOLATED_ATOM} frames in the data (one atom, config_type={ISOLATED_ATOM}), "
            "an oracle to compute them, or choose model.e0=average"
        )
    return AtomicEnergies(method=str(E0Method.ISOLATED), values=values, sources=sources)


def saved_atomic_energies(model_dir: str | Path) -> dict[str, float]:
    """Element -> E0 (eV) of a saved model directory's first member (every member of an
    ensemble shares them): a model trained later "like this one" (a split study, a remediation
    arm) takes them as its ``model.e0``.
    """
    stats = read_json(Path(model_dir) / f"{member_stem(0)}.json")["stats"]
    return {
        chemical_symbols[int(z)]: float(e)
        for z, e in zip(stats["z_table"], stats["atomic_energies"], strict=True)
    }
