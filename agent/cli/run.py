"""``chemgap run`` and ``chemgap resume``: launch a campaign, or continue one."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chemgap.agent.cli.common import console, fit_lines, handles_errors
from chemgap.agent.cli.diagnose import provenance_lines
from chemgap.agent.cli.options import (
    Overrides,
    address_option,
    load_campaign,
    overrides_option,
    trust_code_option,
)
from chemgap.agent.cli.probe import print_probes
from chemgap.agent.evaluation import quality_text
from chemgap.agent.layout import RunLayout
from chemgap.agent.report.summary import summarize

STEP_TEXT = {
    "train": "training {n_members} members on {n} structures",
    "calibrate": "calibrating the ensemble's uncertainty",
    "explore": "exploring with {n} walkers",
    "probe": "probing the physics ({n} probes) against the oracle",
    "select": "selecting from {n} candidates",
    "label": "labelling {n} structures",
    "test": "labelling the {n}-structure test set",
    "evaluate": "scoring on the holdout and the test set",
    "diagnose": "diagnosing failure regions on the test set",
}


class Reporter:
    """Turns the campaign's events into a progress bar per step and a table per iteration."""

    def __init__(self, progress: Progress, n_members: int):
        self.progress = progress
        self.n_members = n_members
        self.task: Any = None
        self.remedies: Any = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        """Handle one campaign event (``step``, ``label`` or ``iteration``) and its payload."""
        match event:
            case "step":
                self._close()
                it, step = payload["iteration"], payload["step"]
                if step == "probe" and not payload.get("n"):
                    return  # no probe due this iteration: no bar
                text = STEP_TEXT[step].format(n=payload.get("n", 0), n_members=self.n_members)
                total = {"label": payload.get("n"), "train": None}.get(step)
                self.task = self.progress.add_task(f"iter {it} · {text}", total=total or None)
            case "label":
                self.progress.update(self.task, completed=payload["done"], total=payload["total"])
            case "note":
                self.progress.console.print(payload["text"])
            case "iteration":
                self._close()
                self.progress.console.print(_iteration_table(payload))
            case "remedy":
                self._close()
                self._remedy(payload)

    def _remedy(self, payload: dict[str, Any]) -> None:
        from chemgap.agent.cli.remedy import ExperimentReporter, print_remedies

        event = payload.pop("event")
        if event == "start":
            names = ", ".join(payload["remedies"])
            self.progress.console.print(f"remediation experiment: {names}")
            self.remedies = ExperimentReporter(self.progress)
        elif event == "done":
            print_remedies(payload["summary"])
        elif self.remedies is not None:
            self.remedies(event, payload)

    def _close(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1)
            self.task = None


def _mev(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{1000 * value:.{digits}f}"


def _iteration_table(row: dict[str, Any]) -> Table:
    """One iteration in a table that fits 80 columns (MAEs as chemgap.common.metrics has them)."""
    calls = f"{row.get('oracle_calls', row['labels_ok'])} oracle calls"
    if row.get("oracle_calls_test"):
        calls += f" + {row['oracle_calls_test']} test"
    if row.get("oracle_calls_e0"):
        calls += f" + {row['oracle_calls_e0']} E0"
    table = Table(
        title=f"iteration {row['iteration']} · {row['labels_ok']} labels "
        f"({row['labels_failed']} failed) · {calls}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption="force MAE per component, meV/Å · energy MAE meV/atom · ID/OOD: test kinds "
        "in/out of the initial data · % frames: explored frames accurate/candidate/failed",
        caption_justify="left",
    )
    cols = {
        "holdout\nF MAE": _mev(row.get("force_mae")),
        "test ID\nF MAE": _mev(row.get("test_force_mae_id")),
        "test OOD\nF MAE": _mev(row.get("test_force_mae_ood")),
        "test OOD\nE MAE": _mev(row.get("test_energy_mae_ood"), 1),
        "ρ(σ,ΔF)": "–" if row.get("spearman_atom") is None else f"{row['spearman_atom']:.2f}",
        "% frames\nacc/cnd/fl": (
            f"{100 * row['accurate']:.0f}/{100 * row['candidate']:.0f}/{100 * row['failed']:.0f}"
        ),
        "regions\n(silent)": (
            "–"
            if row.get("regions") is None
            else f"{row['regions']} ({row['silent_regions']})"
            + ("?" if row.get("regions_tentative") else "")
        ),
    }
    for name in cols:
        table.add_column(name, justify="right")
    table.add_row(*cols.values())
    if row.get("trust_pooled"):
        table.caption = f"{table.caption}\n{row['trust_pooled']}"
    if row.get("probes_run") is not None:
        table.caption = f"{table.caption}\n{probes_line(row)}"
    tentative = quality_text(row.get("model_quality"))
    if tentative:
        table.caption = f"{table.caption}\n?: regions {tentative}"
    return table


def probes_line(row: dict[str, Any]) -> str:
    """One line on an iteration's probes: how many passed, which failed."""
    run, failed = row.get("probes_run") or 0, row.get("probes_failed") or []
    if not run:
        return "probes: could not run (see iterations/NNN/probes/probes.json)"
    text = f"probes: {run - len(failed)}/{run} passed"
    return text + (f" · failed: {', '.join(failed)}" if failed else "")


def _ratio(r: dict[str, Any]) -> str:
    lo, hi = r.get("ratio_ci") or (None, None)
    if r.get("ratio") is None:
        return "–"
    ci = "" if lo is None or hi is None else f" ({lo:.2f}–{hi:.2f})"
    return f"{r['ratio']:.2f}{ci}"


_BARE_CLASS = re.compile(r"environment = env\d+")  # a rule of a regions.json of before names


def _regions_found(regions: list[dict[str, Any]], quality: dict[str, Any] | None) -> Table:
    """The last diagnosis' regions, readable rules, within 80 columns; tentative ones say so."""
    tentative = quality_text(quality)
    table = Table(
        title="failure regions (last diagnosis, on the test set)"
        + (f"\n[yellow]{tentative}[/]" if tentative else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption="×: force-error ratio to the baseline, its CI selection-aware (false-coverage-"
        "rate adjusted; the level in inspect --region) · q: BH-adjusted p · silent: error "
        "above its own calibrated uncertainty",
        caption_justify="left",
    )
    table.add_column("rule", overflow="fold", ratio=1)
    table.add_column("× (adj. CI)", no_wrap=True, justify="right")
    table.add_column("q", justify="right")
    table.add_column("silent")
    table.add_column("seen", justify="right")
    for r in regions:
        rule = escape(str(r["rule"]))
        if r.get("enriched") and _BARE_CLASS.fullmatch(str(r["rule"])):  # a file of old: say
            rule += f" [dim](mostly {escape(r['enriched'][0])})[/]"  # what the class holds
        if r.get("folded"):
            rule += f" [dim](+{r['folded']} folded)[/]"
        table.add_row(
            rule,
            _ratio(r),
            "–" if r.get("q_value") is None else f"{r['q_value']:.0e}",
            "[bold red]yes[/]" if r.get("silent") else "",
            "–" if r.get("first_seen") is None else f"{r['first_seen']}–{r['last_seen']}",
        )
    return table


def _test_by_kind(rows: list[dict[str, Any]]) -> Table:
    first, last = rows[0]["first_iteration"], rows[0]["last_iteration"]
    span = first != last
    table = Table(
        title=f"test force MAE per kind, meV/Å: iteration {first}" + (f" → {last}" if span else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    cols = ["kind", "structures", f"iter {first}"] + ([f"iter {last}", "change"] if span else [])
    for col in cols:
        table.add_column(col, justify="left" if col == "kind" else "right")
    for r in rows:
        a, b = r["force_mae_first"], r["force_mae_last"]
        change = "–" if not a or b is None else f"{100 * (b - a) / a:+.0f} %"
        cells = [str(r["kind"]), str(r["n_structures"]), _mev(a)]
        table.add_row(*cells, *([_mev(b), change] if span else []))
    return table


def print_summary(summary: dict[str, Any], root: Path) -> None:
    """The closing answer of a run: regions found and resolved, test error per kind, time."""
    regions, resolved = summary["regions"], summary["resolved"]
    if regions:
        console.print(_regions_found(regions, summary.get("quality")))
    else:
        console.print(
            f"no failure region found in the last diagnosis (why: chemgap inspect {root})"
        )
    for r in resolved:
        console.print(
            f"resolved at iteration {r['resolved_at']}: {r.get('rule') or r['id']}", markup=False
        )
    for line in provenance_lines(summary.get("provenance")):
        console.print(line, markup=False)
    if summary["test_by_kind"]:
        console.print(_test_by_kind(summary["test_by_kind"]))
    print_probes(summary.get("probes"))
    t = summary["time"]
    if t.get("overhead_fraction") is not None:
        console.print(
            f"loop wall time {t['elapsed_s']:.0f} s, {t['overhead_s']:.0f} s of it "
            f"({100 * t['overhead_fraction']:.1f} %) between the steps"
        )


def _drive(store, address: str | None) -> None:
    from chemgap.agent.loop import run_campaign
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
    print_summary(summarize(store), store.root)
    if (report := RunLayout(store.root).report).exists():
        console.print(f"  report:   {report} (open it in a browser; works offline)")
    console.print(f"  regions:  chemgap inspect {store.root}")
    console.print(f"  state:    chemgap status {store.root}")
    console.print(f"  data:     ase db {store.root / 'data.db'}")
    console.print(
        f"  models:   {store.root / 'iterations'}/NNN/models "
        "(chemgap.models.ChemgapCalculator loads them)"
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
@trust_code_option
@handles_errors(resumable=True)
def run(
    campaign: str, out: Path | None, sets: Overrides, address: str | None, trust_code: bool
) -> None:
    """Run CAMPAIGN (a built-in name or a spec file; default cu-defects) to its end."""
    from chemgap.agent.loop import preflight
    from chemgap.agent.store import RunStore

    spec = load_campaign(campaign, sets)
    preflight(spec, trust_code=trust_code)
    out = out or Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = RunStore.create(out, spec)
    console.print(fit_lines(spec.summary()), soft_wrap=True)
    _drive(store, address)


@click.command("resume")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@address_option
@trust_code_option
@handles_errors(resumable=True)
def resume(run_dir: Path, address: str | None, trust_code: bool) -> None:
    """Continue the campaign in RUN from its last finished step."""
    from chemgap.agent.loop import preflight, remediation_pending
    from chemgap.agent.store import RunStore

    store = RunStore.open(run_dir)
    pending = remediation_pending(store)
    if store.state.status == "done" and not pending:
        console.print(f"{run_dir} is already done: {store.state.stop_reason}")
        return
    store.require_writable()  # before Ray starts
    preflight(store.spec, trust_code=trust_code)
    if pending:
        console.print(f"the loop of {run_dir} is done; continuing its remediation experiment")
    else:
        console.print(
            f"resuming {store.spec.name} at iteration {store.state.iteration} "
            f"(last finished step: {store.state.step})"
        )
    _drive(store, address)
