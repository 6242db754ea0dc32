"""``chemgap label``: element check, triage, failures counted, extxyz with REF_ keys."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner
from test_oracle_helpers import HERE, SPEC

from chemgap.agent.cli.label import label


def invoke(*args: str):
    return CliRunner().invoke(label, list(args), catch_exceptions=False)


def test_unsupported_element_is_bad_input(tmp_path):
    src = tmp_path / "si.xyz"
    ase.io.write(src, bulk("Si", "diamond", 5.431))
    result = invoke(str(src), "-o", str(tmp_path / "out.xyz"), "--oracle", "emt")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "does not support Si" in text
    assert "Ag, Al, Au, C, Cu, H, N, Ni, O, Pd, Pt" in text
    assert not (tmp_path / "out.xyz").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--oracle", "xtb", "--param", "basis=sto-3g"), "basis"),
        (("--oracle", "xtb", "--param", "method=GFN3"), "GFN3"),
        (("--oracle", "xtb", "--d3"), "d3"),
        (("--oracle", "ase", "--param", "calculator=nowhere"), "module:Class"),
        (
            ("--oracle", "ase", "--trust-code", "--param", "calculator=no_such_module_xyz:Calc"),
            "no_such_module",
        ),
        (("--oracle", "emt", "--param", "oops"), "KEY=VALUE"),
    ],
)
def test_bad_oracle_settings_are_bad_input(tmp_path, args, needle):
    src = tmp_path / "h2o.xyz"
    ase.io.write(src, Atoms("H2O", positions=[(0, 0, 0), (0.96, 0, 0), (-0.24, 0.93, 0)]))
    result = invoke(str(src), "-o", str(tmp_path / "out.xyz"), *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_ase_oracle_needs_trust_code_and_imports_nothing_without_it(tmp_path):
    """The ``ase`` oracle imports the module a user names: without --trust-code it is refused
    (exit 2, one sentence naming the flag) before the module is imported.
    """
    (tmp_path / "planted.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "from ase.calculators.emt import EMT as Calc\n"
    )
    src = tmp_path / "cu.xyz"
    ase.io.write(src, bulk("Cu", "fcc", 3.6))
    args = [str(src), "-o", str(tmp_path / "out.xyz"), "--oracle", "ase"]
    args += ["--param", "calculator=planted:Calc", "--param", f"python_path=[{tmp_path}]"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--trust-code" in text and "planted:Calc" in text
    assert "Traceback" not in text
    assert not (tmp_path / "imported").exists() and not (tmp_path / "out.xyz").exists()


def test_missing_input_is_bad_input(tmp_path):
    result = invoke(str(tmp_path / "nope.xyz"), "-o", str(tmp_path / "o.xyz"), "--oracle", "emt")
    assert result.exit_code == 2
    assert "nope.xyz" in result.output


def test_labels_in_order_with_failures_recorded(ray_session, tmp_path):
    good = bulk("Cu", cubic=True)
    good.rattle(0.03, seed=7)
    close = Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 0.1)])
    src, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    ase.io.write(src, [good, close, bulk("Cu", "fcc", 3.7)])
    result = invoke(str(src), "-o", str(out), "--oracle", "emt")
    assert result.exit_code == 0, result.output
    assert "ok: 2/3" in result.output and "unphysical_geometry: 1" in result.output
    frames = ase.io.read(out, index=":")
    assert [f.info["label_status"] for f in frames] == ["ok", "unphysical_geometry", "ok"]
    assert all(f.info["oracle"] == "emt" for f in frames)
    assert frames[0].info["label_message"] == "ok" and frames[0].info["label_seconds"] > 0
    assert frames[1].info["label_seconds"] == 0 and "0.100 Å" in frames[1].info["label_message"]
    assert len(frames[0]) == 4 and len(frames[1]) == 2  # input order kept
    from ase.calculators.emt import EMT

    ref = good.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(frames[0].info["REF_energy"], ref.get_potential_energy(), atol=1e-6)
    np.testing.assert_allclose(frames[0].arrays["REF_forces"], ref.get_forces(), atol=1e-6)
    np.testing.assert_allclose(frames[0].info["REF_stress"], ref.get_stress(), atol=1e-6)
    assert "REF_energy" not in frames[1].info


def test_close_pair_never_reaches_the_calculator(ray_session, tmp_path):
    src, out, marker = tmp_path / "in.xyz", tmp_path / "out.xyz", tmp_path / "calls.txt"
    ase.io.write(src, Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 0.1)]))
    result = invoke(
        str(src), "-o", str(out), "--oracle", "ase",
        "--trust-code", "--param", f"calculator={SPEC}",
        "--param", f"python_path=[{HERE}]",
        "--param", f"kwargs={{marker: {marker}}}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ase.io.read(out).info["label_status"] == "unphysical_geometry"
    assert not marker.exists()


def test_injected_failing_calculator_run_finishes_and_counts(ray_session, tmp_path):
    src, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(src, [bulk("Cu", "fcc", a) for a in (3.5, 3.6, 3.7)])
    result = invoke(
        str(src), "-o", str(out), "--oracle", "ase",
        "--trust-code", "--param", f"calculator={SPEC}",
        "--param", f"python_path=[{HERE}]",
        "--param", "kwargs={behaviour: raise}",
        "--timeout", "30",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ok: 0/3" in result.output and "crashed: 3" in result.output
    frames = ase.io.read(out, index=":")
    assert [f.info["label_status"] for f in frames] == ["crashed"] * 3
    assert "deliberate failure" in frames[0].info["label_message"]
