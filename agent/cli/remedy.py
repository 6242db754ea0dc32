"""``chemgap remedy``: remediation experiments on a run; the table ``inspect --remedies`` shows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from chemgap.agent.cli.common import console, handles_errors
from chemgap.agent.cli.options import require_trusted, trust_code_option
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import ProbeName, RemedyName
from chemgap.models.config import LongRange

# arm, repeats, F MAE ID and its change, F MAE OOD and its change, calls, atoms: 80 columns
_COLUMNS = (
    ("arm", 15, "left"),
    ("n", 2, "right"),
    ("F MAE ID", 9, "right"),
    ("Δ ID", 7, "right"),
    ("F MAE OOD", 9, "right"),
    ("Δ OOD", 7, "right"),
    ("calls", 5, "right"),
    ("atoms", 7, "right"),
)


def remedies_table(rows: list[tuple[str, ...]], title: str | None = None) -> Table:
    """The remediation table (:func:`chemgap.agent.remedies.table_rows`); fits 80 columns."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False
    )
    for name, width, justify in _COLUMNS:
        table.add_column(name, max_width=width, overflow="fold", justify=justify)
    for row in rows:
        table.add_row(*row)
    return table


def print_remedies(summary: dict[str, Any]) -> None:
    """An experiment's summary: which test structures scored the arms and which guided them,
    the arms table, its caption, the equal-cost comparison, and who fixed each region.
    """
    from chemgap.agent.remedies import (
        cost_rows,
        probe_rows,
        region_rows,
        source_rows,
        split_caption,
        table_rows,
        unscorable_rows,
    )
    from chemgap.agent.remedies.arms import CONTROL_ATOMS
    from chemgap.agent.remedies.results import comparison_caption

    s = summary["settings"]
    title = f"remedies from iteration {s['iteration']} · {s['repeats']} repeats"
    if any(row["kind"] == "data" or row["arm"] == "random" for row in summary["arms"]):
        title += f" · {s['budget']} oracle calls per data arm"
        if any(row["arm"] == CONTROL_ATOMS for row in summary["arms"]):
            title += f" ({CONTROL_ATOMS}: cell_size's atoms)"
    title += "\nF MAE: force MAE per component, meV/Å, mean ± 95 % CI over repeats"
    console.print(remedies_table(table_rows(summary), title))
    console.print(comparison_caption(summary), style="dim")
    console.print(split_caption(summary))
    _print_lines("equal oracle cost (cell_size's calls hold more atoms):", cost_rows(summary))
    _print_lines(
        "labels per repeat (never a test structure or a rattle of one):", source_rows(summary)
    )
    regions = region_rows(summary)
    if regions:
        table = _small_table(
            "regions found on the guidance part: mean force-error norm inside them on the "
            "scoring part, meV/Å",
            [("region", 30, "left"), ("lowest error", 18, "left"), ("its control", 14, "left"),
             ("fixed by", 12, "left")],
        )  # fmt: skip
        for row in regions:
            table.add_row(*row, style="" if row[3] in ("none", "–") else "green")
        console.print(table)
        for line in unscorable_rows(summary):
            console.print(f"  not scorable: {line}", style="dim")
    probes = probe_rows(summary)
    if probes:
        table = _small_table(
            "probes: |model − oracle| (relative errors in %)",
            [("arm", 15, "left"), ("metric", 32, "left"), ("error", 18, "right"),
             ("Δ", 7, "right")],
        )  # fmt: skip
        for row in probes:
            table.add_row(*row)
        console.print(table)


def _print_lines(heading: str, lines: list[str]) -> None:
    """``heading`` and each line indented, when there are lines."""
    if lines:
        console.print(heading)
        for line in lines:
            console.print(f"  {line}")


def _small_table(title: str, columns: list[tuple[str, int, str]]) -> Table:
    """A titled table without edges; columns as (header, max width, justify), folding."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for header, width, justify in columns:
        table.add_column(header, max_width=width, justify=justify, overflow="fold")
    return table


def load_remedies(run: Path) -> dict[str, Any]:
    """``results.json`` of RUN's experiment (RUN may also be the experiment directory)."""
    from chemgap.agent.layout import RemediesLayout, RunLayout
    from chemgap.agent.records import RemedyResultsRecord

    for path in (RunLayout(run).remedies.results, RemediesLayout(run).results):
        if path.exists():
            return RemedyResultsRecord.read(path).to_dict()
    raise BadInput(
        f"{run}: no remediation experiment has finished there (run: chemgap remedy {run} "
        "--remedy random --remedy region)"
    )


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected sizes like 10,20,40 (got {value!r})") from None


class ExperimentReporter:
    """Turns the experiment's events into progress bars with an ETA."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        """Handle one experiment event (``stage``, ``label`` or ``cell``) and its payload."""
        if event == "stage":
            name = payload["stage"]
            if name == "explore":
                self.progress.console.print(f"exploring the pool of repeat {payload['repeat']}")
            elif name in ("label", "train"):
                what = "labelling" if name == "label" else "training arms"
                self.tasks[name] = self.progress.add_task(what, total=payload["n"])
        elif event in ("label", "cell"):
            task = self.tasks.get("label" if event == "label" else "train")
            if task is not None:
                self.progress.update(task, completed=payload["done"])


@click.command("remedy")
@click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--remedy",
    "remedies",
    multiple=True,
    type=click.Choice([r.value for r in RemedyName]),
    help="Arm to compare; repeat for several (default: the spec's remediation.remedies).",
)
@click.option("--budget", type=int, default=None, help="Oracle calls per data arm and repeat.")
@click.option("--repeats", type=int, default=None, help="Repeats (seeds) per arm.")
@click.option("--members", type=int, default=None, help="Ensemble size of every arm.")
@click.option("--max-epochs", type=int, default=None, help="Epoch cap of every arm.")
@click.option(
    "--sizes",
    callback=_sizes,
    default=None,
    help="Training-set sizes for the model arms, e.g. 10,20,40 (a data-size sweep).",
)
@click.option("--iteration", type=int, default=None, help="Base iteration (default: the last).")
@click.option(
    "--probe",
    "probes",
    multiple=True,
    type=click.Choice([p.value for p in ProbeName]),
    help="Score every arm on this probe too (|model − oracle|); repeat for several.",
)
@click.option("--element-map", default=None, help="transfer: e.g. Si=Ge.")
@click.option(
    "--transfer-from",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="transfer: model directory (default: the run's iteration 1).",
)
@click.option(
    "--long-range",
    type=click.Choice([v.value for v in LongRange if v != LongRange.NONE]),
    default=None,
    help="long_range: the terms added (default coulomb).",
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Experiment directory (default RUN/remedies; the same one continues it).",
)
@click.option("--address", default=None, metavar="HOST:PORT", help="Ray cluster to run on.")
@trust_code_option
@handles_errors(resumable=True)
def remedy(
    run: Path, out: Path | None, address: str | None, trust_code: bool, **changes: Any
) -> None:
    """Compare remediation strategies on RUN: which fix makes the model transfer?

    Every arm starts from the same iteration of RUN; data arms (uncertainty, diverse, region,
    probe, cell_size) spend the same oracle budget against random frames of the same
    trajectories, model arms (transfer, long_range, deeper, observations) are compared with
    the base model retrained on the same data; cell_size is also compared with random frames
    holding its oracle atoms (random_atoms). The run's test set is split once, by test kind,
    into a guidance part, on which the base model is diagnosed to find the regions that steer
    the region arm, and a scoring part, on which every arm is scored (RUN/remedies/split.json).
    Each arm is repeated with different seeds; the table gives mean ± 95 % CI and each arm's
    change against its control.
    """
    from chemgap.agent.remedies import experiment_config, prepare_experiment
    from chemgap.agent.report import try_write_report
    from chemgap.agent.runtime import ray_runtime

    if changes.get("transfer_from") is not None:
        changes["transfer_from"] = str(changes["transfer_from"].resolve())
    experiment = prepare_experiment(run, experiment_config(run, **changes), out)
    require_trusted(experiment.base.spec.oracle, trust_code)
    t0 = time.monotonic()
    with ray_runtime(address) as info:
        if info.dashboard_url:
            console.print(f"Ray dashboard: {info.dashboard_url}")
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        with progress:
            experiment.executor, experiment.report = info.executor, ExperimentReporter(progress)
            summary = experiment.run()
    print_remedies(summary)
    console.print(
        f"[bold green]done[/] after {time.monotonic() - t0:.0f} s · results in {experiment.out}"
    )
    if (report := try_write_report(run, remedies=experiment.out)) is not None:
        console.print(f"report: {report}")
