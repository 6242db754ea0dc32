"""Calculators that fail on purpose, loaded by the ``ase`` oracle backend in tests.

Not a test module (it defines no tests): the tests point ``params.calculator`` at
``test_oracle_helpers:ProgrammableCalculator`` with ``params.python_path = [tests dir]``, so the
real import path of the ``ase`` backend is exercised, in-process, in the oracle child process and
in Ray workers.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.calculators.emt import EMT

HERE = str(Path(__file__).resolve().parent)
SPEC = "test_oracle_helpers:ProgrammableCalculator"


class ProgrammableCalculator(Calculator):
    """EMT, unless told to misbehave.

    The behaviour is ``atoms.info['behaviour']`` or else the ``behaviour`` keyword: ``ok``,
    ``raise`` (RuntimeError), ``scf`` (an SCF non-convergence), ``sleep`` (60 s), ``slow`` (EMT
    after ``delay`` seconds: a stand-in for an expensive oracle), ``segfault``
    (SIGSEGV to its own process) or ``nan`` (a NaN energy). With ``marker``, every call appends a
    line ``n_atoms structure_key`` to that file as it starts, so a test can count calls across
    processes, and a kill, and tell which structures they were for.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(
        self, behaviour: str = "ok", marker: str | None = None, delay: float = 0.5, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.behaviour = behaviour
        self.delay = delay
        self.marker = marker
        self._emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.marker:
            from chemgap.agent.store import structure_key

            with open(self.marker, "a") as fh:
                fh.write(f"{len(self.atoms)} {structure_key(self.atoms)}\n")
        behaviour = self.atoms.info.get("behaviour", self.behaviour)
        match behaviour:
            case "raise":
                raise RuntimeError("deliberate failure")
            case "scf":
                raise CalculationFailed("SCF not converged in 5 cycles")
            case "sleep":
                time.sleep(60)
            case "slow":
                time.sleep(self.delay)
            case "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
        self._emt.calculate(self.atoms, properties, all_changes)
        self.results = dict(self._emt.results)
        if behaviour == "nan":
            self.results["energy"] = float(np.nan)
