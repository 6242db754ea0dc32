"""``chemgap train`` and ``chemgap predict``: MACE ensembles from labelled structure files."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from chemgap.agent.cli.common import console, handles_errors, read_structures
from chemgap.agent.cli.options import (
    Overrides,
    build_sections,
    overrides_option,
    ray_options,
    seed_option,
    with_runtime,
)
from chemgap.agent.errors import BadInput
from chemgap.models.config import EnsembleConfig, EnsembleMode, ModelConfig
from chemgap.models.io import ENSEMBLE_FILE

TRAIN_SECTIONS = {"model": ModelConfig, "ensemble": EnsembleConfig}
"""The sections ``--set`` (train) and ``--train-set`` (diagnose) override."""


def training_configs(overrides: Overrides, **flags: Any) -> tuple[ModelConfig, EnsembleConfig]:
    """The model and ensemble configs: defaults, ``--set section.field=V``, then the flags.

    Args:
        overrides: ``model.*`` / ``ensemble.*`` items.
        **flags: ``ensemble`` fields set by the command's own flags (None: not given).

    Raises:
        BadInput: listing every problem, under the flag the user typed.
    """
    extra = {f"ensemble.{k}": v for k, v in flags.items() if v is not None}
    out = build_sections(TRAIN_SECTIONS, overrides, extra=extra)
    return out["model"], out["ensemble"]  # type: ignore[return-value]


def _element_map(items: tuple[str, ...], init_from: Path | None) -> dict[str, str] | None:
    from chemgap.models.transfer import parse_element_map

    if not items:
        return None
    if init_from is None:
        raise BadInput("--map: needs --init-from (the source model directory)")
    try:
        return parse_element_map(list(items))
    except ValueError as exc:
        raise BadInput(f"--map: {exc}") from None


def _check_dirs(init_from: Path | None, out_dir: Path) -> None:
    if init_from is not None and not (init_from / ENSEMBLE_FILE).exists():
        raise BadInput(f"--init-from: {init_from} is not a model directory (no {ENSEMBLE_FILE})")
    if (out_dir / ENSEMBLE_FILE).exists():
        raise BadInput(f"-o: {out_dir} already holds a model; choose a new directory")


def _under_flag(message: str) -> str:
    """A data error of the models layer under the argument the user typed (DATA, --valid)."""
    for prefix, flag in (("training data: ", "DATA: "), ("valid: ", "--valid: ")):
        if message.startswith(prefix):
            return flag + message.removeprefix(prefix)
    return message


E0_ORACLES = ("emt", "sw", "tersoff", "xtb", "pyscf")
"""The oracles ``--oracle`` names (an ``ase`` calculator needs a spec and --trust-code)."""


def parse_e0(text: str) -> str | dict[str, float]:
    """``--e0``: ``isolated``, ``average`` or ``El=eV,El=eV`` (e.g. ``Cu=3.51``).

    Raises:
        BadInput: anything else, naming the flag and what is allowed.
    """
    allowed = "allowed: isolated, average or ELEMENT=eV,... (e.g. Cu=3.51)"
    text = text.strip()
    if text in ("isolated", "average"):
        return text
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        element, _, energy = item.partition("=")
        try:
            values[element.strip()] = float(energy)
        except ValueError:
            raise BadInput(f"--e0: {item!r} is not ELEMENT=eV; {allowed}") from None
    try:
        ModelConfig(e0=values or text)
    except ValueError as exc:
        first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise BadInput(f"--e0: {first.removeprefix('Value error, ')}; {allowed}") from None
    return values


def isolated_energies(structures: list, oracle: str | None) -> tuple[dict[str, float], str]:
    """The isolated-atom energies ``--oracle`` computes for the elements of ``structures``
    that have no ``IsolatedAtom`` frame (one call each, in-process), and a line saying so.

    Raises:
        BadInput: an element is left without one (no ``--oracle``, or the oracle failed).
    """
    from chemgap.models.data import element_list
    from chemgap.models.e0 import ISOLATED_ATOM, split_isolated_atoms

    rest, frames = split_isolated_atoms(structures)
    todo = [el for el in element_list(rest) if el not in frames]
    if not todo:
        return {}, ""
    if oracle is None:
        raise BadInput(
            f"--e0: isolated (the default) needs the isolated-atom energy of {', '.join(todo)}: "
            f"--oracle NAME to compute it ({', '.join(E0_ORACLES)}), {ISOLATED_ATOM} frames "
            "in DATA, or --e0 average"
        )
    from chemgap.oracle import OracleConfig, isolated_atom, isolated_atom_config, label_one

    config = OracleConfig(name=oracle)
    energies, failed = {}, []
    for el in todo:
        result = label_one(isolated_atom(el), isolated_atom_config(config, el))
        if result.ok:
            energies[el] = float(result.atoms.info["REF_energy"])
        else:
            failed.append(f"{el} ({result.status})")
    if failed:
        raise BadInput(
            f"--oracle: {oracle} could not compute the isolated atom of {', '.join(failed)}; "
            "give --e0 average or ELEMENT=eV values"
        )
    line = f"E0: {oracle}'s isolated atoms: " + ", ".join(
        f"{el} {e:.3f} eV" for el, e in energies.items()
    )
    return energies, line


def member_eta(epoch: int, max_epochs: int, elapsed_s: float, wall_time_s: float) -> float:
    """Seconds a member still needs at most: its remaining epochs at the pace of those done,
    capped by what is left of its wall-time cap (early stopping may end it sooner).
    """
    if epoch <= 0:
        return max(0.0, wall_time_s - elapsed_s)
    by_epochs = (max_epochs - epoch) * elapsed_s / epoch
    return max(0.0, min(by_epochs, wall_time_s - elapsed_s))


def _clock(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes}:{sec:02d}"


@contextlib.contextmanager
def _member_bars(k: int) -> Iterator[Callable[[Any], None]]:
    """A progress bar per member with an upper bound on its remaining time (from the epochs
    done so far, capped by the member's wall-time cap); yields the ``progress`` callback of
    ``train_ensemble``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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
            total = event.epoch if event.done else event.max_epochs
            info = f"valid loss {event.valid_loss:.4g}"
            if event.done:
                info += f" · {STOP_WORDS.get(event.stopped, 'done')}"
            else:  # the member's own clock: members that start late are paced from their start
                eta = member_eta(event.epoch, event.max_epochs, event.elapsed_s, event.wall_time_s)
                info += f" · ETA ≤ {_clock(eta)}"
            bar.update(tasks[event.member], completed=event.epoch, total=total, info=info)

        yield on_progress


BUDGET_WORDS = {"max_epochs": "epochs", "patience": "patience", "wall_time_s": "wall cap"}
"""How the budget line names the fields it scaled."""

STOP_WORDS = {
    "patience": "stopped early",
    "epochs": "all epochs",
    "wall_time": "wall-time cap",
    "cycles": "all cycles",
}
"""How a member's bar names what ended it."""


def stop_lines(metrics: list[dict], ens_cfg: Any) -> list[str]:
    """Two lines per member (what stopped it; the epoch kept and its validation errors), then
    a line on what early stopping did (members it ended, epochs of their caps not run).

    Args:
        metrics: per member: ``epochs_run``, ``epochs`` (the kept, best epoch), ``stopped``,
            ``valid_rmse_e_per_atom`` (eV/atom), ``valid_rmse_f`` (eV/Å).
        ens_cfg: the (scaled) config the members trained with.
    """
    nan = float("nan")
    lines, early = [], 0
    for k, meta in enumerate(metrics):
        ran, best, why = meta.get("epochs_run"), meta.get("epochs"), meta.get("stopped")
        if why == "patience":
            early += 1
            how = (
                f"stopped early at epoch {ran} of {ens_cfg.max_epochs} "
                f"(no validation gain in {ens_cfg.patience})"
            )
        elif why == "wall_time":
            how = f"hit the {ens_cfg.wall_time_s:g} s wall-time cap at epoch {ran}"
        elif why == "cycles":
            how = f"ran its snapshot cycles ({ran} epochs)"
        else:
            how = f"ran all {ran} epochs"
        lines.append(f"member {k + 1}/{len(metrics)}: {how}")
        two = f" (stage two from {meta['stage_two_from']})" if meta.get("stage_two_from") else ""
        lines.append(
            f"  kept epoch {best}{two}: valid RMSE E "
            f"{1000 * meta.get('valid_rmse_e_per_atom', nan):.3g} meV/atom, "
            f"F {1000 * meta.get('valid_rmse_f', nan):.3g} meV/Å"
        )
    cap = (ens_cfg.max_epochs or 0) * len(metrics)
    unrun = sum(
        (ens_cfg.max_epochs or 0) - (m.get("epochs_run") or 0)
        for m in metrics
        if m.get("stopped") == "patience"
    )
    summary = f"early stopping: {early} of {len(metrics)} member(s) stopped before the cap"
    if early and cap:
        summary += f"; {unrun} of {cap} epochs saved"
    lines.append(summary)
    return lines


def _calibrate(ens: Any, held_out: list, valid: list | None) -> None:
    """Fit the calibration on ``held_out``; score it on ``valid`` when given (never on itself)."""
    from chemgap.models.calibration import Residuals, calibration_quality

    try:
        cal = ens.calibrate(held_out)
    except ValueError as exc:
        raise BadInput(f"--calibrate: {exc}") from None
    console.print(
        f"calibration: fitted on {len(held_out)} --calibrate structures: force std "
        f"x{cal.force_scale:.3g}, energy std x{cal.energy_scale:.3g}"
        + (f" ({cal.uncalibrated})" if cal.uncalibrated else "")
    )
    if not valid:
        console.print(
            "  (give --valid to see how it does on data it was not fitted on; on its fitting "
            "data the calibrated spread is right by construction)"
        )
        return
    res = Residuals.from_prediction(ens.predict(valid, calibrated=False), valid)
    raw, new = calibration_quality(res, None), calibration_quality(res, cal)
    console.print(
        f"  on --valid ({len(valid)} structures): Spearman ρ (atoms) {raw['spearman_atom']:.3f}; "
        f"miscalibration area {raw['miscalibration_area_forces']:.3f} -> "
        f"{new['miscalibration_area_forces']:.3f}; 95% coverage "
        f"{raw['coverage_95_forces']:.2f} -> {new['coverage_95_forces']:.2f}"
    )


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
@overrides_option(
    "--set",
    "assignments",
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
@click.option(
    "--e0",
    "e0_text",
    default=None,
    metavar="isolated|average|EL=eV,...",
    help="Reference energies E0 (default isolated): the isolated atoms' (from --oracle or "
    "IsolatedAtom frames in DATA), least squares on DATA (average), or values such as Cu=3.51.",
)
@click.option(
    "--oracle",
    type=click.Choice(E0_ORACLES),
    default=None,
    help="Oracle that computes the isolated atoms for --e0 isolated (one call per element).",
)
@seed_option()
@click.option(
    "--ray/--no-ray",
    "use_ray",
    default=True,
    show_default=True,
    help="Train the members as parallel Ray tasks (--no-ray: one after another, in-process).",
)
@ray_options()
@handles_errors
def train(
    data_path: Path,
    out_dir: Path,
    members: int | None,
    mode: str | None,
    assignments: Overrides,
    valid_path: Path | None,
    calib_path: Path | None,
    init_from: Path | None,
    element_map: tuple[str, ...],
    freeze: tuple[str, ...],
    e0_text: str | None,
    oracle: str | None,
    seed: int,
    use_ray: bool,
    address: str | None,
    num_cpus: int | None,
    dashboard: bool,
) -> None:
    """Train a MACE ensemble on the labelled structures in DATA; save it in the -o directory.

    Labels: the REF_* keys (energy, forces, stress), or plain energy/forces/stress columns.
    """
    from chemgap.models.ensemble import budget_text, scaled_budget, train_ensemble

    model_cfg, ens_cfg = training_configs(assignments, members=members, mode=mode)
    if e0_text is not None:
        model_cfg = model_cfg.model_copy(update={"e0": parse_e0(e0_text)})
    emap = _element_map(element_map, init_from)
    _check_dirs(init_from, out_dir)
    structures = read_structures(data_path, "DATA")
    valid = read_structures(valid_path, "--valid") if valid_path else None
    held_out = read_structures(calib_path, "--calibrate") if calib_path else None

    isolated: dict[str, float] = {}
    if model_cfg.e0 == "isolated" and init_from is None:
        isolated, line = isolated_energies(structures, oracle)
        if line:
            console.print(line)
    console.print(
        f"training {ens_cfg.members} {ens_cfg.mode} member(s) on {len(structures)} structures "
        f"from {data_path}"
    )
    if scaled := ens_cfg.unscaled:
        try:
            ens_cfg = scaled_budget(structures, ens_cfg, valid, seed)
        except ValueError as exc:  # too few labelled structures, an empty --valid
            raise BadInput(_under_flag(str(exc))) from None
        words = [BUDGET_WORDS[name] for name in scaled]
        names = " and ".join(filter(None, [", ".join(words[:-1]), words[-1]]))
        console.print(f"  budget: {budget_text(ens_cfg)}")
        console.print(f"  ({names} scaled to the data; --set ensemble.* to choose)")
    if ens_cfg.stage_two and ens_cfg.max_epochs:
        from chemgap.models.train import stage_two_epochs

        w_e, w_f, _ = ens_cfg.loss_weights(2)
        n = stage_two_epochs(ens_cfg)
        console.print(
            f"  stage two: the last {n} epoch{'s' if n != 1 else ''} at energy : forces "
            f"{w_e:g} : {w_f:g}"
        )
    runtime = with_runtime(use_ray, address, num_cpus=num_cpus, dashboard=dashboard)
    with runtime as executor, _member_bars(ens_cfg.members) as on_progress:
        try:
            ens = train_ensemble(
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
                executor=executor,
                isolated_atom_energies=isolated or None,
                isolated_source=f"oracle {oracle}",
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    for line in stop_lines(ens.member_metrics(), ens.ens_cfg):
        console.print(line)
    if held_out is not None:
        _calibrate(ens, held_out, valid)
    console.print(f"saved {ens.n_members} member(s) to {out_dir}")


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
    max_devi_f: the raw spread) and their *_cal calibrated versions (the error the spread
    predicts, see ``chemgap.models.calibration``); per atom: pred_forces, pred_force_std.
    """
    import ase.io

    from chemgap.models.ensemble import Ensemble

    if not (model_dir / ENSEMBLE_FILE).exists():
        raise BadInput(f"MODEL_DIR: {model_dir} is not a model directory (no {ENSEMBLE_FILE})")
    if output_path is not None and output_path.resolve() == input_path.resolve():
        raise BadInput("-o: OUT must differ from IN")
    structures = read_structures(input_path, "IN")
    ens = Ensemble.load(model_dir)
    try:
        pred = ens.predict(structures, compute_stress=stress)
    except ValueError as exc:
        raise BadInput(f"IN: {exc}") from None
    if output_path is not None:
        ase.io.write(output_path, pred.annotate(structures), format="extxyz")
    _report_prediction(pred, structures, ens.n_members)
    if output_path is not None:
        console.print(f"wrote {len(structures)} structures to {output_path}")


def _report_prediction(pred: Any, structures: list, n_members: int) -> None:
    import numpy as np

    from chemgap.common.keys import has_labels
    from chemgap.common.metrics import score

    n_atoms = np.array([len(a) for a in structures])
    console.print(
        f"{len(structures)} structures, {n_members} members"
        f"{' (calibrated)' if pred.calibrated else ' (not calibrated)'}"
    )
    # the raw spread keeps DP-GEN's name (max_devi_f: the members' spread as it is); the
    # calibrated one, the error it predicts, is named as such
    spreads = [("energy std per atom", pred.energy_std / n_atoms, 1000, "meV")]
    spreads.append(("max force std (max_devi_f)", pred.max_force_std, 1, "eV/Å"))
    if pred.calibrated:
        spreads.append(("calibrated energy σ per atom", pred.energy_std_cal / n_atoms, 1000, "meV"))
        spreads.append(("calibrated max force σ", pred.max_force_std_cal, 1, "eV/Å"))
    for name, values, factor, unit in spreads:
        console.print(
            f"{name}: mean {factor * np.mean(values):.4g} {unit}, "
            f"max {factor * np.max(values):.4g} {unit} (structure {int(np.argmax(values))})"
        )
    if all(has_labels(a) for a in structures):
        report = score(pred, structures)
        console.print(
            f"vs labels: energy RMSE {1000 * report.energy_rmse_per_atom:.3g} meV/atom, "
            f"force RMSE {1000 * report.force_rmse:.3g} meV/Å"
        )
