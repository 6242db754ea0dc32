"""``chemgap diagnose`` and ``chemgap inspect``: failure regions tied to chemistry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from chemgap.agent.cli.common import console, handles_errors
from chemgap.agent.cli.options import (
    Overrides,
    build_sections,
    overrides_option,
    ray_options,
    seed_option,
    with_runtime,
)
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import SplitName


def _f(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _ratio_ci(r: Any) -> str:
    """``1.61 (1.40–1.90)``: the ratio and its CI (at the region's ``ci_level``), compact."""
    return f"{_f(r.ratio, '.2f')} ({_f(r.ratio_ci[0], '.2f')}–{_f(r.ratio_ci[1], '.2f')})"


def _ci_caption(regions: list[Any]) -> str:
    """How the table's ratio CIs were computed: selection-aware at one level, or per region."""
    from chemgap.agent.diagnostics.region import level_percent

    levels = {round(float(getattr(r, "ci_level", 0.95)), 9) for r in regions if r.significant}
    if not levels:
        return "95 %"
    which = f"at {level_percent(levels.pop())} %" if len(levels) == 1 else "level in inspect"
    return (
        f"selection-aware, {which} (false-coverage-rate adjusted, 1 − R·α/m for R of the m "
        "rules tested significant; Benjamini & Yekutieli 2005)"
    )


REGION_ERROR = "mean |ΔF|\neV/Å"  # the region tables' one metric: mean force-error norm
REGION_RATIO = "× baseline\n(adj. CI)"


def regions_table(regions: list[Any], title: str) -> Table:
    """Failure regions as a table, one row each, in the order given; fits 80 columns.

    Its one metric is the mean force-error norm |F_pred - F_ref| of a region's atoms, eV/Å
    (header ``mean |ΔF| eV/Å``), and its ratio to the mean over all atoms. Rules are the
    readable ones (environment classes by their chemistry; ``chemgap inspect
    --region`` shows the machine form too). Long rules fold inside their column; a silent
    region is marked in its rule cell, and one with regions folded under it says how many;
    the iterations a region was seen in show only inside a campaign.
    """
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
        caption_justify="left",
        caption="× baseline: ratio to the baseline, the mean |ΔF| of all atoms, with its CI: "
        f"{_ci_caption(regions)} · "
        "mean |ΔF|: mean force-error norm of the region's atoms, eV/Å · q: BH-adjusted p · "
        "SILENT: error above its own calibrated uncertainty, and relatively so · "
        "held-out: tree rule scored on the structures it was not grown on · structures with: "
        "the structures holding these atoms are worse; the atoms are not shown to be worse "
        "than the others of their structures",
    )
    from chemgap.agent.diagnostics.region import shown_rule

    show_seen = any(r.first_seen is not None for r in regions)
    table.add_column("id", no_wrap=True)
    table.add_column("rule", overflow="fold", ratio=1, min_width=14)
    table.add_column("atoms", justify="right", no_wrap=True)
    table.add_column(REGION_ERROR, justify="right", no_wrap=True)
    table.add_column(REGION_RATIO, no_wrap=True)
    table.add_column("q", justify="right", no_wrap=True)
    if show_seen:
        table.add_column("seen", justify="right", no_wrap=True)
    for r in regions:
        rule = escape(shown_rule(r))
        rule += " [dim](held-out)[/]" if getattr(r, "held_out", False) else ""
        folded = len(getattr(r, "folded", None) or [])
        if folded:
            rule += f" [dim](+{folded} folded)[/]"
        if r.silent:
            rule += " [bold red]SILENT[/]"
        row = [r.id, rule, str(r.n_atoms), _f(r.mean_error, ".3f"), _ratio_ci(r)]
        row.append(_f(r.q_value, ".0e"))
        if show_seen:
            row.append(_seen(r))
        table.add_row(*row)
    return table


def _seen(r: Any) -> str:
    """``2–4``: the iterations a region was first and last seen in (``3`` when one)."""
    if r.first_seen is None:
        return "–"
    return str(r.first_seen) if r.first_seen == r.last_seen else f"{r.first_seen}–{r.last_seen}"


SPLIT_COLUMNS = (  # the split tables' metric: force MAE per Cartesian component, eV/Å
    "ID F MAE\neV/Å",
    "OOD F MAE\neV/Å",
    "OOD/ID",
    "vs rnd",
    "OOD E MAE\nmeV/atom",
)


def splits_table(splits: list[dict[str, Any]]) -> Table:
    """The split study as a table: in- vs out-of-distribution error per split; fits 80 columns.

    Its metric is the force MAE per Cartesian component, eV/Å (``force_mae`` of
    :mod:`chemgap.common.metrics`), with the OOD energy MAE per atom in meV/atom beside it;
    each header names its metric and unit. What each split holds out is listed under the table
    (:func:`split_legend`).
    """
    trained = any(s.get("trained") for s in splits)
    title = "splits: " + (
        "one ensemble per split, ID = held-out train part"
        if trained
        else "this ensemble, ID = train side, OOD = test side"
    )
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
        caption_justify="left",
        caption="F MAE: force MAE per Cartesian component · E MAE: energy MAE per atom · "
        "OOD/ID: OOD F MAE over ID F MAE · vs rnd: OOD F MAE over the random split's "
        "OOD F MAE",
    )
    table.add_column("split", no_wrap=True)
    table.add_column("train/test", justify="right", no_wrap=True)
    for col in SPLIT_COLUMNS:
        table.add_column(col, justify="right", no_wrap=True)
    for s in splits:
        if s.get("skipped"):
            table.add_row(s["name"], *["–"] * 6)
            continue
        e = s.get("ood_energy_mae")
        table.add_row(
            s["name"],
            f"{s.get('n_train')}/{s.get('n_test')}",
            _f(s.get("id_force_mae"), ".4f"),
            _f(s.get("ood_force_mae"), ".4f"),
            _f(s.get("ood_ratio"), ".2f"),
            _f(s.get("vs_random"), ".2f"),
            _f(None if e is None else 1000 * e, ".3g"),
        )
    return table


def split_legend(splits: list[dict[str, Any]]) -> list[str]:
    """One line per split: what its test side holds out, or why it was skipped."""
    out = []
    for s in splits:
        what = f"skipped: {s['skipped']}" if s.get("skipped") else s.get("description", "")
        out.append(f"{s['name']}: {what}")
    return out


def print_splits(splits: list[dict[str, Any]]) -> None:
    """The split table and its legend."""
    console.print(splits_table(splits))
    for line in split_legend(splits):
        console.print(f"  {line}", markup=False)


def diagnosis_configs(
    run: Path | None,
    sets: Overrides,
    train_sets: Overrides,
    splits: tuple[str, ...],
) -> tuple[Any, Any, Any]:
    """The diagnostics config and the split study's model and ensemble configs.

    The diagnostics config is RUN's spec's section (or the defaults) with ``--set`` (keys may
    leave out the ``diagnostics.`` prefix) and ``--split`` applied; the model and ensemble
    configs are None unless ``--train-set`` is given (``run_diagnosis`` then takes the run's
    spec or the defaults).

    Raises:
        BadInput: listing every problem of ``--set`` and of ``--train-set``.
    """
    from chemgap.agent.cli.train import training_configs

    errors: list[str] = []
    cfg = model_cfg = ens_cfg = None
    try:
        cfg = _diagnostics_cfg(run, sets, splits)
    except BadInput as exc:
        errors.append(str(exc))
    try:
        if train_sets:
            model_cfg, ens_cfg = training_configs(train_sets)
    except BadInput as exc:
        errors.append(str(exc))
    if errors:
        raise BadInput("\n".join(errors))
    return cfg, model_cfg, ens_cfg


def _diagnostics_cfg(run: Path | None, sets: Overrides, splits: tuple[str, ...]) -> Any:
    from chemgap.campaigns.spec import DiagnosticsConfig

    base = None
    if run is not None:
        from chemgap.agent.store import RunStore

        base = {"diagnostics": RunStore.open(run).spec.diagnostics}
    extra = {"diagnostics.splits": list(splits)} if splits else None
    sections = {"diagnostics": DiagnosticsConfig}
    return build_sections(sections, sets.under("diagnostics"), extra=extra, base=base)[
        "diagnostics"
    ]


def _print_diagnosis(done: Any, alpha: float) -> None:
    from chemgap.agent.diagnostics.explain import explain_empty

    res = done.result
    b = res.baseline
    if res.source:
        console.print(f"diagnosed: {res.source}", markup=False)
    console.print(
        f"{b['n_structures']} structures, {b['n_atoms']} atoms · models {done.models} · "
        f"force MAE {b['force_mae']:.4f} eV/Å per component, mean |ΔF| "
        f"{b['force_error_mean']:.4f} eV/Å, "
        f"energy MAE {1000 * b['energy_mae_per_atom']:.3g} meV/atom · "
        f"uncertainty{' (calibrated)' if b['calibrated'] else ''} "
        f"{b['uncertainty_mean']:.4f} eV/Å, "
        f"Spearman ρ {b['spearman_uncertainty_error']:.2f}",
        markup=False,
    )
    if res.regions:
        console.print(
            f"{len(res.regions)} failure regions ({res.n_tested} rules tested, "
            f"Benjamini-Hochberg FDR {alpha:g}), most severe first"
        )
        console.print(regions_table(res.regions, "failure regions"))
    else:
        for line in explain_empty(res.diagnosed):
            console.print(line, markup=False)
    _print_provenance(res.provenance)
    _print_perception(res.perception)
    _print_resolved(res.resolved_regions)
    print_splits([s.to_dict() for s in res.splits])
    console.print(f"wrote {done.regions_path}", markup=False)


def perception_line(perception: dict[str, Any] | None) -> str | None:
    """One line when RDKit could not perceive the bonds of some molecules; None otherwise."""
    p = perception or {}
    failed = int(p.get("failed") or 0)
    if not failed:
        return None
    formulas = p.get("failed_formulas") or []
    shown = f" (e.g. {', '.join(formulas)})" if formulas else ""
    return (
        f"bond perception failed for {failed} of {p.get('tried')} molecules: they have no "
        f"functional-group features{shown}"
    )


def _print_perception(perception: dict[str, Any] | None) -> None:
    line = perception_line(perception)
    if line:
        console.print(line, markup=False)


def provenance_lines(checks: list[dict[str, Any]] | None) -> list[str]:
    """The sampling check, apart from the regions: one line per flagged provenance column.

    Nothing when no provenance column could be tested (files written before the check).
    """
    checks = checks or []
    if not checks:
        return []
    flagged = [c for c in checks if c.get("flagged")]
    names = ", ".join(str(c["feature"]) for c in checks)
    if not flagged:
        return [f"sampling check: the error follows none of {names} (provenance, not regions)"]
    head = "sampling check (provenance, never a failure region):"
    return [head, *(f"  ! {c['feature']}: {c.get('message', '')}" for c in flagged)]


def _print_provenance(checks: list[dict[str, Any]] | None) -> None:
    for line in provenance_lines(checks):
        console.print(line, markup=False)


def _print_resolved(resolved: list[dict[str, Any]]) -> None:
    """The previous diagnosis' regions not found any more, with how their atoms do now."""
    if not resolved:
        return
    console.print("not found since the last diagnosis (resolved: no longer significantly above")
    console.print("the baseline, ratio not rising):")
    for d in resolved:
        note = f"{d['note']}; " if d.get("note") else ""
        status = d.get("status", "resolved")
        console.print(
            f"  {d['id']} {d['rule']}: {status}, ratio {_f(d.get('ratio_before'), '.2f')} → "
            f"{_f(d.get('ratio_now'), '.2f')} ({note}last seen in iteration "
            f"{_f(d.get('last_seen'), 'd')})",
            markup=False,
        )


def _on_split(res: Any) -> None:
    msg = (
        f"skipped ({res.skipped})"
        if res.skipped
        else f"OOD force MAE {res.ood_force_mae:.4f} eV/Å per component"
    )
    console.print(f"split {res.name}: {msg}")


@click.command("diagnose")
@click.argument("run", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--models",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Model directory (instead of RUN).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Labelled structures (extxyz...) to diagnose on (with --models).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where regions.json and regions/ go (default: RUN/diagnosis, or ./diagnosis).",
)
@click.option(
    "--update",
    is_flag=True,
    help="RUN: replace the run's own diagnosis (RUN/regions.json, as the loop writes it).",
)
@click.option(
    "--split",
    "split_names",
    multiple=True,
    type=click.Choice([s.value for s in SplitName]),
    help="Split to report (repeatable; default: the spec's diagnostics.splits).",
)
@click.option(
    "--splits/--no-splits",
    "train_splits",
    default=False,
    show_default=True,
    help="Run the split study: train one ensemble per split (costs training time).",
)
@overrides_option(
    "--set",
    "sets",
    metavar="FIELD=V",
    help="Override a diagnostics field, e.g. --set alpha=0.1 (repeatable).",
)
@overrides_option(
    "--train-set",
    "train_sets",
    metavar="SECTION.FIELD=V",
    help="Split study: override model.* / ensemble.* (e.g. ensemble.max_epochs=20).",
)
@seed_option(default=None, help="Seed (default: the spec's, or 0).")
@click.option(
    "--ray/--no-ray",
    "use_ray",
    default=False,
    show_default=True,
    help="Train the split study's members as Ray tasks (implied by --address).",
)
@ray_options()
@handles_errors
def diagnose(
    run: Path | None,
    models: Path | None,
    data: Path | None,
    out: Path | None,
    update: bool,
    split_names: tuple[str, ...],
    train_splits: bool,
    sets: Overrides,
    train_sets: Overrides,
    seed: int | None,
    use_ray: bool,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Find where an ensemble fails, in chemical terms: RUN, or --models MODEL_DIR --data FILE.

    RUN: the newest ensemble on the run's fixed test set, into RUN/diagnosis (--update: into
    the run's own regions.json). Writes regions.json and regions/<id>.extxyz (exemplars), never
    over files chemgap did not write; prints the regions ranked by severity (or why there is
    none) and the split table (in- vs out-of-distribution error).
    """
    from chemgap.agent.diagnostics.service import run_diagnosis

    if run is not None and (models is not None or data is not None):
        raise BadInput("diagnose: give RUN or --models/--data, not both")
    if run is None and (models is None or data is None):
        raise BadInput("diagnose: give RUN, or both --models MODEL_DIR and --data LABELLED")
    cfg, model_cfg, ens_cfg = diagnosis_configs(run, sets, train_sets, split_names)
    enabled = use_ray or address is not None
    with with_runtime(enabled, address, num_cpus=num_cpus, dashboard=dashboard) as executor:
        done = run_diagnosis(
            run,
            models=models,
            data=data,
            out=out,
            update=update,
            cfg=cfg,
            seed=seed,
            train_splits=train_splits,
            model_cfg=model_cfg,
            ens_cfg=ens_cfg,
            executor=executor,
            on_split=_on_split,
        )
    _print_diagnosis(done, cfg.alpha)


@click.command("inspect")
@click.argument("run", type=click.Path(path_type=Path, exists=False))
@click.option("--region", "region_id", default=None, help="Show one region in detail.")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Copy exemplar structures (extxyz) here (with --region: that region's only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole regions.json.")
@click.option(
    "--remedies", is_flag=True, help="Show the run's remediation experiment (chemgap remedy)."
)
@handles_errors
def inspect(
    run: Path, region_id: str | None, export_dir: Path | None, as_json: bool, remedies: bool
) -> None:
    """Failure regions of RUN (or a diagnose output folder), ranked by severity, and the
    campaign's last probe run; with --remedies, its remediation experiment.
    """
    from chemgap.agent.cli.probe import print_probes

    if remedies:
        from chemgap.agent.cli.remedy import load_remedies, print_remedies

        summary = load_remedies(run)
        if as_json:
            click.echo(json.dumps(summary, indent=1))
        else:
            print_remedies(summary)
        return
    from chemgap.agent.diagnostics.storage import export_exemplars, load_regions
    from chemgap.agent.report.summary import probe_summary

    regions, payload = load_regions(run)
    if region_id is not None and region_id not in {r.id for r in regions}:
        known = ", ".join(r.id for r in regions) or "none"
        raise BadInput(f"--region: {region_id!r} is not a region of {run} (regions: {known})")
    if as_json:
        if region_id is not None:
            payload = next(d for d in payload["regions"] if d["id"] == region_id)
        click.echo(json.dumps(payload, indent=1))
    elif region_id is None:
        _overview(regions, payload)
        print_probes(probe_summary(run))
    else:
        _detail(next(r for r in regions if r.id == region_id))
    if export_dir is not None:
        files = export_exemplars(run, export_dir, region_id)
        console.print(f"exported {len(files)} exemplar file(s) to {export_dir}")


def _overview(regions: list[Any], payload: dict[str, Any]) -> None:
    """``inspect RUN``: the regions (or why there are none), the resolved, the splits."""
    from chemgap.agent.diagnostics.explain import explain_empty

    it = payload.get("iteration")
    if payload.get("source"):
        console.print(f"diagnosed: {payload['source']}", markup=False)
    from chemgap.agent.evaluation import quality_text

    title = f"{len(regions)} failure regions" + (f" · iteration {it}" if it is not None else "")
    tentative = quality_text(payload.get("quality"))
    if tentative and regions:
        title += f"\n[yellow]{tentative}[/]"
    if regions:
        console.print(regions_table(regions, title))
    else:
        console.print(title)
        for line in explain_empty(payload.get("diagnosed")):
            console.print(line, markup=False)
    _print_provenance(payload.get("provenance"))
    _print_perception(payload.get("perception"))
    resolved = payload.get("resolved_regions")
    if resolved:
        _print_resolved(resolved)
    elif payload.get("resolved"):
        console.print(f"resolved since last diagnosis: {', '.join(payload['resolved'])}")
    if payload.get("splits"):
        print_splits(payload["splits"])


def _folded_lines(r: Any) -> list[str]:
    """One line per region folded under ``r``: its rule and statistics, and for a conjunction
    folded under its parent, that it is not shown worse than the parent's other atoms.
    """
    lines = []
    for f in getattr(r, "folded", None) or []:
        line = (
            f"{f.get('id')} {f.get('rule')}: Jaccard {_f(f.get('jaccard'), '.2f')}, "
            f"ratio {_f(f.get('ratio'), '.2f')}, q {_f(f.get('q_value'), '.0e')}"
        )
        if f.get("parent_q") is not None:
            line += (
                f", not shown worse than this region's other atoms (q {_f(f['parent_q'], '.2g')})"
            )
        lines.append(line)
    return lines


def _statistics_rows(table: Table, r: Any) -> None:
    """The error, the ratio and their CIs (at the level they were computed), the CI level of a
    significant region, and a conjunction's comparison with its parent.
    """
    from chemgap.agent.diagnostics.region import ci_text, level_percent, parent_text

    ci = ci_text(r)
    table.add_row(
        "mean |ΔF|",
        f"{_f(r.mean_error, '.4f')} eV/Å ({ci} {_f(r.ci[0], '.4f')}–{_f(r.ci[1], '.4f')}), "
        f"baseline (all atoms) {_f(r.baseline, '.4f')} eV/Å",
    )
    table.add_row(
        "ratio to baseline",
        f"{_f(r.ratio, '.2f')} ({ci} {_f(r.ratio_ci[0], '.2f')}–{_f(r.ratio_ci[1], '.2f')})",
    )
    if r.significant:
        table.add_row(
            "CI level",
            f"{level_percent(r.ci_level)} %: false-coverage-rate adjusted (Benjamini & "
            "Yekutieli 2005), 1 − R·α/m with R of the m rules tested significant, so that at "
            "most α of the reported intervals are expected to miss",
        )
    if getattr(r, "parent", None):
        table.add_row("parent", escape(parent_text(r)))


def _detail(r: Any) -> None:
    from chemgap.agent.diagnostics.region import level_text

    table = Table(title=f"region {r.id}", show_header=False)
    table.add_row("rule", escape(r.rule))
    table.add_row("level", escape(level_text(r)))
    machine = getattr(r, "machine_rule", None) or r.rule
    table.add_row(
        "machine rule", escape(machine) + " [dim](selects the atoms; the id hashes it)[/]"
    )
    if r.also:
        table.add_row("same atoms as", escape("; ".join(r.also[:6])))
    for line in _folded_lines(r):
        table.add_row("folded", escape(line))
    table.add_row("found by", ", ".join(r.methods))
    table.add_row(
        "covers", f"{r.n_atoms} atoms ({100 * r.coverage:.1f}%) in {r.n_structures} structures"
    )
    table.add_row("elements", ", ".join(f"{k} {v}" for k, v in r.elements.items()))
    _statistics_rows(table, r)
    table.add_row("p / q (BH)", f"{_f(r.p_value, '.2g')} / {_f(r.q_value, '.2g')}")
    if getattr(r, "complement", None):
        table.add_row("other side", f"{escape(r.complement)} (tested with it: p is two-sided)")
    if r.held_out:
        table.add_row(
            "scored on",
            f"{r.scored_structures} held-out structures (the tree rule was grown on the others)",
        )
    table.add_row(
        "uncertainty",
        f"{_f(r.uncertainty_mean, '.4f')} eV/Å (× {_f(r.uncertainty_ratio, '.2f')} overall); "
        f"error/uncertainty × {_f(r.error_to_uncertainty, '.2f')} overall"
        + (" — [bold red]SILENT[/]: active learning will not go there" if r.silent else ""),
    )
    if r.enriched:
        table.add_row("enriched", escape("; ".join(r.enriched)))
    table.add_row("severity", _f(r.severity, ".3g"))
    if r.first_seen is not None:
        table.add_row("seen", f"iteration {r.first_seen} to {r.last_seen}")
    if r.history:
        table.add_row(
            "ratio by iteration",
            ", ".join(f"{h.get('iteration')}: {_f(h.get('ratio'), '.2f')}" for h in r.history),
        )
    console.print(table)
    file = r.exemplars[0].get("file") if r.exemplars else None
    ex = Table(
        title="exemplars (highest mean |ΔF| inside the region)",
        caption=f"frames of {file}" if file else None,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for col in ("frame", "index", "db id", "formula", "atoms", "inside", "mean |ΔF| eV/Å"):
        ex.add_column(col, overflow="fold")
    for e in r.exemplars:
        ex.add_row(
            str(e.get("frame")),
            str(e.get("index")),
            str(e.get("db_id") if e.get("db_id") is not None else "–"),
            str(e.get("formula")),
            str(e.get("n_atoms")),
            str(e.get("atoms_in_region")),
            _f(e.get("mean_error"), ".4f"),
        )
    console.print(ex)
