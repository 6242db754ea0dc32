"""The ``chemgap`` group and the commands that read specs and runs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from pathlib import Path

import click
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from chemgap.agent.cli.common import console, fit_lines, handles_errors
from chemgap.agent.cli.options import Overrides, load_campaign, overrides_option
from chemgap.common.files import restrict_umask

# warnings of the stack that say nothing about the user's run (shown with -vv)
HARMLESS_WARNINGS = (
    "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",  # e3nn's torch.load of constants
    "The TorchScript type system doesn't support instance-level annotations",  # e3nn codegen
    "You are using `torch.load` with `weights_only=False`",  # mace's model loading
    "Skipping unhashable information",  # ASE's extxyz on slab metadata
)
# commands that import mace (a cuequivariance notice on CPU machines) or start Ray
MODEL_COMMANDS = frozenset(
    {"run", "resume", "train", "predict", "explore", "diagnose", "label", "probe", "remedy"}
)


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=verbosity > 1)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    if verbosity < 2:
        for text in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")
        logging.getLogger("ray").setLevel(logging.ERROR)  # token-auth and start-up notices


def _quiet_imports() -> None:
    """Import mace with its cuequivariance notice (a print on CPU machines) swallowed, and
    Ray with its start-up notices (token authentication, which stays on) below ERROR: Ray's
    import sets its logger's level, so this comes after it.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        import mace.tools.cg  # noqa: F401
    import ray  # noqa: F401

    logging.getLogger("ray").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chemgap")
@click.option("-v", "--verbose", count=True, help="-v: progress log; -vv: debug with tracebacks.")
def main(verbose: int) -> None:
    """chemgap: find where a machine-learning interatomic potential fails, and why.

    An active-learning diagnostic agent: it trains MACE ensembles, explores chemical space with
    molecular dynamics, labels uncertain structures with a reference calculator and ties the
    errors to chemical features.
    """
    # files chemgap writes are never group or world writable, whatever the user's umask: it
    # loses 0o022 here, before any Ray instance starts, so the workers inherit it
    restrict_umask()
    _configure_logging(verbose)
    ctx = click.get_current_context()
    if verbose < 2 and ctx.invoked_subcommand in MODEL_COMMANDS:
        _quiet_imports()


@main.command()
@click.argument("spec")
@overrides_option(help="Override a field, e.g. --set exploration.steps=50 (repeatable).")
@handles_errors
def validate(spec: str, sets: Overrides) -> None:
    """Check a campaign SPEC (a YAML file or a built-in name); list every problem."""
    text = fit_lines(f"ok {load_campaign(spec, sets).summary()}")
    console.print(f"[green]ok[/]{escape(text[2:])}", soft_wrap=True)


@main.command()
@handles_errors
def schema() -> None:
    """Print the JSON schema of a campaign spec."""
    from chemgap.campaigns.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@handles_errors
def campaigns() -> None:
    """List the built-in campaigns (run one with its name in place of a spec file)."""
    from chemgap.campaigns.builtin import builtin_descriptions

    for name, text in builtin_descriptions().items():
        console.print(f"[bold]{name:16s}[/] {text}", soft_wrap=True)


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@handles_errors
def status(run: Path, as_json: bool) -> None:
    """Where campaign RUN stands: state, iteration, labels, failure regions, learning curve."""
    from chemgap.agent.evaluation import quality_text
    from chemgap.agent.report.summary import run_status

    info = run_status(run)
    if as_json:
        click.echo(json.dumps(info))
        return
    table = Table(title=f"{info['campaign']} · {info['path']}", show_header=False)
    table.add_row(
        "state", info["state"] + (f" ({info['stop_reason']})" if info["stop_reason"] else "")
    )
    table.add_row("iteration", f"{info['iteration']} (step: {info['step']})")
    table.add_row("labels", f"{info['labels']['ok']} ok, {info['labels']['failed']} failed")
    regions = info["regions_unreadable"] or str(info["regions"])
    tentative = quality_text(info.get("model_quality"))
    table.add_row("failure regions", regions + (f" ({tentative})" if tentative else ""))
    if info["probes"]:
        table.add_row("probes", probes_status(info["probes"]))
    for row in info["learning_curve"]:
        parts = [
            f"{part} {1000 * row[f'test_force_mae_{part.lower()}']:.0f}"
            for part in ("ID", "OOD")
            if row.get(f"test_force_mae_{part.lower()}") is not None
        ]
        if parts:
            table.add_row(
                f"iteration {row['iteration']}",
                f"test force MAE {' · '.join(parts)} meV/Å after {row['oracle_calls']} calls",
            )
    console.print(table)


def probes_status(probes: dict) -> str:
    """The last probe run in one cell: which failed (or all passed), at which iteration."""
    where = f" (iteration {probes['iteration']})" if probes.get("iteration") is not None else ""
    if probes.get("error"):
        return f"could not run{where}: {probes['error']}"
    if probes["failed"]:
        failed = probes["failed"]
        return f"{len(failed)} of {probes['run']} failed{where}: {', '.join(failed)}"
    return f"all {probes['run']} passed{where}"


def _register() -> None:
    """Commands that live in their own modules (one per library area)."""
    from chemgap.agent.cli.diagnose import diagnose, inspect
    from chemgap.agent.cli.explore import explore
    from chemgap.agent.cli.label import label
    from chemgap.agent.cli.probe import probe
    from chemgap.agent.cli.remedy import remedy
    from chemgap.agent.cli.report import report
    from chemgap.agent.cli.run import resume, run
    from chemgap.agent.cli.train import predict, train

    main.add_command(run)
    main.add_command(resume)
    main.add_command(label)
    main.add_command(train)
    main.add_command(predict)
    main.add_command(explore)
    main.add_command(diagnose)
    main.add_command(inspect)
    main.add_command(probe)
    main.add_command(remedy)
    main.add_command(report)


_register()


if __name__ == "__main__":
    main()
