"""The options every command shares: KEY=VALUE flags, all-problems errors, exit codes, --help."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from chemgap.agent.cli import main
from chemgap.agent.cli.common import handles_errors
from chemgap.agent.cli.options import Overrides, build_sections, load_campaign
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import DiagnosticsConfig, ExplorationConfig


def test_overrides_parse_and_prefix():
    ov = Overrides.parse(("a=1", "b.c= x ", "oops", "=2", "a=3"), "--set")
    assert ov.values == {"a": "3", "b.c": " x "}
    assert ov.problems() == [
        "oops: expected KEY=VALUE (got 'oops')",
        "=2: expected KEY=VALUE (got '=2')",
    ]
    assert ov and not Overrides("--set")
    under = Overrides.parse(("alpha=0.1", "diagnostics.bootstrap=200"), "--set").under(
        "diagnostics"
    )
    assert under.values == {"diagnostics.alpha": "0.1", "diagnostics.bootstrap": "200"}


def test_build_sections_merges_malformed_and_names_flags():
    ov = Overrides.parse(("exploration.stepz=3", "nope"), "--set")
    with pytest.raises(BadInput) as info:
        build_sections(
            {"exploration": ExplorationConfig},
            ov,
            extra={"exploration.trust": {"lower": 0.2, "upper": 0.1}},
            names={"exploration.trust": "--lower/--upper"},
        )
    lines = str(info.value).splitlines()
    assert lines[0] == "--set: 3 problems"
    assert any(line.strip().startswith("nope: expected KEY=VALUE") for line in lines)
    assert any(line.strip().startswith("exploration.stepz: unknown key") for line in lines)
    assert any(line.strip().startswith("--lower/--upper: upper") for line in lines)
    # the command's own flags win over --set
    out = build_sections(
        {"diagnostics": DiagnosticsConfig},
        Overrides.parse(("diagnostics.splits=[size]",)),
        extra={"diagnostics.splits": ["random"]},
    )
    assert out["diagnostics"].splits == ["random"]


def test_load_campaign_lists_spec_and_malformed_problems():
    ov = Overrides.parse(("exploration.walkers", "exploration.steps=-1"), "--set")
    with pytest.raises(BadInput) as info:
        load_campaign("cu-defects", ov)
    text = str(info.value)
    assert "2 problems" in text and "KEY=VALUE" in text and "exploration.steps" in text
    assert load_campaign("cu-defects", Overrides.parse(("exploration.walkers=3",))).name


@pytest.mark.parametrize(("resumable", "said"), [(True, True), (False, False)])
def test_interrupt_says_state_saved_only_where_it_is(resumable, said):
    @click.command()
    @handles_errors(resumable=resumable)
    def cmd() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 130
    assert "interrupted" in result.output
    assert ("state saved" in result.output) is said


def test_validate_reports_every_set_problem():
    result = CliRunner().invoke(
        main,
        ["validate", "cu-defects", "--set", "exploration.stepz=3",
         "--set", "budget.max_iterations=x", "--set", "bogus"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "3 problems" in result.output
    assert "exploration.stepz: unknown key (got 3)" in result.output
    assert "Traceback" not in result.output


def test_diagnose_names_set_and_train_set(tmp_path):
    result = CliRunner().invoke(
        main,
        ["diagnose", "--models", str(tmp_path / "m"), "--data", str(tmp_path / "d.xyz"),
         "--set", "alpha=2", "--set", "bogus=1", "--train-set", "model.max_L=9",
         "--train-set", "members=3"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    out = result.output
    assert "--set: 2 problems" in out and "--train-set: 2 problems" in out
    assert "diagnostics.alpha:" in out and "diagnostics.bogus: unknown key" in out
    assert "model.max_L:" in out and "members: unknown key (got '3')" in out
    assert "Traceback" not in out


def test_explore_option_problems_are_bad_input_before_loading(tmp_path):
    result = CliRunner().invoke(
        main,
        ["explore", str(tmp_path / "nomodel"), str(tmp_path / "seeds.xyz"), "-o",
         str(tmp_path / "o.xyz"), "--lower", "0.2", "--upper", "0.1"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--lower/--upper: upper (0.1) must exceed lower (0.2)" in result.output
    missing = CliRunner().invoke(
        main,
        ["explore", str(tmp_path / "nomodel"), str(tmp_path / "seeds.xyz"), "-o",
         str(tmp_path / "o.xyz")],
    )  # fmt: skip
    assert missing.exit_code == 2 and "ensemble.json" in missing.output


def test_label_names_its_flags(tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "cu.xyz", bulk("Cu"))
    result = CliRunner().invoke(
        main,
        ["label", str(tmp_path / "cu.xyz"), "-o", str(tmp_path / "o.xyz"), "--oracle", "emt",
         "--timeout", "-1", "--param", "oops"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "2 problems" in result.output
    assert "--timeout: " in result.output and "--param oops: expected KEY=VALUE" in result.output


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("train", ["--address", "--num-cpus", "--dashboard", "--seed", "--set"]),
        ("label", ["--address", "--num-cpus", "--dashboard", "--param"]),
        ("explore", ["--address", "--num-cpus", "--dashboard", "--seed", "--budget"]),
        ("diagnose", ["--address", "--num-cpus", "--dashboard", "--seed", "--set", "--train-set"]),
        ("run", ["--address", "--set"]),
        ("validate", ["--set"]),
    ],
)
def test_help_lists_the_shared_options(command, flags):
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    for flag in flags:
        assert flag in result.output, (flag, result.output)


def test_explore_defaults_are_the_specs():
    from chemgap.campaigns.spec import SelectionConfig, TrustConfig

    out = CliRunner().invoke(main, ["explore", "--help"], terminal_width=200).output
    assert f"[default: {TrustConfig().lower:g}]" in out
    assert f"[default: {TrustConfig().upper:g}]" in out
    assert f"[default: {SelectionConfig().batch_size};" in out
    assert f"[default: {ExplorationConfig().steps};" in out
