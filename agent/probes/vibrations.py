"""Vibrations probe: harmonic frequencies of molecules, or Γ-point phonons of the crystal.

Each target (every molecule of the system, else the crystal repeated ``supercell`` times) is
first relaxed by every row (molecules free, the crystal at fixed cell); the Hessian of each
row's own minimum is then built from central finite differences of the forces exactly as
ASE's ``Vibrations`` does (``nfree=2``: H = ½ [(F₋ − F₊)/2δ + transpose]) and diagonalised by
ASE's ``VibrationsData`` (mass-weighted; frequencies in cm⁻¹). The 6 (linear: 5) rigid-body
modes of a molecule, or the 3 acoustic modes of a crystal at Γ, are dropped (the smallest
|ω|); imaginary frequencies are written as negative numbers and counted when below
−``imaginary_cm``. Frequencies are compared sorted (no mode matching): their mean absolute
difference (ML-PEG's phonon ω MAE) and the highest frequency.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.vibrations import VibrationsData

from chemgap.campaigns.spec import ProbeName

from .context import ProbeContext
from .potentials import Potentials
from .relax import relax_rows
from .results import Judge, ProbeResult, pick_candidates

NAME = ProbeName.VIBRATIONS


def applies(ctx: ProbeContext) -> str | None:
    """Why the probe cannot run on the system, or None."""
    s = ctx.system
    return None if s.molecules or s.crystal is not None else "needs molecules or a crystal"


def targets(ctx: ProbeContext) -> list[tuple[str, Atoms, int]]:
    """``(label, structure, rigid modes)`` to vibrate: molecules, else the crystal at Γ."""
    out = []
    for mol in ctx.system.molecules:
        linear = len(mol) == 2 or _is_linear(mol)
        out.append((mol.get_chemical_formula(), mol, 5 if linear else 6))
    if not out and ctx.system.crystal is not None:
        n = ctx.cfg.vibrations.supercell
        cell = ctx.system.crystal * (n, n, n)
        out.append((f"{cell.get_chemical_formula()} Γ", cell, 3))
    return out


def _is_linear(mol: Atoms) -> bool:
    x = mol.positions - mol.positions.mean(axis=0)
    return bool(np.linalg.svd(x, compute_uv=False)[1] < 1e-3)


def displacements(atoms: Atoms, delta: float) -> list[Atoms]:
    """The 6N displaced copies, ordered (atom, axis, −/+) as ASE's ``Vibrations``."""
    out = []
    for i in range(len(atoms)):
        for c in range(3):
            for sign in (-1.0, 1.0):
                a = atoms.copy()
                a.positions[i, c] += sign * delta
                out.append(a)
    return out


def frequencies(atoms: Atoms, forces: np.ndarray, delta: float, rigid: int) -> np.ndarray:
    """Sorted real frequencies (cm⁻¹; imaginary as negative) without the ``rigid`` smallest
    |ω|, from ``forces`` (6N, N, 3) of :func:`displacements`.
    """
    n = len(atoms)
    f = forces.reshape(n, 3, 2, n, 3)
    h = ((f[:, :, 0] - f[:, :, 1]) / (2 * delta)).reshape(3 * n, 3 * n)
    h = 0.5 * (h + h.T)
    w = VibrationsData.from_2d(atoms, h).get_frequencies()
    real = np.where(np.abs(w.imag) > np.abs(w.real), -np.abs(w.imag), w.real)
    keep = np.argsort(np.abs(real))[rigid:]
    return np.sort(real[keep])


def _row_frequencies(
    pot: Potentials, minima: list[Atoms], delta: float, rigid: int
) -> list[np.ndarray]:
    items = [(d, row) for row, m in enumerate(minima) for d in displacements(m, delta)]
    results = pot.evaluate_rows(items)
    n_disp = 6 * len(minima[0])
    out = []
    for row, m in enumerate(minima):
        forces = np.array([r.forces for r in results[row * n_disp : (row + 1) * n_disp]])
        out.append(frequencies(m, forces, delta, rigid))
    return out


def run(ctx: ProbeContext) -> ProbeResult:
    """Per target: frequency MAE, highest frequency and extra imaginary modes per row."""
    cfg = ctx.cfg.vibrations
    pot = ctx.pot
    k, o = pot.k, pot.oracle_row
    result = ProbeResult(name=NAME)
    structures, dis, err = [], [], []
    curves = []
    for label, atoms, rigid in targets(ctx):
        relaxed = relax_rows(pot, atoms, cfg.relax)
        if not relaxed[k].converged or not relaxed[o].converged:
            result.notes.append(f"{label}: model or oracle not relaxed below fmax")
        freqs = _row_frequencies(pot, [r.atoms for r in relaxed], cfg.delta_A, rigid)
        mae = [float(np.abs(w - freqs[o]).mean()) for w in freqs]
        top = [float(w.max()) for w in freqs]
        n_imag = [float((w < -cfg.imaginary_cm).sum()) for w in freqs]
        result.metrics += [
            ctx.metric(
                NAME, "freq_mae", mae, unit="cm⁻¹", label=f"ω MAE {label}", judge=Judge.VALUE
            ),
            ctx.metric(NAME, "freq_max", top, unit="cm⁻¹", label=f"ω max {label}"),
            ctx.metric(
                NAME, "imaginary_modes", n_imag, unit="", label=f"imag. {label}", judge=Judge.SHIFT
            ),
        ]
        curves.append(ctx.curve(label, list(range(len(freqs[o]))), np.array(freqs)))
        structures.append(relaxed[k].atoms)
        dis.append(float(np.array(freqs[:k]).std(axis=0).max()))
        err.append(mae[k])
    result.payload = {
        "kind": "spectra",
        "x_label": "mode",
        "y_label": "ω (cm⁻¹; imaginary < 0)",
        "curves": curves,
    }
    result.candidates = pick_candidates(
        structures,
        dis,
        err,
        probe=NAME,
        n=ctx.cfg.candidates_per_probe,
        failed=result.passed is False,
    )
    result.notes.append(f"central differences, δ = {cfg.delta_A:g} Å")
    return result
