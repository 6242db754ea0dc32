"""Reference calculators: one factory, ``make_calculator(config)``, and each backend's cost model.

Every backend is a real ASE calculator:

- ``emt``: ASE's effective-medium theory (Jacobsen, Stoltze & Nørskov, Surf. Sci. 366, 394 (1996)).
- ``sw``: Stillinger-Weber through matscipy's ``Manybody`` — Si from Stillinger & Weber,
  Phys. Rev. B 31, 5262 (1985); Ge from Ding & Andersen, Phys. Rev. B 34, 6987 (1986).
- ``tersoff``: Tersoff/Brenner bond-order potentials through matscipy (default Si/C from
  Tersoff, Phys. Rev. B 39, 5566 (1989)).
- ``xtb``: GFN2-xTB (Bannwarth, Ehlert & Grimme, JCTC 15, 1652 (2019)) and GFN1-xTB (Grimme,
  Bannwarth & Shushkov, JCTC 13, 1989 (2017)) through tblite.
- ``pyscf``: Kohn-Sham DFT for molecules (Sun et al., J. Chem. Phys. 153, 024109 (2020)).
- ``ase``: any ASE calculator by import path (``module:Class``) — executes code named by the spec.
- ``d3``: DFT-D3 with Becke-Johnson damping (Grimme, Ehrlich & Goerigk, J. Comput. Chem. 32,
  1456 (2011)) through dftd3, added to any backend but xtb.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

from ase import Atoms
from ase.calculators.calculator import BaseCalculator, Calculator, all_changes

from chemgap.oracle.config import (
    DEFAULT_TERSOFF_PARAMETERS,
    OracleConfig,
    OracleName,
)
from chemgap.oracle.results import UnsupportedElement

log = logging.getLogger(__name__)

# Ding & Andersen, Phys. Rev. B 34, 6987 (1986): SW's functional form with ε = 1.93 eV,
# σ = 2.181 Å and λ = 31 for amorphous Ge; in matscipy's parameter layout.
Ding_Andersen_PRB_34_6987_Ge = {
    "__ref__": "K. Ding and H. C. Andersen, Phys. Rev. B 34, 6987 (1986)",
    "el": "Ge",
    "epsilon": 1.93,
    "sigma": 2.181,
    "costheta0": 0.333333333333,
    "A": 7.049556277,
    "B": 0.6022245584,
    "p": 4,
    "a": 1.80,
    "lambda1": 31.0,
    "gamma": 1.20,
}


class StillingerWeberCalculator(Calculator):
    """Stillinger-Weber for single-element Si or Ge structures (matscipy ``Manybody``).

    matscipy's SW applies its one parameter set to every atom whatever its species, so this
    wrapper picks the set by the structure's element and refuses mixed or other elements
    (there are no Si-Ge cross parameters here). Energy eV, forces eV/Å, stress eV/Å³.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._by_element: dict[str, Calculator] = {}

    def _for(self, symbol: str) -> Calculator:
        if symbol not in self._by_element:
            from matscipy.calculators.manybody import Manybody
            from matscipy.calculators.manybody.explicit_forms import StillingerWeber
            from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
                Stillinger_Weber_PRB_31_5262_Si,
            )

            params = {"Si": Stillinger_Weber_PRB_31_5262_Si, "Ge": Ding_Andersen_PRB_34_6987_Ge}
            self._by_element[symbol] = Manybody(**StillingerWeber(params[symbol]))
        return self._by_element[symbol]

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Evaluate each element's own calculator (ASE ``Calculator`` interface)."""
        super().calculate(atoms, properties, system_changes)
        symbols = set(self.atoms.get_chemical_symbols())
        if len(symbols) != 1 or not symbols <= {"Si", "Ge"}:
            raise UnsupportedElement(
                f"sw labels single-element Si or Ge structures (got {', '.join(sorted(symbols))})"
            )
        inner = self._for(symbols.pop())
        props = [p for p in properties if p in self.implemented_properties]
        inner.calculate(self.atoms, props, all_changes)
        self.results = {k: v for k, v in inner.results.items() if k in self.implemented_properties}
        self.results.setdefault("free_energy", self.results["energy"])


def _import_calculator(spec: str, python_path: list[str]) -> type:
    for directory in reversed(python_path):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    module_name, _, class_name = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {class_name!r}") from None


def _d3_method(config: OracleConfig) -> str:
    if config.d3_method:
        return config.d3_method
    if config.name == OracleName.PYSCF:
        return str(config.params.get("xc", "PBE"))
    return "PBE"


def make_calculator(config: OracleConfig) -> BaseCalculator:
    """Build the ASE calculator ``config`` names (plus D3(BJ) when ``config.d3``).

    Heavy backends are imported inside their branch. Raises ``ValueError`` for a configuration
    the backend rejects and ``ImportError`` when a backend's package is missing.
    """
    params = dict(config.params)
    match OracleName(config.name):
        case OracleName.EMT:
            from ase.calculators.emt import EMT

            calc: BaseCalculator = EMT(**params)
        case OracleName.SW:
            calc = StillingerWeberCalculator()
        case OracleName.TERSOFF:
            from matscipy.calculators.manybody import Manybody
            from matscipy.calculators.manybody.explicit_forms import TersoffBrenner, tersoff_brenner

            name = params.get("parameters", DEFAULT_TERSOFF_PARAMETERS)
            calc = Manybody(**TersoffBrenner(getattr(tersoff_brenner, name)))
        case OracleName.XTB:
            from tblite.ase import TBLite

            calc = TBLite(**{"method": "GFN2-xTB", **params, "verbosity": 0})
        case OracleName.PYSCF:
            try:
                import pyscf  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "oracle 'pyscf' needs PySCF: install the 'dft' extra (pip install chemgap[dft])"
                ) from exc
            from chemgap.oracle.pyscf_calculator import PySCFCalculator

            calc = PySCFCalculator(**params)
        case OracleName.ASE:
            cls = _import_calculator(params["calculator"], params.get("python_path", []))
            calc = cls(**params.get("kwargs", {}))
            if not isinstance(calc, BaseCalculator):
                raise ValueError(f"{params['calculator']} did not build an ASE calculator")
        case _:  # pragma: no cover - OracleName is exhaustive
            raise ValueError(f"unknown oracle {config.name!r}")
    if config.d3:
        from ase.calculators.mixing import SumCalculator
        from dftd3.ase import DFTD3

        calc = SumCalculator([calc, DFTD3(method=_d3_method(config), damping="d3bj")])
    return calc


def check_backend(config: OracleConfig) -> None:
    """Build ``config``'s calculator once (no calculation), turning any failure into ValueError.

    Call before submitting a batch so a misspelt import path or a missing package is one clear
    error rather than a batch of ``crashed`` labels.
    """
    try:
        make_calculator(config)
    except Exception as exc:
        raise ValueError(
            f"oracle {config.name!r} could not be built: {type(exc).__name__}: {exc}"
        ) from exc


def soften(config: OracleConfig, attempt: int) -> OracleConfig | None:
    """Settings for SCF retry ``attempt`` (1, 2, ...), or None when the backend has no knob.

    xtb: electronic temperature raised to at least 1000 K, then 3000 K, 6000 K (Fermi smearing
    eases convergence of near-degenerate states; the label is then the Mermin free energy), with
    twice the iterations each time and a halved Broyden damping. pyscf: twice the cycles each
    time and a level shift of 0.25 Hartree, then 0.5.
    """
    params = dict(config.params)
    match OracleName(config.name):
        case OracleName.XTB:
            ladder = (1000.0, 3000.0, 6000.0)
            temperature = float(params.get("electronic_temperature", 300.0))
            params["electronic_temperature"] = max(temperature, ladder[min(attempt, 3) - 1])
            params["max_iterations"] = int(params.get("max_iterations", 250)) * 2**attempt
            params["mixer_damping"] = float(params.get("mixer_damping", 0.4)) / 2**attempt
        case OracleName.PYSCF:
            params["max_cycle"] = int(params.get("max_cycle", 100)) * 2**attempt
            params["level_shift"] = max(float(params.get("level_shift", 0.0)), 0.25 * attempt)
        case _:
            return None
    return config.model_copy(update={"params": params})


@dataclass(frozen=True)
class CostModel:
    """Estimated seconds of one oracle call: ``overhead_s + prefactor_s * n_atoms**exponent``.

    Rough single-core figures (API-NOTES.md measurements); the selector uses them to weigh
    structures by oracle cost, so ratios matter more than absolute values.
    """

    overhead_s: float
    prefactor_s: float
    exponent: float

    def __call__(self, n_atoms: int) -> float:
        """Seconds for a structure of ``n_atoms`` atoms."""
        return self.overhead_s + self.prefactor_s * float(n_atoms) ** self.exponent


def cost_model(config: OracleConfig) -> CostModel:
    """The cost model of ``config``'s backend (seconds as a function of atom count)."""
    match OracleName(config.name):
        case OracleName.EMT:
            model = CostModel(2e-4, 3.5e-4, 1.0)  # Cu 108 atoms ~ 40 ms
        case OracleName.SW | OracleName.TERSOFF:
            model = CostModel(2e-3, 3.5e-4, 1.0)  # Si 216 atoms ~ 70 ms
        case OracleName.XTB:
            model = CostModel(2e-3, 2.7e-5, 3.0)  # periodic Si 64 atoms (GFN1) ~ 7 s
        case OracleName.PYSCF:
            model = CostModel(0.3, 0.03, 3.0)  # PBE/def2-SVP water ~ 1 s
        case _:
            model = CostModel(1.0, 1e-3, 3.0)  # unknown external code: assume DFT-like
    if config.d3:
        model = CostModel(model.overhead_s + 2e-3, model.prefactor_s, model.exponent)
    return model
