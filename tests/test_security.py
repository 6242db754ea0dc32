"""Security: code named by a spec runs only when the user says so."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from test_campaign import tiny_spec

from chemgap.agent.cli.main import main


def test_a_spec_naming_an_ase_oracle_needs_trust_code(tmp_path):
    """``chemgap run`` on a spec whose oracle is ``ase``: exit 2 naming --trust-code, the module
    never imported, no run directory written.
    """
    (tmp_path / "planted.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "from ase.calculators.emt import EMT as Calc\n"
    )
    oracle = {
        "name": "ase",
        "params": {"calculator": "planted:Calc", "python_path": [str(tmp_path)]},
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(oracle, max_iterations=1)))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--trust-code" in text and "planted:Calc" in text and "Traceback" not in text
    assert not (tmp_path / "imported").exists()
    assert not out.exists()
