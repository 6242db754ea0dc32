"""The ``oracle`` section of a campaign spec, and the elements each backend supports.

This module is imported by the spec validator, so it stays light: no calculator imports here.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from ase.data import atomic_numbers, chemical_symbols
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class OracleName(StrEnum):
    """Reference-calculator backends."""

    EMT = "emt"
    SW = "sw"
    TERSOFF = "tersoff"
    XTB = "xtb"
    PYSCF = "pyscf"
    ASE = "ase"


# Elements with parameters in each backend (None: any element the calculator accepts).
EMT_ELEMENTS = frozenset({"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"})
SW_ELEMENTS = frozenset({"Si", "Ge"})
# GFN1/GFN2-xTB are parametrised for H-Rn (Z = 1..86).
XTB_ELEMENTS = frozenset(chemical_symbols[1:87])
# DFT-D3(BJ) reference C6 coefficients exist for H-Pu (Z = 1..94).
D3_ELEMENTS = frozenset(chemical_symbols[1:95])
# The def2 basis sets (PySCF's default family) cover H-Rn.
PYSCF_ELEMENTS = frozenset(chemical_symbols[1:87])

# matscipy Tersoff/Brenner parameter sets (``matscipy.calculators.manybody.explicit_forms.
# tersoff_brenner``) that build with matscipy 1.3, and the elements each covers.
TERSOFF_PARAMETER_SETS: dict[str, frozenset[str]] = {
    "Tersoff_PRB_39_5566_Si_C": frozenset({"C", "Si"}),
    "Erhart_PRB_71_035211_Si": frozenset({"Si"}),
    "Erhart_PRB_71_035211_SiC": frozenset({"C", "Si"}),
    "Brenner_PRB_42_9458_C_I": frozenset({"C"}),
    "Brenner_PRB_42_9458_C_II": frozenset({"C"}),
    "Albe_PRB_65_195124_PtC": frozenset({"Pt", "C"}),
    "Henriksson_PRB_79_114107_FeC": frozenset({"Fe", "C"}),
    "Kioseoglou_PSSb_245_1118_AlN": frozenset({"Al", "N"}),
    "Matsunaga_Fisher_Matsubara_Jpn_J_Appl_Phys_39_48_B_C_N": frozenset({"B", "C", "N"}),
}
DEFAULT_TERSOFF_PARAMETERS = "Tersoff_PRB_39_5566_Si_C"

XTB_METHODS = ("GFN2-xTB", "GFN1-xTB")

# Keys each backend accepts in ``params`` (the ``ase`` backend passes ``kwargs`` through).
ALLOWED_PARAMS: dict[OracleName, frozenset[str]] = {
    OracleName.EMT: frozenset({"asap_cutoff"}),
    OracleName.SW: frozenset(),
    OracleName.TERSOFF: frozenset({"parameters"}),
    OracleName.XTB: frozenset(
        {
            "method",
            "charge",
            "multiplicity",
            "accuracy",
            "electronic_temperature",
            "max_iterations",
            "mixer_damping",
            "guess",
        }
    ),
    OracleName.PYSCF: frozenset(
        {
            "xc",
            "basis",
            "charge",
            "multiplicity",
            "max_cycle",
            "conv_tol",
            "grid_level",
            "level_shift",
        }
    ),
    OracleName.ASE: frozenset({"calculator", "kwargs", "python_path"}),
}


def _check_tersoff(params: dict[str, Any]) -> None:
    value = params.get("parameters", DEFAULT_TERSOFF_PARAMETERS)
    if value not in TERSOFF_PARAMETER_SETS:
        raise ValueError(
            f"tersoff parameters {value!r} are not known; choose one of: "
            + ", ".join(TERSOFF_PARAMETER_SETS)
        )


def _check_xtb(params: dict[str, Any]) -> None:
    method = params.get("method", "GFN2-xTB")
    if method not in XTB_METHODS:
        raise ValueError(f"xtb method {method!r} is not known; choose GFN2-xTB or GFN1-xTB")
    _check_number(params, "charge", int)
    _check_number(params, "multiplicity", int, minimum=1)
    _check_number(params, "accuracy", float, minimum=1e-4)
    _check_number(params, "electronic_temperature", float, minimum=0.0)
    _check_number(params, "max_iterations", int, minimum=1)
    _check_number(params, "mixer_damping", float, minimum=1e-3)


def _check_pyscf(params: dict[str, Any]) -> None:
    for key in ("xc", "basis"):
        if key in params and not isinstance(params[key], str):
            raise ValueError(f"pyscf {key} must be a string (got {params[key]!r})")
    _check_number(params, "charge", int)
    _check_number(params, "multiplicity", int, minimum=1)
    _check_number(params, "max_cycle", int, minimum=1)
    _check_number(params, "conv_tol", float, minimum=0.0)
    _check_number(params, "grid_level", int, minimum=0)
    _check_number(params, "level_shift", float, minimum=0.0)


def _check_ase(params: dict[str, Any]) -> None:
    spec = params.get("calculator")
    module, sep, cls = str(spec or "").partition(":")
    if not isinstance(spec, str) or not sep or not module or not cls.isidentifier():
        raise ValueError(
            "oracle 'ase' needs params.calculator as 'module:Class' "
            f"(e.g. 'ase.calculators.emt:EMT'; got {spec!r})"
        )
    if not isinstance(params.get("kwargs", {}), dict):
        raise ValueError("oracle 'ase' params.kwargs must be a mapping of keyword arguments")
    path = params.get("python_path", [])
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise ValueError("oracle 'ase' params.python_path must be a list of directories")


# per-backend checks of ``params`` values (backends without one take no values to check)
_PARAM_CHECKS = {
    OracleName.TERSOFF: _check_tersoff,
    OracleName.XTB: _check_xtb,
    OracleName.PYSCF: _check_pyscf,
    OracleName.ASE: _check_ase,
}


def _check_params(name: OracleName, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first bad key or value of ``params`` for backend ``name``."""
    allowed = ALLOWED_PARAMS[name]
    unknown = sorted(set(params) - allowed)
    if unknown:
        shown = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"oracle {name.value!r} does not take parameter {unknown[0]!r}; it takes: {shown}"
        )
    check = _PARAM_CHECKS.get(name)
    if check is not None:
        check(params)


def _check_number(
    params: dict[str, Any], key: str, kind: type, *, minimum: float | None = None
) -> None:
    if key not in params:
        return
    value = params[key]
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise ValueError(f"parameter {key!r} must be {kind.__name__} (got {value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"parameter {key!r} must be >= {minimum:g} (got {value!r})")


class OracleConfig(BaseModel):
    """Which reference calculator labels structures, and how it is run.

    ``params`` are passed to the backend (e.g. ``method``, ``charge`` for ``xtb``; ``xc``,
    ``basis`` for ``pyscf``; ``calculator``, ``kwargs`` and ``python_path`` for ``ase``); the keys
    each backend accepts are in ``ALLOWED_PARAMS``.

    The ``ase`` backend imports and instantiates the class named by ``params.calculator``: a spec
    that uses it executes code of the spec author's choosing, like any Python script.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    name: OracleName = Field(OracleName.EMT, description="backend name")
    params: dict[str, Any] = Field(default_factory=dict, description="backend keyword arguments")
    d3: bool = Field(False, description="add D3(BJ) dispersion (not for xtb, which has its own)")
    d3_method: str | None = Field(
        None,
        description="functional whose D3(BJ) parameters are used (default: pyscf's xc, else PBE)",
    )
    cpus_per_call: int = Field(1, ge=1, description="CPU threads one oracle call may use")
    timeout_s: float = Field(600.0, gt=0, description="wall-time limit of one call, s")
    max_retries: int = Field(2, ge=0, description="retries of an SCF failure with softer settings")
    min_distance_factor: float = Field(
        0.5, gt=0, lt=1, description="reject geometries with a distance below this x covalent sum"
    )

    @field_validator("params")
    @classmethod
    def _params_plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not all(isinstance(k, str) for k in value):
            raise ValueError("params keys must be strings")
        return value

    @model_validator(mode="after")
    def _d3_not_with_xtb(self) -> OracleConfig:
        if self.d3 and self.name == OracleName.XTB:
            raise ValueError("d3 cannot be added to xtb, which includes its own D3/D4 dispersion")
        _check_params(OracleName(self.name), self.params)
        return self


TRUST_FLAG = "--trust-code"


class UntrustedCode(ValueError):
    """A configuration that would import and run code it names, without the user's consent."""


def require_trust(config: OracleConfig, trusted: bool) -> None:
    """Refuse an ``ase`` oracle unless the user opted in to running the code it names.

    The ``ase`` backend imports ``params.calculator`` (and puts ``params.python_path`` on
    ``sys.path``): a spec naming one runs code of its author's choosing, so, like
    ``trust_remote_code`` elsewhere, it runs only when asked for explicitly (:data:`TRUST_FLAG`).

    Raises:
        UntrustedCode: ``config`` is an ``ase`` oracle and ``trusted`` is False.
    """
    if OracleName(config.name) != OracleName.ASE or trusted:
        return
    named = config.params.get("calculator")
    raise UntrustedCode(
        f"oracle.name: 'ase' imports and runs the calculator the spec names ({named!r}), "
        f"code not shipped with chemgap; pass {TRUST_FLAG} if you trust it"
    )


def supported_elements(config: OracleConfig) -> frozenset[str] | None:
    """Elements ``config``'s backend can label, or None when it cannot be known in advance."""
    match OracleName(config.name):
        case OracleName.EMT:
            elements: frozenset[str] | None = EMT_ELEMENTS
        case OracleName.SW:
            elements = SW_ELEMENTS
        case OracleName.TERSOFF:
            name = config.params.get("parameters", DEFAULT_TERSOFF_PARAMETERS)
            elements = TERSOFF_PARAMETER_SETS.get(name, frozenset())
        case OracleName.XTB:
            elements = XTB_ELEMENTS
        case OracleName.PYSCF:
            elements = PYSCF_ELEMENTS
        case _:
            elements = None
    if config.d3:
        elements = D3_ELEMENTS if elements is None else elements & D3_ELEMENTS
    return elements


def format_elements(elements: Iterable[str]) -> str:
    """``"Ag, Al, Au"`` (alphabetical), or ``"H-Rn (Z = 1-86)"`` for a contiguous run of Z > 12."""
    symbols = sorted(set(elements))
    numbers = sorted(atomic_numbers[s] for s in symbols)
    if len(numbers) > 12 and numbers[-1] - numbers[0] + 1 == len(numbers):
        lo, hi = numbers[0], numbers[-1]
        return f"{chemical_symbols[lo]}-{chemical_symbols[hi]} (Z = {lo}-{hi})"
    return ", ".join(symbols)


def check_elements(config: OracleConfig, elements: Iterable[str]) -> None:
    """Raise ``ValueError`` when ``config``'s oracle cannot label every one of ``elements``.

    The message names the offending elements and the backend's supported set, e.g.
    ``oracle 'emt' does not support Si; it supports: Ag, Al, Au, C, Cu, H, N, Ni, O, Pd, Pt``.
    """
    wanted = set(elements)
    unknown = sorted(e for e in wanted if e not in atomic_numbers)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not a chemical element symbol")
    supported = supported_elements(config)
    if supported is not None:
        missing = sorted(wanted - supported, key=lambda s: atomic_numbers[s])
        if missing:
            what = f"oracle {config.name!r}" + (" with d3" if config.d3 else "")
            raise ValueError(
                f"{what} does not support {', '.join(missing)}; "
                f"it supports: {format_elements(supported)}"
            )
