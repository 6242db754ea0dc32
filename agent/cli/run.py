"""``chemgap run`` and ``chemgap resume``: launch a campaign, or continue one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chemgap.agent.cli.common import console, handles_errors
from chemgap.agent.cli.options import Overrides, address_option, load_campaign, overrides_option
from chemgap.agent.errors import BadInput

STEP_TEXT = {
    "train": "training {n_members} members on {n} structures",
    "calibrate": "calibrating the ensemble's uncertainty",
    "explore": "exploring with {n} walkers",
    "select": "selecting from {n} candidates",
    "label": "labelling {n} structures",
    "evaluate": "evaluating on the holdout",
    "diagnose": "diagnosing failure regions",
}


class Reporter:
    """Turns the campaign's events into a progress bar per step and a table per iteration."""

    def __init__(self, progress: Progress, n_members: int):
        self.progress = progress
        self.n_members = n_members
        self.task: Any = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        """Handle one campaign event (``step``, ``label`` or ``iteration``) and its payload."""
        match event:
            case "step":
                self._close()
                it, step = payload["iteration"], payload["step"]
                text = STEP_TEXT[step].format(n=payload.get("n", 0), n_members=self.n_members)
                total = {"label": payload.get("n"), "train": None}.get(step)
                self.task = self.progress.add_task(f"iter {it} · {text}", total=total or None)
            case "label":
                self.progress.update(self.task, completed=payload["done"], total=payload["total"])
            case "iteration":
                self._close()
                self.progress.console.print(_iteration_table(payload))

    def _close(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1)
            self.task = None


def _iteration_table(row: dict[str, Any]) -> Table:
    table = Table(title=f"iteration {row['iteration']}", title_justify="left")
    cols = {
        "labels ok/failed": f"{row['labels_ok']}/{row['labels_failed']}",
        "energy MAE (meV/atom)": f"{1000 * row['energy_mae_per_atom']:.1f}",
        "force MAE (meV/Å)": f"{1000 * row['force_mae']:.0f}",
        "Spearman ρ": "–" if row["spearman_atom"] is None else f"{row['spearman_atom']:.2f}",
        "accurate/candidate/failed": (
            f"{100 * row['accurate']:.0f}/{100 * row['candidate']:.0f}/{100 * row['failed']:.0f} %"
        ),
        "regions (silent)": (
            "–" if row.get("regions") is None else f"{row['regions']} ({row['silent_regions']})"
        ),
    }
    for name in cols:
        table.add_column(name, justify="right")
    table.add_row(*cols.values())
    return table


def _drive(store, address: str | None) -> None:
    from chemgap.agent.campaign import run_campaign
    from chemgap.agent.runtime import ray_runtime

    t0 = time.monotonic()
    with ray_runtime(address) as info:
        if info.dashboard_url:
            console.print(f"Ray dashboard: [link={info.dashboard_url}]{info.dashboard_url}[/link]")
        console.print(f"run directory: {store.root}")
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            reason = run_campaign(
                store,
                report=Reporter(progress, store.spec.ensemble.members),
                num_cpus=info.num_cpus,
                executor=info.executor,
            )
    console.print(f"[bold green]done[/] after {time.monotonic() - t0:.0f} s: {reason}")
    console.print(f"  state:    chemgap status {store.root}")
    console.print(f"  data:     ase db {store.root / 'data.db'}")
    console.print(
        f"  models:   {store.root / 'iterations'}/NNN/models (MACECalculator loads member_KK.model)"
    )


@click.command("run")
@click.argument("campaign", default="cu-defects")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run directory (default: runs/CAMPAIGN-YYYYmmdd-HHMMSS).",
)
@overrides_option(help="Override a spec field, e.g. --set budget.max_iterations=2 (repeatable).")
@address_option
@handles_errors(resumable=True)
def run(campaign: str, out: Path | None, sets: Overrides, address: str | None) -> None:
    """Run CAMPAIGN (a built-in name or a spec file; default cu-defects) to its end."""
    from chemgap.agent.store import RunStore
    from chemgap.oracle import check_backend

    spec = load_campaign(campaign, sets)
    try:
        check_backend(spec.oracle)
    except ValueError as exc:
        raise BadInput(f"oracle: {exc}") from None
    out = out or Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = RunStore.create(out, spec)
    console.print(spec.summary(), soft_wrap=True)
    _drive(store, address)


@click.command("resume")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@address_option
@handles_errors(resumable=True)
def resume(run_dir: Path, address: str | None) -> None:
    """Continue the campaign in RUN from its last finished step."""
    from chemgap.agent.store import RunStore

    store = RunStore.open(run_dir)
    if store.state.status == "done":
        console.print(f"{run_dir} is already done: {store.state.stop_reason}")
        return
    console.print(
        f"resuming {store.spec.name} at iteration {store.state.iteration} "
        f"(last finished step: {store.state.step})"
    )
    _drive(store, address)
