"""``chemgap probe``: physical-behaviour probes of a model against the oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from chemgap.agent.cli.common import console, handles_errors
from chemgap.agent.cli.options import (
    Overrides,
    overrides_option,
    seed_option,
    trust_code_option,
)
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import ProbeName
from chemgap.oracle.config import OracleName

# column widths that keep the table within 80 columns (rich folds longer cells)
_WIDTHS = {"probe": 12, "metric": 24, "model ± band": 19, "oracle": 9, "pass": 5}


def probes_table(rows: list[tuple[str, str, str, str, str]], title: str | None = None) -> Table:
    """Probe metrics, one row each (:func:`chemgap.agent.probes.results.report_rows`): the
    model's value ± the members' band, the oracle's, the verdict; fits 80 columns.
    """
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False
    )
    for name, width in _WIDTHS.items():
        justify = "right" if name in ("model ± band", "oracle") else "left"
        table.add_column(name, max_width=width, overflow="fold", justify=justify)
    last = None
    for probe, metric, model, oracle, verdict in rows:
        style = {"FAIL": "red", "error": "red", "pass": "green"}.get(verdict, "")
        table.add_row(
            probe if probe != last else "",
            metric,
            model,
            oracle,
            f"[{style}]{verdict}[/]" if style else verdict,
        )
        last = probe
    return table


def print_probes(probes: dict[str, Any] | None) -> None:
    """The last probe run of a campaign: the metrics table and which probes failed."""
    if not probes:
        return
    it = probes.get("iteration")
    where = f" (iteration {it})" if it is not None else ""
    if probes.get("error"):
        console.print(f"probes{where} could not run: {probes['error']}", markup=False)
        return
    failed = probes["failed"]
    title = f"physical-behaviour probes{where}, model against the oracle: " + (
        f"[red]failed: {', '.join(failed)}[/]" if failed else "all passed"
    )
    console.print(probes_table(probes["rows"], title=title))


@click.command("probe")
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--system",
    "system",
    required=True,
    metavar="SPEC|FILE",
    help="A campaign spec (YAML or built-in name) or a structure file ASE reads.",
)
@click.option(
    "--oracle",
    type=click.Choice([o.value for o in OracleName]),
    default=None,
    help="Reference calculator (default: the spec's oracle).",
)
@click.option(
    "--probe",
    "probes",
    type=click.Choice([p.value for p in ProbeName]),
    multiple=True,
    help="Probe to run; repeat for several (default: the spec's probes.names).",
)
@click.option(
    "--temperature",
    "temperatures",
    type=click.FloatRange(min=0, min_open=True),
    multiple=True,
    help="K, for md_stability; repeat for a ladder (default: the spec's, else 300).",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for probes.json and candidates.extxyz.",
)
@overrides_option(help="Probe setting, e.g. --set vacancy.sizes=[2,3] (repeatable).")
@seed_option(default=None, help="MD seed (default: the spec's seed, else 0).")
@trust_code_option
@handles_errors
def probe(
    model_dir: Path,
    system: str,
    oracle: str | None,
    probes: tuple[str, ...],
    temperatures: tuple[float, ...],
    out: Path,
    sets: Overrides,
    seed: int | None,
    trust_code: bool,
) -> None:
    """Probe the physics of the ensemble in MODEL_DIR against the oracle.

    Each probe (EOS, elastic constants, vacancy and surface energies, dimer curves,
    vibrations, MD stability, NVE drift, RDF) is computed with every member, their mean and
    the oracle, and judged against bounds; probes.json holds curves, values and verdicts.
    """
    from chemgap.agent.probes import probe_model
    from chemgap.campaigns.spec import SpecError

    if sets.malformed:
        raise BadInput(str(SpecError(list(sets.malformed), sets.flag)))
    with console.status("probing"):
        report, written = probe_model(
            model_dir,
            system,
            out,
            oracle=oracle,
            names=probes,
            overrides=sets.under("probes").values,
            seed=seed,
            temperatures_K=list(temperatures) or None,
            trust_code=trust_code,
        )
    console.print(probes_table(report.rows()))
    n_pass = sum(r.passed is True for r in report.results)
    console.print(f"{n_pass}/{len(report.results)} probes passed in {report.seconds:.1f} s")
    for path in written.values():
        console.print(f"wrote {path}", soft_wrap=True)
