"""``chemgap report``: a run's self-contained HTML report, and its chemiscope export."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import click

from chemgap.agent.cli.common import console, handles_errors


@click.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="HTML file to write (default: RUN/report.html).",
)
@click.option(
    "--chemiscope",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE.json.gz",
    help="Also export the test set and labels (errors, uncertainty, features, regions, SOAP "
    "map) for chemiscope.org.",
)
@handles_errors
def report(run: Path, out: Path | None, chemiscope: Path | None) -> None:
    """Write the HTML report of campaign RUN: one file that opens offline in any browser."""
    from chemgap.agent.report import write_report

    if chemiscope is not None:  # the export predicts with the run's ensemble: mace's import
        with contextlib.redirect_stdout(io.StringIO()):  # prints a cuequivariance notice
            import mace.tools.cg  # noqa: F401
    written = write_report(run, out, chemiscope=chemiscope)
    console.print(f"report: {written['report']}", soft_wrap=True)
    if "chemiscope" in written:
        console.print(
            f"chemiscope: {written['chemiscope']} (open it at https://chemiscope.org)",
            soft_wrap=True,
        )
