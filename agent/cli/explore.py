"""``chemgap explore``: batched MD with an ensemble, and a diverse batch of candidates to label."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
import numpy as np
from rich.table import Table

from chemgap.agent.cli.common import address_option, console, handles_errors, read_structures
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import SelectionStrategy


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
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--temperature",
    "temperatures",
    type=click.FloatRange(min=0, min_open=True),
    multiple=True,
    help="K; repeat for a ladder (walkers cycle through it) [300].",
)
@click.option(
    "--timestep-fs",
    type=click.FloatRange(min=0, min_open=True, max=10),
    default=1.0,
    show_default=True,
)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Structures to select for labelling.",
)
@click.option(
    "--strategy",
    type=click.Choice([s.value for s in SelectionStrategy]),
    default="diverse",
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
    default=0.05,
    show_default=True,
    help="Fixed trust level, eV/Å (without --holdout).",
)
@click.option(
    "--upper",
    type=float,
    default=0.15,
    show_default=True,
    help="Fixed restart level, eV/Å (without --holdout).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--tasks",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Walker groups run as parallel Ray tasks.",
)
@address_option
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
) -> None:
    """Explore from the structures in SEEDS with the ensemble in MODEL_DIR; write the selected
    candidates (with their uncertainty and provenance) to --output."""
    import ase.io
    from pydantic import ValidationError

    from chemgap.agent.explore import explore_groups, trust_levels
    from chemgap.agent.runtime import ray_runtime
    from chemgap.agent.selection import Candidates, select
    from chemgap.campaigns.spec import ExplorationConfig
    from chemgap.models.ensemble import Ensemble

    if not (model_dir / "ensemble.json").is_file():
        raise BadInput(
            f"MODEL_DIR: {model_dir} holds no ensemble.json (train one with 'chemgap train')"
        )
    start = read_structures(seeds, "SEEDS")
    n = walkers or len(start)
    structures = [start[i % len(start)].copy() for i in range(n)]
    try:
        cfg = ExplorationConfig(
            walkers=n,
            steps=steps,
            temperatures_K=list(temperatures) or [300.0],
            timestep_fs=timestep_fs,
            trust={"mode": "calibrated" if holdout else "fixed", "lower": lower, "upper": upper},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["loc"][0] == "trust":
            raise BadInput(f"--lower/--upper: {msg} (got {lower:g}, {upper:g} eV/Å)") from None
        raise BadInput(f"--{first['loc'][0]}: {msg} (got {first.get('input')!r})") from None
    ensemble = Ensemble.load(model_dir)
    missing = {s for a in structures for s in a.get_chemical_symbols()} - set(ensemble.elements)
    if missing:
        raise BadInput(
            f"SEEDS: element(s) {', '.join(sorted(missing))} are not in the "
            f"ensemble's elements ({', '.join(ensemble.elements)})"
        )
    levels = None
    if holdout is not None:
        ref = ensemble.predict(read_structures(holdout, "--holdout"))
        levels = trust_levels(
            cfg.trust,
            force_std_atom_cal=ref.force_std_atom_cal,
            numbers=ref.numbers,
            system_idx=ref.system_idx,
        )
    use_ray = tasks > 1 or address is not None
    with ray_runtime(address) if use_ray else contextlib.nullcontext() as info:
        if info is not None and info.dashboard_url:
            console.print(f"Ray dashboard: {info.dashboard_url}")
        with console.status(f"exploring: {n} walkers × {steps} steps"):
            result = explore_groups(
                ensemble, structures, cfg, n_tasks=tasks, levels=levels, seed=seed
            )
    table = Table(title="exploration")
    for col in ("walker group", "accurate", "candidate", "failed"):
        table.add_column(col, justify="left" if col == "walker group" else "right")
    for group, frac in result.fractions().items():
        table.add_row(
            group, *(f"{100 * frac[k]:.1f}%" for k in ("accurate", "candidate", "failed"))
        )
    console.print(table)
    chosen = []
    if result.candidates:
        cands = result.candidates
        sel = select(
            Candidates(
                uncertainty=[c.info["uncertainty"] for c in cands],
                descriptors=ensemble.descriptors(cands),
                elements=[frozenset(c.get_chemical_symbols()) for c in cands],
            ),
            budget=budget,
            strategy=strategy,
            rng=np.random.default_rng(seed),
        )
        chosen = [cands[i] for i in sel.indices]
    for atoms in chosen:
        atoms.info["md_failure"] = False
    failures = [f.frames[-1] for f in result.failures]
    for atoms in failures:
        atoms.info["md_failure"] = True
    ase.io.write(out, chosen + failures, format="extxyz")
    console.print(
        f"{len(result.candidates)} candidates, {len(result.failures)} md_failures in "
        f"{result.steps} walker-steps; wrote {len(chosen)} selected + {len(failures)} failure "
        f"frames to {out}"
    )
