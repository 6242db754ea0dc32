"""Isolated atoms for reference energies E0, in each oracle's convention for spin.

MACE's reference energies are the isolated atoms' energies (``IsolatedAtom`` frames of
mace-torch; :mod:`chemgap.models.e0`). An isolated atom here is one atom at the centre of a
non-periodic 20 Å box, neutral, in its ground-state spin:

- xTB (tblite) and PySCF: the multiplicity 2S+1 of the atom's ground term (NIST Atomic Spectra
  Database ground levels; Hund's rules for the main groups), passed as the ``multiplicity``
  parameter, with ``charge`` 0 whatever the oracle's own setting;
- any other calculator: the same number of unpaired electrons as the atom's initial magnetic
  moment (ASE's convention, which spin-polarised ASE calculators read); EMT, Stillinger–Weber
  and Tersoff have no spin and ignore it.
"""

from __future__ import annotations

from ase import Atoms
from ase.data import atomic_numbers

from chemgap.oracle.config import OracleConfig, OracleName

__all__ = ["BOX_A", "GROUND_STATE_UNPAIRED", "isolated_atom", "isolated_atom_config"]

BOX_A = 20.0
"""Side of the non-periodic box around an isolated atom, Å (as the dimer probe's)."""

# Unpaired electrons (2S) of the neutral atom's ground term, H to Rn (NIST ASD ground levels:
# e.g. C 3P, N 4S, O 3P, Cr 7S, Fe 5D, Ni 3F, Cu 2S, Nb 6D, Pd 1S, Ce 1G, Gd 9D, W 5D, Pt 3D).
_UNPAIRED = (  # one digit per element, Z = 1, 2, ...
    "1010123210"  # H-Ne
    "10123210"  # Na-Ar
    "101236543210123210"  # K-Kr
    "101256543010123210"  # Rb-Xe
    "10103456785432101"  # Cs-Lu
    "234543210123210"  # Hf-Rn
)
GROUND_STATE_UNPAIRED: dict[str, int] = {
    symbol: int(_UNPAIRED[z - 1])
    for symbol, z in atomic_numbers.items()
    if 1 <= z <= len(_UNPAIRED) and symbol != "X"
}
"""Element symbol -> unpaired electrons of the neutral atom's ground state (H to Rn)."""


def isolated_atom(symbol: str) -> Atoms:
    """One neutral ``symbol`` atom centred in a non-periodic box, its ground-state unpaired
    electrons as its initial magnetic moment, tagged as mace-torch's ``IsolatedAtom`` frame.

    Raises:
        ValueError: an element beyond Rn (no ground state tabulated here).
    """
    if symbol not in GROUND_STATE_UNPAIRED:
        raise ValueError(f"no ground-state spin tabulated for {symbol!r} (H to Rn only)")
    c = BOX_A / 2
    atoms = Atoms(symbol, positions=[[c, c, c]], cell=[BOX_A] * 3, pbc=False)
    atoms.set_initial_magnetic_moments([float(GROUND_STATE_UNPAIRED[symbol])])
    atoms.info["config_type"] = "IsolatedAtom"
    return atoms


def isolated_atom_config(config: OracleConfig, symbol: str) -> OracleConfig:
    """``config`` for ``symbol``'s isolated atom: neutral, in the ground-state multiplicity
    (xtb and pyscf, whose spin is a parameter); other backends unchanged.
    """
    if OracleName(config.name) not in (OracleName.XTB, OracleName.PYSCF):
        return config
    params = {
        **config.params,
        "charge": 0,
        "multiplicity": GROUND_STATE_UNPAIRED[symbol] + 1,
    }
    return config.model_copy(update={"params": params})
