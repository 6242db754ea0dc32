"""``chemgap label``: label any structure file ASE reads with an oracle, as Ray tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from chemgap.agent.cli.common import address_option, console, handles_errors, parse_assignments
from chemgap.agent.errors import BadInput
from chemgap.oracle.config import OracleConfig, OracleName, check_elements


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``--param K=V`` values typed by YAML (``charge=1`` -> 1, ``kwargs={a: 1}`` -> dict)."""
    out: dict[str, Any] = {}
    for key, text in parse_assignments(items, "--param").items():
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise BadInput(f"--param {key}: {text!r} is not a YAML value ({exc})") from None
    return out


def _config(**fields: Any) -> OracleConfig:
    try:
        return OracleConfig(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "oracle"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise BadInput(f"oracle {where}: {message}") from None


def _read(path: Path, index: str, fmt: str | None) -> list:
    import ase.io

    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        structures = ase.io.read(path, index=index, format=fmt)
    except Exception as exc:
        raise BadInput(f"IN: cannot read {path} as a structure file ({exc})") from None
    structures = structures if isinstance(structures, list) else [structures]
    if not structures:
        raise BadInput(f"IN: {path} holds no structures at index {index!r}")
    return structures


@click.command("label")
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="extxyz file to write (REF_energy, REF_forces, REF_stress, label_status per structure).",
)
@click.option(
    "--oracle",
    "oracle_name",
    required=True,
    type=click.Choice([o.value for o in OracleName]),
    help="Reference calculator.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="Backend parameter, value parsed as YAML (e.g. method=GFN1-xTB, charge=1). Repeatable.",
)
@click.option("--d3", is_flag=True, help="Add D3(BJ) dispersion (not with xtb).")
@click.option("--cpus-per-call", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--timeout",
    "timeout_s",
    default=600.0,
    show_default=True,
    type=float,
    help="Wall-time limit of one oracle call, s (the call is killed past it).",
)
@click.option("--max-retries", default=2, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--index", default=":", show_default=True, help="Which structures of IN (ASE index syntax)."
)
@click.option("--format", "fmt", default=None, help="Format of IN (default: from the name).")
@address_option
@click.option("--num-cpus", default=None, type=click.IntRange(min=1), help="CPUs of a local Ray.")
@click.option(
    "--dashboard/--no-dashboard",
    default=False,
    show_default=True,
    help="Start the Ray dashboard with a local instance.",
)
@handles_errors
def label(
    input_path: Path,
    output_path: Path,
    oracle_name: str,
    params: tuple[str, ...],
    d3: bool,
    cpus_per_call: int,
    timeout_s: float,
    max_retries: int,
    index: str,
    fmt: str | None,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Label the structures in IN with an oracle and write extxyz to OUT.

    Every structure is written, failures included (label_status says which category), in the
    order of IN, each as soon as it and all before it are done. The ``ase`` oracle imports the
    calculator named by --param calculator=module:Class: that runs code of your choosing.
    """
    import ase.io

    from chemgap.agent.runtime import ray_runtime
    from chemgap.oracle.backends import check_backend
    from chemgap.oracle.labelling import label_batch

    if timeout_s <= 0:
        raise BadInput(f"--timeout: must be > 0 s (got {timeout_s:g})")
    config = _config(
        name=oracle_name,
        params=_parse_params(params),
        d3=d3,
        cpus_per_call=cpus_per_call,
        timeout_s=timeout_s,
        max_retries=max_retries,
    )
    structures = _read(input_path, index, fmt)
    elements = {s for atoms in structures for s in atoms.get_chemical_symbols()}
    try:
        check_elements(config, elements)
        check_backend(config)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if output_path.resolve() == input_path.resolve():
        raise BadInput("-o: OUT must differ from IN")
    if not output_path.parent.exists():
        raise BadInput(f"-o: directory {output_path.parent} does not exist")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    total = len(structures)
    done: dict[int, Any] = {}
    next_to_write = 0
    with ray_runtime(address, num_cpus=num_cpus, dashboard=dashboard) as runtime:
        where = f"Ray at {runtime.address} ({runtime.num_cpus} CPUs)"
        if runtime.dashboard_url:
            where += f", dashboard {runtime.dashboard_url}"
        console.print(f"labelling {total} structures from {input_path} with {config.name}; {where}")
        with (
            output_path.open("w") as out,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            bar = progress.add_task(f"label · {config.name}", total=total)

            def on_result(i: int, result: Any) -> None:
                nonlocal next_to_write
                done[i] = result.atoms
                while next_to_write in done:
                    ase.io.write(out, done.pop(next_to_write), format="extxyz")
                    next_to_write += 1
                out.flush()
                progress.advance(bar)

            summary = label_batch(structures, config, on_result=on_result)

    console.print(f"wrote {total} structures to {output_path}")
    console.print(f"ok: {summary.n_ok}/{summary.n_total}")
    console.print(f"failed: {summary.n_failed}")
    for category, count in sorted(summary.failures.items()):
        console.print(f"  {category.value}: {count}")
    console.print(
        f"oracle seconds per label: {summary.seconds_per_label:.4g} s; "
        f"wall {summary.wall_seconds:.3g} s ({summary.labels_per_second:.3g} labels/s)"
    )
