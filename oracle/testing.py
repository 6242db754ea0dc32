"""Tools for testing oracles and what depends on them: the contract every oracle must pass, and
an oracle that fails on purpose.

:class:`FaultyCalculator` wraps a real backend (EMT by default) and, at a set rate, fails the
way reference codes fail in production: an exception, an SCF that does not converge, a hang
past the time limit, NaN/inf results, the process dying, or the Ray worker dying. It also
keeps an append-only journal of its calls, outside any chemgap database, so a test can count
what was asked of the oracle across processes and kills.

:func:`check_oracle_contract` evaluates a calculator on a structure and checks that

- forces equal minus the central finite-difference gradient of the energy;
- the energy is invariant under rigid rotation, translation and atom permutation, and the forces
  rotate and permute with the atoms;
- for cells periodic in all three directions, the stress equals the finite-strain derivative
  ``σ_ij = (1/V) ∂E/∂ε_ij`` (ASE's sign convention: positive under tension).

A violation raises ``AssertionError`` naming the check and the size of the deviation.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, Calculator, all_changes

from chemgap.common.keys import structure_key
from chemgap.oracle import sandbox
from chemgap.oracle.results import SCFNotConverged

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(kw_only=True)
class ContractReport:
    """Largest deviations found, in the units of each quantity.

    Attributes:
        force_fd_error: max |F + dE/dx| over checked components, eV/Å.
        rotation_energy_error, translation_energy_error, permutation_energy_error: eV.
        rotation_force_error, permutation_force_error: max component error, eV/Å.
        stress_fd_error: max |σ - (1/V) dE/dε| over Voigt components, eV/Å³ (None if not periodic).
    """

    force_fd_error: float
    rotation_energy_error: float
    rotation_force_error: float
    translation_energy_error: float
    permutation_energy_error: float
    permutation_force_error: float
    stress_fd_error: float | None


def _energy_forces(calc: BaseCalculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    work = atoms.copy()
    if hasattr(calc, "reset"):
        calc.reset()
    work.calc = calc
    return float(work.get_potential_energy()), np.array(work.get_forces())


def _energy(calc: BaseCalculator, atoms: Atoms) -> float:
    work = atoms.copy()
    if hasattr(calc, "reset"):
        calc.reset()
    work.calc = calc
    return float(work.get_potential_energy())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _fail(what: str, error: float, tolerance: float) -> None:
    if not error <= tolerance:  # also catches NaN
        raise AssertionError(f"{what}: deviation {error:.3g} exceeds tolerance {tolerance:.3g}")


def check_oracle_contract(
    calc: BaseCalculator,
    atoms: Atoms,
    *,
    rng: np.random.Generator,
    fd_step: float = 1e-3,
    max_fd_components: int = 12,
    force_tol: float = 1e-3,
    energy_tol: float = 1e-6,
    stress_step: float = 1e-4,
    stress_tol: float = 1e-5,
    stress_rtol: float = 0.0,
    check_stress: bool | None = None,
) -> ContractReport:
    """Check ``calc`` on ``atoms`` against the contract; raise ``AssertionError`` on a violation.

    Args:
        calc: the calculator under test (reused for every evaluation).
        atoms: a small structure, ideally rattled off symmetry so forces are non-zero.
        rng: seeded generator choosing components, the rotation, shift and permutation.
        fd_step: displacement of the central finite difference, Å.
        max_fd_components: at most this many Cartesian components are differentiated.
        force_tol: tolerance on forces, eV/Å (finite differences and equivariance).
        energy_tol: tolerance on invariance of the energy, eV (scaled by atom count).
        stress_step: strain of the central finite difference (dimensionless).
        stress_tol: tolerance on stress, eV/Å³ ...
        stress_rtol: ... plus this fraction of the largest stress component (for backends with
            cutoff-smoothing noise, such as D3's coordination numbers).
        check_stress: check stress (default: when the cell is periodic in all three directions).
    """
    energy, forces = _energy_forces(calc, atoms)
    n = len(atoms)
    if not np.isfinite(energy) or forces.shape != (n, 3):
        raise AssertionError(f"bad reference evaluation: energy {energy}, forces {forces.shape}")

    # Forces: F = -dE/dx by central differences.
    flat = rng.permutation(3 * n)[:max_fd_components]
    fd_error = 0.0
    for k in flat:
        i, c = divmod(int(k), 3)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, c] += fd_step
        minus.positions[i, c] -= fd_step
        numeric = -(_energy(calc, plus) - _energy(calc, minus)) / (2 * fd_step)
        fd_error = max(fd_error, abs(numeric - forces[i, c]))
    _fail("forces vs -dE/dx (finite differences)", fd_error, force_tol)

    energy_scale = energy_tol * max(1, n)
    # Rotation: energy invariant, forces rotate (cell rotates with a periodic structure).
    rotation = _random_rotation(rng)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.cell.rank > 0:
        rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    e_rot, f_rot = _energy_forces(calc, rotated)
    rot_e = abs(e_rot - energy)
    rot_f = float(np.max(np.abs(f_rot - forces @ rotation.T)))
    _fail("energy under rotation", rot_e, energy_scale)
    _fail("forces under rotation", rot_f, force_tol)

    # Translation: energy invariant.
    shifted = atoms.copy()
    shifted.positions += rng.normal(scale=1.0, size=3)
    trans_e = abs(_energy(calc, shifted) - energy)
    _fail("energy under translation", trans_e, energy_scale)

    # Permutation: energy invariant, forces permute with the atoms.
    order = rng.permutation(n)
    e_perm, f_perm = _energy_forces(calc, atoms[order])
    perm_e = abs(e_perm - energy)
    perm_f = float(np.max(np.abs(f_perm - forces[order])))
    _fail("energy under permutation", perm_e, energy_scale)
    _fail("forces under permutation", perm_f, force_tol)

    stress_error = None
    if check_stress if check_stress is not None else bool(atoms.pbc.all()):
        work = atoms.copy()
        if hasattr(calc, "reset"):
            calc.reset()
        work.calc = calc
        stress = np.array(work.get_stress(voigt=True))
        volume = atoms.get_volume()
        numeric = np.zeros(6)
        for v, (a, b) in enumerate(VOIGT):
            values = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * stress_step / (1 if a == b else 2)
                strain[b, a] += 0.0 if a == b else sign * stress_step / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                values.append(_energy(calc, strained))
            numeric[v] = (values[0] - values[1]) / (2 * stress_step) / volume
        stress_error = float(np.max(np.abs(numeric - stress)))
        tolerance = stress_tol + stress_rtol * float(np.max(np.abs(stress)))
        _fail("stress vs (1/V) dE/dstrain (finite strain)", stress_error, tolerance)

    return ContractReport(
        force_fd_error=fd_error,
        rotation_energy_error=rot_e,
        rotation_force_error=rot_f,
        translation_energy_error=trans_e,
        permutation_energy_error=perm_e,
        permutation_force_error=perm_f,
        stress_fd_error=stress_error,
    )


# --------------------------------------------------------------------------- fault injection
FAULTS = ("raise", "scf", "hang", "nan", "inf", "crash", "worker")
"""What :class:`FaultyCalculator` can do instead of answering, and the category each becomes:
``raise`` a RuntimeError (``crashed``); ``scf`` an SCF non-convergence (``scf_not_converged``);
``hang`` sleep past any time limit (``timeout``); ``nan`` a NaN energy and ``inf`` infinite
forces (``non_finite_result``); ``crash`` SIGKILL to its own process (``crashed``: the oracle
process died); ``worker`` SIGKILL to the Ray worker running the labelling task (Ray retries the
task; ``crashed`` when every retry dies too).
"""


FAULT_CATEGORY = {
    None: "ok",
    "raise": "crashed",
    "scf": "scf_not_converged",
    "hang": "timeout",
    "nan": "non_finite_result",
    "inf": "non_finite_result",
    "crash": "crashed",
    "worker": "crashed",  # every try of the labelling task died with its worker
}
"""The ``label_status`` each fault (None: none) ends as in a campaign's data.db."""


def fault_draw(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by a structure key and a seed (the same in every
    process, so a structure's fate does not depend on where or when it is labelled).
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class FaultyCalculator(Calculator):
    """A real calculator that fails on purpose for a set fraction of structures.

    Which structures fail, and how, is drawn from each structure's key
    (:func:`chemgap.common.keys.structure_key`) and ``seed``: a structure draws
    ``u = fault_draw(key, seed)``; it fails when ``u < rate``, with fault
    ``faults[int(u / rate * len(faults))]``. The same structure meets the same fault in every
    process and on every retry (unless ``once``).

    Load it as an ``ase`` oracle (``calculator: chemgap.oracle.testing:FaultyCalculator``, run
    with ``--trust-code``). ``hang``, ``crash`` and ``worker`` need the killable oracle child
    process labelling uses inside Ray tasks; called in the caller's own process they raise
    instead (``TimeoutError``, ``RuntimeError``) rather than hang or kill it.

    Args:
        rate: fraction of structures that fail, in [0, 1].
        faults: the faults to draw from (see :data:`FAULTS`).
        seed: seed of the draw.
        inner: ``emt`` (ASE's EMT) or ``module:Class`` of the real calculator to wrap.
        journal: append ``start KEY N_ATOMS PID WHERE`` before and ``end KEY OUTCOME`` after
            every call to this file (one write per line, so lines from several processes
            interleave whole); WHERE is ``child`` in labelling's oracle process, ``direct``
            when called in-process (a probe's reference curve, say).
        hang_s: how long ``hang`` sleeps, s.
        delay_s: seconds every call takes before answering (a stand-in for an expensive code).
        once: fail each structure at most once: a fault is recorded as a file in this
            directory and the next call for that structure answers (transient faults).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(
        self,
        rate: float = 0.2,
        faults: tuple[str, ...] | list[str] = FAULTS,
        seed: int = 0,
        inner: str = "emt",
        journal: str | None = None,
        hang_s: float = 3600.0,
        delay_s: float = 0.0,
        once: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown or not 0.0 <= rate <= 1.0:
            raise ValueError(f"faults must be among {FAULTS} and 0 <= rate <= 1")
        self.rate, self.faults, self.seed = float(rate), tuple(faults), int(seed)
        self.journal, self.hang_s, self.delay_s = journal, float(hang_s), float(delay_s)
        self.once = Path(once) if once else None
        self._inner = _inner_calculator(inner)

    def fault_for(self, key: str) -> str | None:
        """The fault structure ``key`` meets (None: it is answered)."""
        u = fault_draw(key, self.seed)
        if not self.faults or u >= self.rate:
            return None
        fault = self.faults[min(int(u / self.rate * len(self.faults)), len(self.faults) - 1)]
        if self.once is not None:
            mark = self.once / f"{key}.{fault}"
            if mark.exists():
                return None
            self.once.mkdir(parents=True, exist_ok=True)
            mark.touch()
        return fault

    def _log(self, line: str) -> None:
        if self.journal:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Answer like the inner calculator, or fail as drawn (ASE ``Calculator`` interface)."""
        super().calculate(atoms, properties, system_changes)
        key = structure_key(self.atoms)
        where = "child" if sandbox.IN_ORACLE_CHILD else "direct"
        self._log(f"start {key} {len(self.atoms)} {os.getpid()} {where}")
        fault = self.fault_for(key)
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            self._inject(fault)
            self._inner.calculate(self.atoms, properties, all_changes)
            self.results = dict(self._inner.results)
            self.results.setdefault("free_energy", self.results["energy"])
            if fault == "nan":
                self.results["energy"] = float("nan")
            elif fault == "inf":
                self.results["forces"] = np.full((len(self.atoms), 3), np.inf)
        finally:
            self._log(f"end {key} {fault or 'ok'}")

    def _inject(self, fault: str | None) -> None:
        isolated = sandbox.IN_ORACLE_CHILD
        match fault:
            case "raise":
                raise RuntimeError("injected fault: the reference code stopped with an error")
            case "scf":
                raise SCFNotConverged("injected fault: SCF not converged in 100 cycles")
            case "hang" if isolated:
                time.sleep(self.hang_s)
            case "hang":
                raise TimeoutError("injected fault: hang (raised, not slept, in-process)")
            case "crash" if isolated:
                os.kill(os.getpid(), signal.SIGKILL)
            case "worker" if isolated and os.environ.get("RAY_RAYLET_PID"):
                os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker that started this child
                time.sleep(60)  # this child dies with its parent (PR_SET_PDEATHSIG)
            case "crash" | "worker":
                raise RuntimeError(f"injected fault: {fault} (raised, not killed, in-process)")


def _inner_calculator(inner: str) -> BaseCalculator:
    if inner == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    import importlib

    module, _, name = inner.partition(":")
    return getattr(importlib.import_module(module), name)()
