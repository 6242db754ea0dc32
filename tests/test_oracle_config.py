"""Oracle configuration: element sets, the element check's message, per-backend parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chemgap.oracle import OracleConfig, check_elements, cost_model, supported_elements
from chemgap.oracle.backends import soften


def test_check_elements_names_the_element_and_the_supported_set():
    with pytest.raises(ValueError) as info:
        check_elements(OracleConfig(name="emt"), {"Cu", "Si"})
    assert str(info.value) == (
        "oracle 'emt' does not support Si; it supports: Ag, Al, Au, C, Cu, H, N, Ni, O, Pd, Pt"
    )
    check_elements(OracleConfig(name="emt"), {"Cu", "O"})  # fine


def test_long_element_ranges_are_summarised():
    with pytest.raises(ValueError, match=r"xtb' does not support Fr, U; .*H-Rn \(Z = 1-86\)"):
        check_elements(OracleConfig(name="xtb"), {"C", "U", "Fr"})


def test_element_sets_per_backend():
    assert supported_elements(OracleConfig(name="sw")) == {"Si", "Ge"}
    assert supported_elements(OracleConfig(name="tersoff")) == {"Si", "C"}
    brenner = OracleConfig(name="tersoff", params={"parameters": "Brenner_PRB_42_9458_C_I"})
    assert supported_elements(brenner) == {"C"}
    ase = OracleConfig(name="ase", params={"calculator": "ase.calculators.emt:EMT"})
    assert supported_elements(ase) is None
    check_elements(ase, {"Og"})  # unknown in advance: not rejected here
    assert "U" in supported_elements(OracleConfig(name="ase", params=ase.params, d3=True))
    with pytest.raises(ValueError, match="not a chemical element"):
        check_elements(OracleConfig(), {"Xx"})


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("emt", {"method": "GFN2-xTB"}, "does not take parameter 'method'"),
        ("xtb", {"method": "GFN0"}, "GFN0"),
        ("xtb", {"charge": 0.5}, "charge"),
        ("xtb", {"multiplicity": 0}, "multiplicity"),
        ("tersoff", {"parameters": "nope"}, "Tersoff_PRB_39_5566_Si_C"),
        ("pyscf", {"basis": 3}, "basis"),
        ("ase", {}, "module:Class"),
        ("ase", {"calculator": "x:Y", "kwargs": [1]}, "kwargs"),
    ],
)
def test_bad_params_are_field_errors(name, params, needle):
    with pytest.raises(ValidationError, match=needle):
        OracleConfig(name=name, params=params)


def test_d3_refused_for_xtb():
    with pytest.raises(ValidationError, match="own"):
        OracleConfig(name="xtb", d3=True)


def test_cost_model_grows_with_size_and_orders_backends():
    emt, xtb = cost_model(OracleConfig(name="emt")), cost_model(OracleConfig(name="xtb"))
    assert emt(100) > emt(10) > 0
    assert xtb(64) > 10 * emt(64)
    assert xtb(64) == pytest.approx(7.0, rel=0.1)  # API-NOTES: periodic Si 64 atoms ~7 s


def test_soften_raises_temperature_and_iterations():
    base = OracleConfig(name="xtb", params={"max_iterations": 100})
    first, second = soften(base, 1), soften(base, 2)
    assert first.params["electronic_temperature"] == 1000.0
    assert second.params["electronic_temperature"] == 3000.0
    assert first.params["max_iterations"] == 200 and second.params["max_iterations"] == 400
    assert soften(OracleConfig(name="emt"), 1) is None
