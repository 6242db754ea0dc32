"""``chemgap label``: label any structure file ASE reads with an oracle, as Ray tasks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from chemgap.agent.cli.common import console, handles_errors
from chemgap.agent.cli.options import (
    Overrides,
    build_sections,
    overrides_option,
    ray_options,
    require_trusted,
    trust_code_option,
)
from chemgap.agent.errors import BadInput
from chemgap.common.keys import ENERGY_KEY, FORCES_KEY, STATUS_KEY, STRESS_KEY
from chemgap.oracle.config import OracleConfig, OracleName, check_elements

FLAGS = {
    "oracle.name": "--oracle",
    "oracle.params": "--param",
    "oracle.d3": "--d3",
    "oracle.cpus_per_call": "--cpus-per-call",
    "oracle.timeout_s": "--timeout",
    "oracle.max_retries": "--max-retries",
}
"""The oracle field each of ``label``'s flags sets (named in problem lines)."""


def oracle_config(params: Overrides, **fields: Any) -> OracleConfig:
    """The oracle config from ``--param K=V`` items (typed as YAML) and the command's flags.

    Args:
        params: backend parameters (``method=GFN1-xTB``, ``charge=1``, ``kwargs={a: 1}``).
        **fields: other :class:`OracleConfig` fields.

    Raises:
        BadInput: listing every problem.
    """
    overrides = Overrides(
        params.flag,
        {f"oracle.params.{k}": v for k, v in params.values.items()},
        params.malformed,
    )
    extra = {f"oracle.{k}": v for k, v in fields.items()}
    out = build_sections(
        {"oracle": OracleConfig}, overrides, extra=extra, source="oracle", names=FLAGS
    )
    return out["oracle"]  # type: ignore[return-value]


def _read(path: Path, index: str, fmt: str | None) -> list:
    """IN's structures at ``--index``, unchecked: a bad geometry is labelled as a failure."""
    from chemgap.agent.structio import read_file

    return read_file(path, "IN", index, fmt)


def _check(config: OracleConfig, structures: list, input_path: Path, output_path: Path) -> None:
    from chemgap.oracle.backends import check_backend

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


@contextlib.contextmanager
def _writer(out: IO[str], total: int, name: str) -> Iterator[Callable[[int, Any], None]]:
    """A progress bar; yields ``on_result`` that writes results in input order as they come."""
    import ase.io
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    done: dict[int, Any] = {}
    next_to_write = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(f"label · {name}", total=total)

        def on_result(i: int, result: Any) -> None:
            nonlocal next_to_write
            done[i] = result.atoms
            while next_to_write in done:
                ase.io.write(out, done.pop(next_to_write), format="extxyz")
                next_to_write += 1
            out.flush()
            progress.advance(bar)

        yield on_result


def _report(summary: Any, total: int, output_path: Path) -> None:
    console.print(f"wrote {total} structures to {output_path}")
    console.print(f"ok: {summary.n_ok}/{summary.n_total}")
    console.print(f"failed: {summary.n_failed}")
    for category, count in sorted(summary.failures.items()):
        console.print(f"  {category.value}: {count}")
    console.print(
        f"oracle seconds per label: {summary.seconds_per_label:.4g} s; "
        f"wall {summary.wall_seconds:.3g} s ({summary.labels_per_second:.3g} labels/s)"
    )


@click.command("label")
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"extxyz file to write ({ENERGY_KEY}, {FORCES_KEY}, {STRESS_KEY}, {STATUS_KEY} "
    "per structure).",
)
@click.option(
    "--oracle",
    "oracle_name",
    required=True,
    type=click.Choice([o.value for o in OracleName]),
    help="Reference calculator.",
)
@overrides_option(
    "--param",
    "params",
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
@trust_code_option
@ray_options()
@handles_errors
def label(
    input_path: Path,
    output_path: Path,
    oracle_name: str,
    params: Overrides,
    d3: bool,
    cpus_per_call: int,
    timeout_s: float,
    max_retries: int,
    index: str,
    fmt: str | None,
    trust_code: bool,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Label the structures in IN with an oracle and write extxyz to OUT.

    Every structure is written, failures included (label_status says which category), in the
    order of IN, each as soon as it and all before it are done. The ``ase`` oracle imports the
    calculator named by --param calculator=module:Class: that runs code of your choosing, so it
    needs --trust-code.
    """
    from chemgap.agent.runtime import ray_runtime
    from chemgap.oracle.labelling import label_batch

    config = oracle_config(
        params,
        name=oracle_name,
        d3=d3,
        cpus_per_call=cpus_per_call,
        timeout_s=timeout_s,
        max_retries=max_retries,
    )
    require_trusted(config, trust_code)
    structures = _read(input_path, index, fmt)
    _check(config, structures, input_path, output_path)
    total = len(structures)
    with ray_runtime(address, num_cpus=num_cpus, dashboard=dashboard) as runtime:
        where = f"Ray at {runtime.address} ({runtime.num_cpus} CPUs)"
        if runtime.dashboard_url:
            where += f", dashboard {runtime.dashboard_url}"
        console.print(f"labelling {total} structures from {input_path} with {config.name}; {where}")
        with output_path.open("w") as out, _writer(out, total, config.name) as on_result:
            summary = label_batch(
                structures, config, on_result=on_result, executor=runtime.executor
            )
    _report(summary, total, output_path)
