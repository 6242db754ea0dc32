"""``chemgap diagnose`` and ``chemgap inspect``: failure regions tied to chemistry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich import box
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


def regions_table(regions: list[Any], title: str) -> Table:
    """Failure regions as a table, one row each, in the order given."""
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption="error: mean force-error norm, eV/Å · ×: ratio to the baseline (95% CI) · "
        "q: BH-adjusted p · silent: high error, low uncertainty",
    )
    show_seen = any(r.first_seen is not None for r in regions)
    table.add_column("#", justify="right")
    table.add_column("id", no_wrap=True)
    table.add_column("rule", overflow="fold", min_width=16)
    table.add_column("atoms", justify="right")
    table.add_column("error", justify="right")
    table.add_column("× (95% CI)", no_wrap=True)
    table.add_column("q", justify="right")
    table.add_column("silent")
    if show_seen:
        table.add_column("seen", justify="right")
    for i, r in enumerate(regions, 1):
        row = [
            str(i),
            r.id,
            r.rule,
            str(r.n_atoms),
            _f(r.mean_error, ".3f"),
            f"{_f(r.ratio, '.2f')} ({_f(r.ratio_ci[0], '.2f')}–{_f(r.ratio_ci[1], '.2f')})",
            _f(r.q_value, ".0e"),
            "[bold red]yes[/]" if r.silent else "",
        ]
        if show_seen:
            row.append("–" if r.first_seen is None else f"{r.first_seen}–{r.last_seen}")
        table.add_row(*row)
    return table


def splits_table(splits: list[dict[str, Any]]) -> Table:
    """The split study as a table: in- vs out-of-distribution error per split (its dicts)."""
    trained = any(s.get("trained") for s in splits)
    title = "splits: " + (
        "one ensemble trained per split (ID = held-out part of the train side)"
        if trained
        else "the given ensemble on both sides (ID = train side, OOD = test side)"
    )
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        caption="force MAE: eV/Å per component · OOD E: energy MAE, meV/atom",
    )
    table.add_column("split", no_wrap=True)
    for col in ("train", "test", "ID MAE", "OOD MAE", "OOD/ID", "OOD/rnd", "OOD E"):
        table.add_column(col, justify="right")
    table.add_column("held out", overflow="fold", min_width=16)
    for s in splits:
        if s.get("skipped"):
            table.add_row(s["name"], *["–"] * 7, f"[dim]skipped: {s['skipped']}[/]")
            continue
        e = s.get("ood_energy_mae")
        table.add_row(
            s["name"],
            str(s.get("n_train")),
            str(s.get("n_test")),
            _f(s.get("id_force_mae"), ".4f"),
            _f(s.get("ood_force_mae"), ".4f"),
            _f(s.get("ood_ratio"), ".2f"),
            _f(s.get("vs_random"), ".2f"),
            _f(None if e is None else 1000 * e, ".3g"),
            s.get("description", ""),
        )
    return table


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
    res = done.result
    b = res.baseline
    console.print(
        f"{b['n_structures']} structures, {b['n_atoms']} atoms · models {done.models} · "
        f"force MAE {b['force_mae']:.4f} eV/Å, mean error norm {b['force_error_mean']:.4f} eV/Å, "
        f"energy MAE {1000 * b['energy_mae_per_atom']:.3g} meV/atom · "
        f"uncertainty{' (calibrated)' if b['calibrated'] else ''} "
        f"{b['uncertainty_mean']:.4f} eV/Å, "
        f"Spearman ρ {b['spearman_uncertainty_error']:.2f}",
        soft_wrap=True,
    )
    console.print(
        f"{len(res.regions)} failure regions ({res.n_tested} rules tested, "
        f"Benjamini-Hochberg FDR {alpha:g}), most severe first",
        soft_wrap=True,
    )
    if res.regions:
        console.print(regions_table(res.regions, "failure regions"))
    console.print(splits_table([s.to_dict() for s in res.splits]))
    console.print(f"wrote {done.regions_path}")


def _on_split(res: Any) -> None:
    msg = f"skipped ({res.skipped})" if res.skipped else f"OOD force MAE {res.ood_force_mae:.4f}"
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
    help="Where regions.json and regions/ go (default: RUN, or ./diagnosis).",
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

    Writes regions.json and regions/<id>.extxyz (exemplars); prints the regions ranked by
    severity and the split table (in- vs out-of-distribution error).
    """
    from chemgap.agent.diagnostics.diagnose import run_diagnosis

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
@handles_errors
def inspect(run: Path, region_id: str | None, export_dir: Path | None, as_json: bool) -> None:
    """Failure regions of RUN (or a diagnose output folder), ranked by severity."""
    from chemgap.agent.diagnostics.diagnose import export_exemplars, load_regions

    regions, payload = load_regions(run)
    if region_id is not None and region_id not in {r.id for r in regions}:
        known = ", ".join(r.id for r in regions) or "none"
        raise BadInput(f"--region: {region_id!r} is not a region of {run} (regions: {known})")
    if as_json:
        if region_id is not None:
            payload = next(d for d in payload["regions"] if d["id"] == region_id)
        click.echo(json.dumps(payload, indent=1))
    elif region_id is None:
        it = payload.get("iteration")
        title = f"{len(regions)} failure regions" + (f" · iteration {it}" if it is not None else "")
        console.print(regions_table(regions, title))
        if payload.get("resolved"):
            console.print(f"resolved since last diagnosis: {', '.join(payload['resolved'])}")
        if payload.get("splits"):
            console.print(splits_table(payload["splits"]))
    else:
        _detail(next(r for r in regions if r.id == region_id))
    if export_dir is not None:
        files = export_exemplars(run, export_dir, region_id)
        console.print(f"exported {len(files)} exemplar file(s) to {export_dir}")


def _detail(r: Any) -> None:
    table = Table(title=f"region {r.id}", show_header=False)
    table.add_row("rule", r.rule)
    if r.also:
        table.add_row("same atoms as", "; ".join(r.also[:6]))
    table.add_row("found by", ", ".join(r.methods))
    table.add_row(
        "covers", f"{r.n_atoms} atoms ({100 * r.coverage:.1f}%) in {r.n_structures} structures"
    )
    table.add_row("elements", ", ".join(f"{k} {v}" for k, v in r.elements.items()))
    table.add_row(
        "force error",
        f"{_f(r.mean_error, '.4f')} eV/Å (95% CI {_f(r.ci[0], '.4f')}–{_f(r.ci[1], '.4f')}), "
        f"baseline {_f(r.baseline, '.4f')}",
    )
    table.add_row(
        "ratio to baseline",
        f"{_f(r.ratio, '.2f')} (95% CI {_f(r.ratio_ci[0], '.2f')}–{_f(r.ratio_ci[1], '.2f')})",
    )
    table.add_row("p / q (BH)", f"{_f(r.p_value, '.2g')} / {_f(r.q_value, '.2g')}")
    table.add_row(
        "uncertainty",
        f"{_f(r.uncertainty_mean, '.4f')} eV/Å (× {_f(r.uncertainty_ratio, '.2f')} overall); "
        f"error/uncertainty × {_f(r.error_to_uncertainty, '.2f')} overall"
        + (" — [bold red]SILENT[/]: active learning will not go there" if r.silent else ""),
    )
    if r.enriched:
        table.add_row("enriched", "; ".join(r.enriched))
    table.add_row("severity", _f(r.severity, ".3g"))
    if r.first_seen is not None:
        table.add_row("seen", f"iteration {r.first_seen} to {r.last_seen}")
    console.print(table)
    ex = Table(title="exemplars (highest error inside the region)")
    for col in (
        "frame",
        "structure",
        "db id",
        "formula",
        "atoms",
        "in region",
        "error eV/Å",
        "file",
    ):
        ex.add_column(col)
    for e in r.exemplars:
        ex.add_row(
            str(e.get("frame")),
            str(e.get("index")),
            str(e.get("db_id") if e.get("db_id") is not None else "–"),
            str(e.get("formula")),
            str(e.get("n_atoms")),
            str(e.get("atoms_in_region")),
            _f(e.get("mean_error"), ".4f"),
            str(e.get("file")),
        )
    console.print(ex)
