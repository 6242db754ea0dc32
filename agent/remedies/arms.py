"""The remedies an experiment compares, and the two controls: one registry entry each.

An arm is either a **data** remedy (the base data plus ``budget`` new oracle labels, the base
model's architecture and training) or a **model** remedy (the base data, a changed model or
training). Data arms are compared with ``random`` (the same budget drawn uniformly from the
same trajectories), model arms with ``baseline`` (the base model's settings retrained on the
same data with the same seeds); the runner adds whichever control the arms need.

``cell_size`` labels supercells of ``cell_repeat``^d times a seed's atoms, so at equal calls it
spends more oracle cost than ``random``. It has a second control, ``random_atoms``: random
frames of the same pool holding exactly its oracle atoms (more, smaller calls;
:func:`chemgap.agent.remedies.pool.pick_equal_atoms`), added whenever ``cell_size`` runs.
``cell_size`` is compared with ``random`` at equal calls (``vs_control``) and with
``random_atoms`` at equal oracle atoms (``vs_equal_atoms``); every arm's atoms are reported.

To add a remedy: a member of :class:`chemgap.campaigns.spec.RemedyName`, an :class:`Arm` here
(``refusal`` says in one sentence why it cannot run, ``training`` changes the model), and for a
data remedy its pick in :mod:`chemgap.agent.remedies.pool` and :func:`pick`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.errors import BadInput, RemedyRefused
from chemgap.agent.layout import RunLayout
from chemgap.agent.remedies.base import Base
from chemgap.campaigns.spec import RemediationConfig, RemedyName
from chemgap.common.keys import STRESS_KEY
from chemgap.models.config import EnsembleConfig, LongRange, ModelConfig
from chemgap.models.io import ENSEMBLE_FILE

BASELINE = "baseline"  # the model arms' control: no remedy, the same data retrained
CONTROL_DATA = str(RemedyName.RANDOM)
CONTROL_ATOMS = "random_atoms"  # cell_size's control at equal oracle atoms (not equal calls)


class ArmKind(StrEnum):
    """What an arm changes."""

    DATA = "data"
    MODEL = "model"
    CONTROL = "control"


@dataclass(kw_only=True)
class Training:
    """How an arm trains: the architecture and settings, and a transfer source if any."""

    model: ModelConfig
    ensemble: EnsembleConfig
    init_from: str | None = None
    element_map: str | None = None


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One registry entry.

    Attributes:
        name: the remedy's name (a :class:`RemedyName` value, or ``baseline``).
        kind: data, model or control.
        summary: what it does, in a few words (help texts, the table's caption).
        refusal: ``refusal(base, cfg)`` is None when the arm can run, else one sentence why not.
        training: ``training(base, cfg, default)`` changes the default :class:`Training`.
    """

    name: str
    kind: ArmKind
    summary: str
    refusal: Callable[[Base, RemediationConfig], str | None] = field(default=lambda base, cfg: None)
    training: Callable[[Base, RemediationConfig, Training], Training] = field(
        default=lambda base, cfg, t: t
    )

    @property
    def control(self) -> str | None:
        """The arm this one is compared with (None for the controls themselves)."""
        if self.kind == ArmKind.CONTROL or self.name in (CONTROL_DATA, CONTROL_ATOMS):
            return None
        return CONTROL_DATA if self.kind == ArmKind.DATA else BASELINE

    @property
    def cost_control(self) -> str | None:
        """The control given this arm's oracle atoms (``random_atoms`` for ``cell_size``,
        whose calls hold more atoms than the pool's frames), else None.
        """
        return CONTROL_ATOMS if self.name == str(RemedyName.CELL_SIZE) else None


def _no_regions(base: Base, cfg: RemediationConfig) -> str | None:
    if base.regions:
        return None
    n = len(base.guiding) if base.split is not None else 0
    return (
        f"the diagnosis of iteration {base.iteration}'s ensemble on the guidance part of the "
        f"test set ({n} structures) flagged no failure region to target"
    )


def _no_probes(base: Base, cfg: RemediationConfig) -> str | None:
    if base.layout.probes.candidates.exists():
        return None
    return (
        f"iteration {base.iteration} of {base.root} has no probe structures (the campaign "
        "needs probes.names and probes.every ≥ 1)"
    )


def _no_periodic(base: Base, cfg: RemediationConfig) -> str | None:
    if any(a.pbc.any() for a in base.seeds()):
        return None
    return "the campaign has no periodic seed structure to enlarge"


def _transfer_refusal(base: Base, cfg: RemediationConfig) -> str | None:
    if not cfg.element_map:
        return "transfer needs an element map (remediation.element_map / --element-map Si=Ge)"
    source = _transfer_source(base, cfg)
    if not (Path(source) / ENSEMBLE_FILE).exists():
        return f"transfer: {source} is not a chemgap model directory"
    return None


def _transfer_source(base: Base, cfg: RemediationConfig) -> str:
    if cfg.transfer_from:
        p = Path(cfg.transfer_from).expanduser()
        return str(p if p.is_absolute() else Path.cwd() / p)
    return str(RunLayout(base.root).iteration(1).models)


def _transfer(base: Base, cfg: RemediationConfig, t: Training) -> Training:
    t.init_from, t.element_map = _transfer_source(base, cfg), cfg.element_map
    return t


def _long_range_refusal(base: Base, cfg: RemediationConfig) -> str | None:
    if base.spec.model.long_range != LongRange.NONE:
        return f"the base model already has long-range terms ({base.spec.model.long_range})"
    return None


def _long_range(base: Base, cfg: RemediationConfig, t: Training) -> Training:
    t.model = t.model.model_copy(update={"long_range": LongRange(cfg.long_range)})
    return t


def _deeper_refusal(base: Base, cfg: RemediationConfig) -> str | None:
    if base.spec.model.num_interactions >= 4:
        return "the base model already has the most interaction layers chemgap builds (4)"
    return None


def _deeper(base: Base, cfg: RemediationConfig, t: Training) -> Training:
    t.model = t.model.model_copy(update={"num_interactions": t.model.num_interactions + 1})
    return t


def _no_stress(base: Base, cfg: RemediationConfig) -> str | None:
    if any(STRESS_KEY in a.info and a.pbc.all() for a in base.train):
        return None
    return "observations fits stress, and no periodic training structure has a stress label"


def _observations(base: Base, cfg: RemediationConfig, t: Training) -> Training:
    t.ensemble = t.ensemble.model_copy(update={"stress_weight": cfg.stress_weight})
    return t


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm(name=BASELINE, kind=ArmKind.CONTROL, summary="the base data retrained"),
        Arm(name="random", kind=ArmKind.DATA, summary="uniform frames (control)"),
        Arm(name=CONTROL_ATOMS, kind=ArmKind.DATA,
            summary="uniform frames with cell_size's oracle atoms (control)"),
        Arm(name="uncertainty", kind=ArmKind.DATA, summary="most uncertain frames"),
        Arm(name="diverse", kind=ArmKind.DATA, summary="uncertain and diverse frames"),
        Arm(name="region", kind=ArmKind.DATA, summary="frames in flagged regions",
            refusal=_no_regions),
        Arm(name="probe", kind=ArmKind.DATA, summary="the probes' structures",
            refusal=_no_probes),
        Arm(name="cell_size", kind=ArmKind.DATA, summary="larger supercells",
            refusal=_no_periodic),
        Arm(name="transfer", kind=ArmKind.MODEL, summary="initialised from another model",
            refusal=_transfer_refusal, training=_transfer),
        Arm(name="long_range", kind=ArmKind.MODEL, summary="learned charges / D3 added",
            refusal=_long_range_refusal, training=_long_range),
        Arm(name="deeper", kind=ArmKind.MODEL, summary="one more interaction layer",
            refusal=_deeper_refusal, training=_deeper),
        Arm(name="observations", kind=ArmKind.MODEL, summary="stress fitted too",
            refusal=_no_stress, training=_observations),
    )
}  # fmt: skip
assert set(ARMS) == {BASELINE, CONTROL_ATOMS, *(str(n) for n in RemedyName)}


def arms_of(cfg: RemediationConfig) -> list[Arm]:
    """The arms an experiment runs: the requested ones plus the controls they are compared
    with (``random`` before the data arms, ``baseline`` first when any arm is a model arm,
    ``random_atoms`` last when ``cell_size`` runs: it is planned after ``cell_size``, whose
    atoms it matches).
    """
    names = [str(n) for n in cfg.remedies]
    kinds = {ARMS[n].kind for n in names}
    out = [BASELINE] if ArmKind.MODEL in kinds or not names else []
    if ArmKind.DATA in kinds and CONTROL_DATA not in names:
        out.append(CONTROL_DATA)
    after = [c for n in names if (c := ARMS[n].cost_control)]
    return [ARMS[n] for n in dict.fromkeys([*out, *names, *after])]


def check_arms(base: Base, cfg: RemediationConfig) -> list[Arm]:
    """The arms of :func:`arms_of`, after every refusal is checked.

    Raises:
        RemedyRefused: naming the first arm whose prerequisite is missing and why.
    """
    arms = arms_of(cfg)
    for arm in arms:
        why = arm.refusal(base, cfg)
        if why:
            raise RemedyRefused(f"remedy {arm.name}: {why}")
    _check_probes(base.spec, cfg)
    return arms


def check_spec(spec: Any) -> None:
    """Refuse, before a campaign starts, a ``remediation`` section whose arms could never run
    on it (what needs the loop's data, such as a flagged region, is checked after the loop).

    Raises:
        RemedyRefused: naming the arm and why.
    """
    cfg: RemediationConfig = spec.remediation
    names = {str(n) for n in cfg.remedies}
    why = {
        "transfer": None if cfg.element_map else "transfer needs remediation.element_map",
        "long_range": (
            None
            if spec.model.long_range == LongRange.NONE
            else f"the model already has long-range terms ({spec.model.long_range})"
        ),
        "deeper": (
            None if spec.model.num_interactions < 4 else "the model already has 4 interactions"
        ),
        "probe": (
            None
            if spec.probes.names and spec.probes.every
            else "the probe arm needs probes.names and probes.every ≥ 1"
        ),
    }
    for name in sorted(names & set(why)):
        if why[name]:
            raise RemedyRefused(f"remediation.remedies: {name}: {why[name]}")
    per_kind = spec.test_set.per_kind
    if spec.test_set.file is None and per_kind < 2 * cfg.min_per_part:
        raise RemedyRefused(
            f"remediation.min_per_part: the experiment splits the test set into a guidance and "
            f"a scoring part with at least {cfg.min_per_part} structures of each kind on each "
            f"side, and test_set.per_kind is {per_kind}: raise it to {2 * cfg.min_per_part} or "
            "lower remediation.min_per_part"
        )
    _check_probes(spec, cfg)


def _check_probes(spec: Any, cfg: RemediationConfig) -> None:
    """Refuse probes that cannot score the arms on this campaign's system and oracle."""
    if not cfg.probes:
        return
    from chemgap.agent.probes import check_probes

    try:
        check_probes(spec.system, spec.probes, oracle=spec.oracle, names=cfg.probes)
    except BadInput as err:
        raise RemedyRefused(f"remediation.probes: {err}") from None


def training(arm: Arm, base: Base, cfg: RemediationConfig) -> Training:
    """The arm's architecture and training settings: the campaign's, with the experiment's
    ensemble size and epoch cap, no wall-time cap beyond the scaled safety net (a budget of
    optimiser steps, the same on a loaded machine) and the base model's reference energies E0
    (the oracle's isolated atoms in a run with ``model.e0: isolated``), changed by the arm.
    """
    # every arm has the same budget of optimiser steps (max_epochs over the same number of
    # structures; early stopping on the same holdout may end one sooner), never the
    # campaign's wall cap: arms run side by side on a loaded
    # machine, where a wall cap gives each arm what the load left it; the scaled cap that
    # remains is a safety net ~3x the need (EnsembleConfig.scaled_to)
    update: dict[str, Any] = {"wall_time_s": None}
    if cfg.members is not None:
        update["members"] = cfg.members
    if cfg.max_epochs is not None:
        update["max_epochs"] = cfg.max_epochs
    default = Training(
        model=base.spec.model.model_copy(update={"e0": base.atomic_energies()}),
        ensemble=base.spec.ensemble.model_copy(update=update),
    )
    return arm.training(base, cfg, default)


def pick(
    arm: Arm,
    base: Base,
    cfg: RemediationConfig,
    pool: list[Atoms],
    ensemble: Any,
    rng: np.random.Generator,
    *,
    target_atoms: int | None = None,
) -> tuple[list[Atoms], dict[str, Any]]:
    """The ``cfg.budget`` structures data arm ``arm`` labels in one repeat, and notes on them
    (``sources``: where they came from, with counts; never a test structure or a perturbation
    of one). ``random_atoms`` takes instead random frames holding ``target_atoms`` atoms (the
    same repeat's ``cell_size`` structures' atoms).

    Raises:
        RemedyRefused: the arm cannot find ``cfg.budget`` structures.
    """
    from chemgap.agent.remedies import pool as P

    name, budget = arm.name, cfg.budget
    pooled = {"sources": {"pool frames": budget}}
    if name == "random":
        return P.pick_random(pool, budget, rng), pooled
    if name == CONTROL_ATOMS:
        if target_atoms is None:
            raise RemedyRefused(f"remedy {name}: needs the atoms of cell_size's structures")
        return P.pick_equal_atoms(pool, target_atoms, base, rng)
    if name in ("uncertainty", "diverse"):
        return P.pick_selected(pool, budget, name, ensemble, rng), pooled
    if name == "region":
        return P.pick_region(base, pool, budget, rng)
    if name == "probe":
        found, made = P.pick_probe(base, budget, rng)
        return found, {"sources": {"probe geometries": budget - made, "rattled probe "
                                   "geometries": made}}  # fmt: skip
    if name == "cell_size":
        out = P.pick_cell_size(base, budget, cfg.cell_repeat, rng)
        return out, {"sources": {"rattled enlarged seeds": budget}}
    raise RemedyRefused(f"remedy {name}: not a data remedy")
