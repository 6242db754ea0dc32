"""The campaign spec: built-ins valid, every problem named, overrides typed by the schema."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from chemgap.agent.cli import main
from chemgap.campaigns.builtin import builtin_names, builtin_path
from chemgap.campaigns.spec import (
    SpecError,
    apply_overrides,
    load_spec,
    parse_sections,
    parse_spec,
)

BUILTINS = ["cu-defects", "si-ge-transfer", "organics-xtb", "ionic-longrange"]


def cu_spec() -> dict:
    return yaml.safe_load(builtin_path("cu-defects").read_text())


def problems(data: dict, **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, **kw)
    return info.value.problems


def test_builtins_are_shipped_and_valid():
    assert set(BUILTINS) <= set(builtin_names())
    for name in BUILTINS:
        spec = load_spec(name)
        assert spec.name == name
        assert spec.elements()


@pytest.mark.parametrize("name", BUILTINS)
def test_validate_cli_accepts_builtins(name, tmp_path):
    # as a name and as a copied file
    result = CliRunner().invoke(main, ["validate", name])
    assert result.exit_code == 0, result.output
    assert name in result.output
    path = tmp_path / "spec.yaml"
    path.write_text(builtin_path(name).read_text())
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0


def test_three_problems_are_all_named(tmp_path):
    data = cu_spec()
    data["exploration"]["stepz"] = 3
    data["exploration"]["steps"] = -10
    data["oracle"]["name"] = "vasp-turbo"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    out = result.output
    assert "exploration.stepz: unknown key (got 3)" in out
    assert "exploration.steps:" in out and "(got -10)" in out
    assert "oracle.name:" in out and "'vasp-turbo'" in out and "'emt'" in out
    assert "3 problems" in out
    assert "Traceback" not in out


def test_element_the_oracle_cannot_do():
    data = cu_spec()
    data["oracle"] = {"name": "sw"}
    (msg,) = problems(data)
    assert msg.startswith("oracle.name:")
    assert "Cu" in msg and "Ge, Si" in msg


@pytest.mark.parametrize(
    ("mutate", "path_prefix"),
    [
        (lambda d: d["system"]["seeds"][0].update(formula="Xx"), "system.seeds.0.formula"),
        (lambda d: d["system"]["seeds"][0].update(kind="blob"), "system.seeds.0"),
        (lambda d: d["system"]["seeds"][2].update(layers=0), "system.seeds.2.layers"),
        (lambda d: d["exploration"].update(temperatures_K=[300, -5]), "exploration.temperatures_K"),
        (
            lambda d: (
                d["exploration"]["trust"].update
                if False
                else d["exploration"].update(trust={"mode": "fixed", "lower": 0.2, "upper": 0.1})
            ),
            "exploration.trust",
        ),
        (lambda d: d["model"].update(dtype="float16"), "model.dtype"),
        (lambda d: d["ensemble"].update(mode="boosting"), "ensemble.mode"),
        (lambda d: d["selection"].update(strategy="greedy"), "selection.strategy"),
        (
            lambda d: d["selection"].update(per_element_quota={"Ag": 2}),
            "selection.per_element_quota.Ag",
        ),
        (lambda d: d["diagnostics"].update(splits=["random", "astrology"]), "diagnostics.splits.1"),
        (lambda d: d.update(name="bad name!"), "name"),
        (lambda d: d.pop("system"), "system"),
    ],
)
def test_each_kind_of_invalid_names_its_field(mutate, path_prefix):
    data = cu_spec()
    mutate(data)
    msgs = problems(data)
    assert any(m.startswith(path_prefix) for m in msgs), msgs


def test_molecule_and_file_seeds(tmp_path):
    from ase.build import molecule
    from ase.io import write

    write(tmp_path / "water.xyz", molecule("H2O"))
    data = {
        "name": "mols",
        "system": {
            "seeds": [
                {"kind": "molecule", "smiles": "CC(=O)N"},
                {"kind": "file", "path": "water.xyz"},
            ]
        },
        "oracle": {"name": "xtb"},
    }
    spec = parse_spec(data, base_dir=tmp_path)
    assert spec.elements(tmp_path) == {"C", "H", "N", "O"}
    # the spec is copied into a run directory: the file must still be found from there
    assert spec.system.seeds[1].path == str((tmp_path / "water.xyz").resolve())
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    assert spec.elements(elsewhere) == {"C", "H", "N", "O"}
    data["system"]["seeds"][0]["smiles"] = "C1CC("  # unparseable
    data["system"]["seeds"][1]["path"] = "missing.xyz"
    msgs = problems(data, base_dir=tmp_path)
    assert any(m.startswith("system.seeds.0") and "SMILES" in m for m in msgs), msgs
    data["system"]["seeds"][0]["smiles"] = "CCO"
    msgs = problems(data, base_dir=tmp_path)
    assert any(m.startswith("system.seeds.1") and "missing.xyz" in m for m in msgs), msgs


def test_overrides_are_typed_by_the_schema():
    spec = parse_spec(
        cu_spec(),
        overrides={
            "exploration.steps": "50",
            "exploration.temperatures_K": "[100, 200.5]",
            "system.seeds.0.a": "3.6",
            "name": "1e3",  # a string field keeps the literal text, not the float 1000.0
            "oracle.params": "{}",
            "ensemble.mode": "bagging",
            "probes.names": "[eos, dimer]",  # a list of enum strings is read as YAML
        },
    )
    assert spec.probes.names == ["eos", "dimer"]
    assert spec.exploration.steps == 50
    assert spec.exploration.temperatures_K == [100.0, 200.5]
    assert spec.system.seeds[0].a == 3.6
    assert spec.name == "1e3"
    assert spec.ensemble.mode == "bagging"


def test_override_errors_name_the_path():
    msgs = problems(cu_spec(), overrides={"exploration.stepz": "5", "budget.max_iterations": "x"})
    assert any(m.startswith("exploration.stepz: unknown key") for m in msgs)
    assert any(m.startswith("budget.max_iterations:") and "'x'" in m for m in msgs)
    with pytest.raises(SpecError, match="no item 9"):
        apply_overrides(cu_spec(), {"system.seeds.9.a": "3"})


def test_set_on_the_cli(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", "cu-defects", "--set", "exploration.walkers=3"])
    assert ok.exit_code == 0 and "3 walkers" in ok.output
    bad = runner.invoke(main, ["validate", "cu-defects", "--set", "exploration.walkers"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_unreadable_inputs_exit_2(tmp_path):
    runner = CliRunner()
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    for arg, needle in [
        (tmp_path / "broken.yaml", "not valid YAML"),
        (tmp_path / "list.yaml", "expected a mapping"),
        (tmp_path / "nope.yaml", "no such file"),
    ]:
        result = runner.invoke(main, ["validate", str(arg)])
        assert result.exit_code == 2, result.output
        assert needle in result.output


def test_schema_and_campaigns_commands():
    runner = CliRunner()
    result = runner.invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {
        "system",
        "oracle",
        "model",
        "ensemble",
        "exploration",
        "selection",
        "budget",
        "diagnostics",
    } <= set(schema["properties"])
    listing = runner.invoke(main, ["campaigns"])
    assert listing.exit_code == 0
    lines = [line for line in listing.output.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == sorted(BUILTINS)


# --------------------------------------------------------------------------- parse_sections
def test_parse_sections_types_by_schema_and_keeps_order():
    from chemgap.campaigns.spec import DiagnosticsConfig, ExplorationConfig
    from chemgap.models.config import EnsembleConfig, ModelConfig

    out = parse_sections(
        {"model": ModelConfig, "ensemble": EnsembleConfig},
        {"model.radial_mlp": "[16, 16]", "ensemble.mode": "bagging", "ensemble.members": 3},
    )
    assert list(out) == ["model", "ensemble"]
    assert out["model"].radial_mlp == [16, 16]
    assert out["ensemble"].mode == "bagging" and out["ensemble"].members == 3
    assert out["model"] == ModelConfig(radial_mlp=[16, 16])  # untouched fields: the defaults
    # nested fields, and a base to start from
    ex = parse_sections(
        {"exploration": ExplorationConfig},
        {"exploration.trust.lower": "0.01", "exploration.temperatures_K": "[100, 200]"},
    )["exploration"]
    assert ex.trust.lower == 0.01 and ex.temperatures_K == [100.0, 200.0]
    base = DiagnosticsConfig(alpha=0.1, holdout_element="Cu")
    diag = parse_sections(
        {"diagnostics": DiagnosticsConfig},
        {"diagnostics.n_clusters": "5"},
        base={"diagnostics": base},
    )["diagnostics"]
    assert (diag.alpha, diag.holdout_element, diag.n_clusters) == (0.1, "Cu", 5)
    # a string field keeps the literal text
    holdout = parse_sections(
        {"diagnostics": DiagnosticsConfig}, {"diagnostics.holdout_group": "1e3"}
    )
    assert holdout["diagnostics"].holdout_group == "1e3"


def test_parse_sections_lists_every_problem():
    from chemgap.models.config import EnsembleConfig, ModelConfig

    with pytest.raises(SpecError) as info:
        parse_sections(
            {"model": ModelConfig, "ensemble": EnsembleConfig},
            {
                "bogus": "1",
                "ensemble.members": "-1",
                "model.nonsense": "2",
                "model.max_L": "9",
                "model..x": "1",
            },
            source="--train-set",
        )
    exc = info.value
    assert exc.source == "--train-set" and str(exc).startswith("--train-set: 5 problems")
    assert "bogus: unknown key (got '1')" in exc.problems
    assert "model.nonsense: unknown key (got 2)" in exc.problems
    assert any(p.startswith("ensemble.members:") and "(got -1)" in p for p in exc.problems)
    assert any(p.startswith("model.max_L:") and "(got 9)" in p for p in exc.problems)
    assert any(p.startswith("model..x: empty path component") for p in exc.problems)


def test_overrides_report_every_structural_problem():
    with pytest.raises(SpecError) as info:
        apply_overrides(cu_spec(), {"system.seeds.9.a": "3", "exploration.steps.x": "1"})
    assert len(info.value.problems) == 2
    msgs = problems(cu_spec(), overrides={"system.seeds.9.a": "3", "budget.max_iterations": "x"})
    assert any("no item 9" in m for m in msgs)
    assert any(m.startswith("budget.max_iterations:") for m in msgs)


def test_a_spec_with_nothing_to_train_on_is_refused():
    """Broken variants: every seed initial: false, and a holdout fraction that takes every
    initial structure, used to fail at run time; both are spec errors now (exit 2).
    """
    data = cu_spec()
    for seed in data["system"]["seeds"]:
        seed["initial"] = False
    assert any("initial: false" in p for p in problems(data))
    data = cu_spec()
    data["system"]["initial_labels"] = 2
    data["system"]["holdout_fraction"] = 0.9
    found = problems(data)
    assert any(p.startswith("system.holdout_fraction: holds out 2 (and calibration") for p in found)


def test_test_set_section(tmp_path):
    data = cu_spec()
    data["test_set"] = {"file": "missing.extxyz"}
    assert any(p.startswith("test_set.file: file") for p in problems(data, base_dir=tmp_path))
    data["test_set"] = {"per_kind": -1, "temperatures_K": [0]}
    found = problems(data)
    assert any(p.startswith("test_set.per_kind") for p in found)
    assert any(p.startswith("test_set.temperatures_K") for p in found)
    spec = parse_spec(cu_spec())
    assert spec.test_set.per_kind > 0 and spec.test_set.method == "rattle"
