"""``chemgap explore``: batched MD with an ensemble, and a diverse batch of candidates to label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from chemgap.agent.cli.common import console, err_console, handles_errors, read_structures
from chemgap.agent.cli.options import build_sections, ray_options, seed_option, with_runtime
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import (
    ExplorationConfig,
    SelectionConfig,
    SelectionStrategy,
    TrustConfig,
    TrustMode,
)
from chemgap.models.io import ENSEMBLE_FILE

FLAGS = {
    "exploration.walkers": "--walkers",
    "exploration.steps": "--steps",
    "exploration.temperatures_K": "--temperature",
    "exploration.timestep_fs": "--timestep-fs",
    "exploration.trust": "--lower/--upper",
}
"""The exploration field each of ``explore``'s flags sets (named in problem lines)."""

UNCALIBRATED_WARNING = (
    "[yellow]warning:[/] the ensemble has no stored calibration, so the --holdout trust levels "
    "come from its uncalibrated force std; calibrate it with 'chemgap train --calibrate "
    "HELD_OUT', or use a campaign's models ('chemgap run' calibrates every iteration's)"
)
"""What ``explore --holdout`` prints when the ensemble's std is not calibrated."""

_EXPLORATION = ExplorationConfig.model_fields
_TRUST = TrustConfig.model_fields
_SELECTION = SelectionConfig.model_fields


def exploration_config(**options: Any) -> ExplorationConfig:
    """The exploration section from ``explore``'s options (``walkers``, ``steps``, ...).

    Args:
        **options: ``walkers``, ``steps``, ``temperatures_K``, ``timestep_fs`` and ``trust``
            (a dict of trust fields), as :class:`ExplorationConfig` names them; None: the
            spec's default.

    Raises:
        BadInput: listing every problem, under the flags that set them.
    """
    extra = {f"exploration.{k}": v for k, v in options.items() if v is not None}
    out = build_sections(
        {"exploration": ExplorationConfig}, extra=extra, source="explore", names=FLAGS
    )
    return out["exploration"]  # type: ignore[return-value]


def _table(fractions: dict[str, dict[str, float]]) -> Table:
    table = Table(title="exploration")
    for col in ("walker group", "accurate", "candidate", "failed"):
        table.add_column(col, justify="left" if col == "walker group" else "right")
    for group, frac in fractions.items():
        table.add_row(
            group, *(f"{100 * frac[k]:.1f}%" for k in ("accurate", "candidate", "failed"))
        )
    return table


@click.command("explore")
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("seeds", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="extxyz of the selected candidates.",
)
@click.option(
    "--walkers",
    type=click.IntRange(min=1),
    default=None,
    help="MD walkers (default: one per seed structure).",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=_EXPLORATION["steps"].default, show_default=True
)
@click.option(
    "--temperature",
    "temperatures",
    type=click.FloatRange(min=0, min_open=True),
    multiple=True,
    help="K; repeat for a ladder (walkers cycle through it) "
    f"[{', '.join(f'{t:g}' for t in _EXPLORATION['temperatures_K'].default)}].",
)
@click.option(
    "--timestep-fs",
    type=click.FloatRange(min=0, min_open=True, max=10),
    default=_EXPLORATION["timestep_fs"].default,
    show_default=True,
)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=_SELECTION["batch_size"].default,
    show_default=True,
    help="Structures to select for labelling.",
)
@click.option(
    "--strategy",
    type=click.Choice([s.value for s in SelectionStrategy]),
    default=SelectionStrategy(_SELECTION["strategy"].default).value,
    show_default=True,
)
@click.option(
    "--holdout",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Labelled in-distribution data: calibrated per-element trust levels.",
)
@click.option(
    "--lower",
    type=float,
    default=_TRUST["lower"].default,
    show_default=True,
    help="Fixed trust level, eV/Å (without --holdout).",
)
@click.option(
    "--upper",
    type=float,
    default=_TRUST["upper"].default,
    show_default=True,
    help="Fixed restart level, eV/Å (without --holdout).",
)
@seed_option()
@click.option(
    "--tasks",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Walker groups run as parallel Ray tasks (Ray starts when > 1 or with --address).",
)
@ray_options()
@handles_errors
def explore(
    model_dir: Path,
    seeds: Path,
    out: Path,
    walkers: int | None,
    steps: int,
    temperatures: tuple[float, ...],
    timestep_fs: float,
    budget: int,
    strategy: str,
    holdout: Path | None,
    lower: float,
    upper: float,
    seed: int,
    tasks: int,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Explore from SEEDS with the ensemble in MODEL_DIR; write a batch to label to --output.

    The selected candidates are written with their uncertainty and provenance
    (md_failure=False), followed by the last frame of each walker the model drove into an
    unphysical geometry (md_failure=True).
    """
    import ase.io

    from chemgap.agent.explore import explore_and_select
    from chemgap.models.ensemble import Ensemble

    mode = TrustMode.CALIBRATED if holdout else TrustMode.FIXED
    cfg = exploration_config(
        walkers=walkers,
        steps=steps,
        timestep_fs=timestep_fs,
        temperatures_K=list(temperatures) or None,
        trust={"mode": mode.value, "lower": lower, "upper": upper},
    )
    if not (model_dir / ENSEMBLE_FILE).is_file():
        raise BadInput(
            f"MODEL_DIR: {model_dir} holds no {ENSEMBLE_FILE} (train one with 'chemgap train')"
        )
    start = read_structures(seeds, "SEEDS")
    n = walkers or len(start)
    structures = [start[i % len(start)].copy() for i in range(n)]
    cfg = cfg.model_copy(update={"walkers": n})
    ref = read_structures(holdout, "--holdout") if holdout else None
    ensemble = Ensemble.load(model_dir)
    if ref is not None and ensemble.calibration is None:
        err_console.print(UNCALIBRATED_WARNING, soft_wrap=True)
    enabled = tasks > 1 or address is not None
    with (
        with_runtime(enabled, address, num_cpus=num_cpus, dashboard=dashboard) as executor,
        console.status(f"exploring: {n} walkers × {steps} steps"),
    ):
        try:
            sel = explore_and_select(
                ensemble,
                structures,
                cfg,
                budget=budget,
                strategy=strategy,
                holdout=ref,
                seed=seed,
                n_tasks=tasks,
                executor=executor,
            )
        except ValueError as exc:
            raise BadInput(f"SEEDS: {exc}") from None
    result = sel.result
    console.print(_table(result.fractions()))
    ase.io.write(out, sel.selected + sel.failure_frames, format="extxyz")
    console.print(
        f"{len(result.candidates)} candidates, {len(result.failures)} md_failures in "
        f"{result.steps} walker-steps; wrote {len(sel.selected)} selected + "
        f"{len(sel.failure_frames)} failure frames to {out}"
    )
