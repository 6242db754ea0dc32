"""Kohn-Sham DFT (or Hartree-Fock) for small molecules through PySCF, as an ASE calculator.

PySCF: Sun et al., "Recent developments in the PySCF program package",
J. Chem. Phys. 153, 024109 (2020). Analytic nuclear gradients without grid response.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, InputError, all_changes
from ase.units import Bohr, Hartree

from chemgap.oracle.results import SCFNotConverged


class PySCFCalculator(Calculator):
    """Restricted (closed-shell) or unrestricted KS-DFT energy (eV) and forces (eV/Å).

    Parameters: ``xc`` (a libxc/PySCF functional name, or ``"HF"``), ``basis`` (e.g.
    ``"def2-SVP"``, ``"sto-3g"``), ``charge`` (e), ``multiplicity`` (2S+1), ``max_cycle``,
    ``conv_tol`` (Hartree), ``grid_level`` (0-9), ``level_shift`` (Hartree).
    Molecules only: a structure with any periodic direction is an input error.
    """

    implemented_properties = ("energy", "free_energy", "forces")
    default_parameters: dict[str, Any] = {  # noqa: RUF012 - ASE's class-attribute convention
        "xc": "PBE",
        "basis": "def2-SVP",
        "charge": 0,
        "multiplicity": 1,
        "max_cycle": 100,
        "conv_tol": 1e-9,
        "grid_level": 3,
        "level_shift": 0.0,
    }

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Kohn-Sham energy and forces (ASE ``Calculator`` interface)."""
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto, scf

        if self.atoms.pbc.any():
            raise InputError("the pyscf oracle labels molecules only (pbc must be all False)")
        p = self.parameters
        mol = gto.M(
            atom=[
                (s, tuple(x))
                for s, x in zip(
                    self.atoms.get_chemical_symbols(), self.atoms.positions, strict=True
                )
            ],
            unit="Angstrom",
            basis=p["basis"],
            charge=int(p["charge"]),
            spin=int(p["multiplicity"]) - 1,
            verbose=0,
        )
        closed = mol.spin == 0
        if str(p["xc"]).upper() == "HF":
            mf = scf.RHF(mol) if closed else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if closed else dft.UKS(mol)
            mf.xc = p["xc"]
            mf.grids.level = int(p["grid_level"])
        mf.max_cycle = int(p["max_cycle"])
        mf.conv_tol = float(p["conv_tol"])
        mf.level_shift = float(p["level_shift"])
        energy = mf.kernel()
        if not mf.converged:
            raise SCFNotConverged(f"PySCF SCF not converged in {mf.max_cycle} cycles")
        gradient = np.asarray(mf.nuc_grad_method().kernel())  # Hartree/Bohr
        self.results = {
            "energy": float(energy) * Hartree,
            "free_energy": float(energy) * Hartree,
            "forces": -gradient * Hartree / Bohr,
        }
