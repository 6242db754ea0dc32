"""``chemgap train`` and ``chemgap predict``: MACE ensembles from labelled structure files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from chemgap.agent.cli.common import (
    address_option,
    console,
    handles_errors,
    parse_assignments,
    read_structures,
)
from chemgap.agent.errors import BadInput
from chemgap.models.config import EnsembleConfig, EnsembleMode, ModelConfig

log = logging.getLogger(__name__)

_SECTIONS = {"model": ModelConfig, "ensemble": EnsembleConfig}


def _configs(
    assignments: tuple[str, ...], members: int | None, mode: str | None
) -> tuple[ModelConfig, EnsembleConfig]:
    """Defaults overridden by ``--set section.field=value`` (values parsed as YAML)."""
    fields: dict[str, dict[str, Any]] = {"model": {}, "ensemble": {}}
    for key, text in parse_assignments(assignments).items():
        section, dot, name = key.partition(".")
        if not dot or section not in _SECTIONS:
            raise BadInput(f"--set {key}: expected model.FIELD or ensemble.FIELD")
        allowed = list(_SECTIONS[section].model_fields)
        if name not in allowed:
            raise BadInput(f"--set {key}: unknown field {name!r}; allowed: {', '.join(allowed)}")
        try:
            fields[section][name] = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            fields[section][name] = text
    if members is not None:
        fields["ensemble"]["members"] = members
    if mode is not None:
        fields["ensemble"]["mode"] = mode
    out = []
    for section, cls in _SECTIONS.items():
        try:
            out.append(cls(**fields[section]))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            value = fields[section].get(str(first["loc"][0]), None) if first["loc"] else None
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise BadInput(f"{section}.{where}: {value!r} is not allowed ({msg})") from None
    return out[0], out[1]


@click.command("train")
@click.argument("data_path", metavar="DATA", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Model directory to write (member_KK.model files, ensemble.json).",
)
@click.option("--members", type=click.IntRange(min=1), default=None, help="Ensemble size K.")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in EnsembleMode]),
    default=None,
    help="How members differ (default deep).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.FIELD=V",
    help="Override a model.* or ensemble.* setting, e.g. model.num_channels=32. Repeatable.",
)
@click.option(
    "--valid",
    "valid_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Validation structures (default: a random split of DATA).",
)
@click.option(
    "--calibrate",
    "calib_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Held-out labelled structures to calibrate the uncertainty on after training.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Model directory to initialise from (transfer learning).",
)
@click.option(
    "--map",
    "element_map",
    multiple=True,
    metavar="SRC=DST",
    help="Element mapping for --init-from, e.g. Si=Ge. Repeatable.",
)
@click.option(
    "--freeze",
    multiple=True,
    metavar="BLOCK",
    help="Parameter block kept fixed while fine-tuning (e.g. interactions.0). Repeatable.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--ray/--no-ray", "use_ray", default=True, show_default=True)
@address_option
@click.option("--num-cpus", default=None, type=click.IntRange(min=1), help="CPUs of a local Ray.")
@click.option("--dashboard/--no-dashboard", default=False, show_default=True)
@handles_errors
def train(
    data_path: Path,
    out_dir: Path,
    members: int | None,
    mode: str | None,
    assignments: tuple[str, ...],
    valid_path: Path | None,
    calib_path: Path | None,
    init_from: Path | None,
    element_map: tuple[str, ...],
    freeze: tuple[str, ...],
    seed: int,
    use_ray: bool,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Train a MACE ensemble on the labelled structures in DATA and save it in MODEL_DIR.

    Labels: REF_energy / REF_forces / REF_stress (or plain energy/forces/stress columns).
    """
    from chemgap.models.calibration import calibrate
    from chemgap.models.ensemble import train_ensemble
    from chemgap.models.transfer import parse_element_map

    model_cfg, ens_cfg = _configs(assignments, members, mode)
    structures = read_structures(data_path, "DATA")
    valid = read_structures(valid_path, "--valid") if valid_path else None
    held_out = read_structures(calib_path, "--calibrate") if calib_path else None
    emap = None
    if element_map:
        if init_from is None:
            raise BadInput("--map: needs --init-from (the source model directory)")
        try:
            emap = parse_element_map(list(element_map))
        except ValueError as exc:
            raise BadInput(f"--map: {exc}") from None
    if init_from is not None and not (init_from / "ensemble.json").exists():
        raise BadInput(f"--init-from: {init_from} is not a model directory (no ensemble.json)")
    if out_dir.exists() and (out_dir / "ensemble.json").exists():
        raise BadInput(f"-o: {out_dir} already holds a model; choose a new directory")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    k = ens_cfg.members
    console.print(
        f"training {k} {ens_cfg.mode} member(s) on {len(structures)} structures from {data_path}"
    )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as bar:
        tasks: dict[int, Any] = {}

        def on_progress(event: Any) -> None:
            if event.member not in tasks:
                tasks[event.member] = bar.add_task(
                    f"member {event.member + 1}/{k}", total=event.max_epochs, info=""
                )
            tid = tasks[event.member]
            total = event.epoch if event.done else event.max_epochs
            info = f"valid loss {event.valid_loss:.4g}" + (" · done" if event.done else "")
            bar.update(tid, completed=event.epoch, total=total, info=info)

        def run() -> Any:
            try:
                return train_ensemble(
                    structures,
                    model_cfg,
                    ens_cfg,
                    out_dir,
                    seed=seed,
                    valid=valid,
                    init_from=init_from,
                    element_map=emap,
                    freeze=freeze,
                    progress=on_progress,
                    use_ray=use_ray,
                )
            except ValueError as exc:
                raise BadInput(str(exc)) from None

        if use_ray:
            from chemgap.agent.runtime import ray_runtime

            with ray_runtime(address, num_cpus=num_cpus, dashboard=dashboard) as runtime:
                if runtime.dashboard_url:
                    console.print(f"Ray dashboard: {runtime.dashboard_url}")
                ens = run()
        else:
            ens = run()

    for k_, meta in enumerate(_member_metrics(ens)):
        console.print(
            f"member {k_}: epochs {meta.get('epochs')}, stopped by {meta.get('stopped')}, "
            f"valid E RMSE {1000 * meta.get('valid_rmse_e_per_atom', float('nan')):.3g} meV/atom, "
            f"F RMSE {1000 * meta.get('valid_rmse_f', float('nan')):.3g} meV/Å"
        )
    if held_out is not None:
        try:
            cal = calibrate(ens, held_out)
        except ValueError as exc:
            raise BadInput(f"--calibrate: {exc}") from None
        raw, new = cal.metrics["raw"], cal.metrics["calibrated"]
        console.print(
            f"calibration: force std x{cal.force_scale:.3g}, energy std x{cal.energy_scale:.3g}; "
            f"Spearman ρ (atoms) {raw['spearman_atom']:.3f}; miscalibration area "
            f"{raw['miscalibration_area_forces']:.3f} -> {new['miscalibration_area_forces']:.3f}; "
            f"95% coverage {raw['coverage_95_forces']:.2f} -> {new['coverage_95_forces']:.2f}"
        )
    console.print(f"saved {ens.n_members} member(s) to {out_dir}")


def _member_metrics(ens: Any) -> list[dict]:
    from chemgap.models.io import member_stem, read_json

    out = []
    for k in range(ens.n_members):
        path = ens.path / f"{member_stem(k)}.json"
        out.append(read_json(path).get("metrics", {}) if path.exists() else {})
    return out


@click.command("predict")
@click.argument("model_dir", metavar="MODEL_DIR", type=click.Path(path_type=Path, file_okay=False))
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output_path",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="extxyz to write with predictions and uncertainties (default: summary only).",
)
@click.option("--stress", is_flag=True, help="Also predict stress (periodic structures).")
@handles_errors
def predict(model_dir: Path, input_path: Path, output_path: Path | None, stress: bool) -> None:
    """Predict energies, forces and their ensemble spread for the structures in IN.

    Written per structure: pred_energy, pred_energy_std (eV), pred_max_force_std (eV/Å, DP-GEN
    max_devi_f) and their *_cal calibrated versions; per atom: pred_forces, pred_force_std.
    """
    import ase.io
    import numpy as np

    from chemgap.models.ensemble import Ensemble

    if not (model_dir / "ensemble.json").exists():
        raise BadInput(f"MODEL_DIR: {model_dir} is not a model directory (no ensemble.json)")
    structures = read_structures(input_path, "IN")
    ens = Ensemble.load(model_dir)
    try:
        pred = ens.predict(structures, compute_stress=stress)
    except ValueError as exc:
        raise BadInput(f"IN: {exc}") from None
    out = []
    for i, atoms in enumerate(structures):
        a = atoms.copy()
        sl = pred.per_structure(i)
        a.info["pred_energy"] = float(pred.energy_mean[i])
        a.info["pred_energy_std"] = float(pred.energy_std[i])
        a.info["pred_energy_std_cal"] = float(pred.energy_std_cal[i])
        a.info["pred_max_force_std"] = float(pred.max_force_std[i])
        a.info["pred_max_force_std_cal"] = float(pred.max_force_std_cal[i])
        a.arrays["pred_forces"] = pred.forces_mean[sl]
        a.arrays["pred_force_std"] = pred.force_std_atom[sl]
        a.arrays["pred_force_std_cal"] = pred.force_std_atom_cal[sl]
        if pred.stress_mean is not None:
            a.info["pred_stress"] = pred.stress_mean[i]
            a.info["pred_stress_std"] = pred.stress_std[i]
        out.append(a)
    if output_path is not None:
        if output_path.resolve() == input_path.resolve():
            raise BadInput("-o: OUT must differ from IN")
        ase.io.write(output_path, out, format="extxyz")

    n_atoms = np.bincount(pred.system_idx)
    console.print(
        f"{len(structures)} structures, {ens.n_members} members"
        f"{' (calibrated)' if pred.calibrated else ''}"
    )
    console.print(
        f"energy std per atom: mean {1000 * np.mean(pred.energy_std_cal / n_atoms):.3g} meV, "
        f"max {1000 * np.max(pred.energy_std_cal / n_atoms):.3g} meV"
    )
    console.print(
        f"max force std (max_devi_f): mean {np.mean(pred.max_force_std_cal):.4g} eV/Å, "
        f"max {np.max(pred.max_force_std_cal):.4g} eV/Å "
        f"(structure {int(np.argmax(pred.max_force_std_cal))})"
    )
    labelled = [a for a in structures if "REF_energy" in a.info and "REF_forces" in a.arrays]
    if len(labelled) == len(structures):
        e_ref = np.array([a.info["REF_energy"] for a in structures])
        f_ref = np.concatenate([a.arrays["REF_forces"] for a in structures])
        rmse_e = np.sqrt(np.mean(((pred.energy_mean - e_ref) / n_atoms) ** 2))
        rmse_f = np.sqrt(np.mean((pred.forces_mean - f_ref) ** 2))
        console.print(
            f"vs labels: energy RMSE {1000 * rmse_e:.3g} meV/atom, "
            f"force RMSE {1000 * rmse_f:.3g} meV/Å"
        )
    if output_path is not None:
        console.print(f"wrote {len(out)} structures to {output_path}")
