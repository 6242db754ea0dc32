"""A run's reference energies E0: the oracle's isolated atoms, labelled once and kept in data.db.

With ``model.e0: isolated`` (the default) every element of the spec gets one oracle call on its
isolated atom (:func:`chemgap.oracle.isolated_atom`: neutral, ground-state spin in the oracle's
convention), stored in ``data.db`` with ``split = isolated_atom`` and
``config_type = IsolatedAtom`` — never a training, validation, calibration or test frame, but
counted as an oracle call. Every model the run trains (the loop's ensembles, the split studies,
the remediation arms) is built with these E0s; ``ensemble.json`` records them
(:mod:`chemgap.models.e0`). An element whose isolated atom the oracle cannot compute (a
periodic-only calculator, a failed SCF) makes the run say so in one line and fall back to
``average`` (least squares on the training energies), recorded in the same place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms

from chemgap.common.keys import ENERGY_KEY, ISOLATED_ATOM_SPLIT, OK, STATUS_KEY
from chemgap.common.tasks import Executor
from chemgap.models.config import E0Method, ModelConfig

log = logging.getLogger(__name__)

__all__ = ["TrainingE0", "label_isolated_atoms", "training_e0"]


@dataclass(kw_only=True)
class TrainingE0:
    """What a run's models are trained with, as :func:`~chemgap.models.ensemble.train_ensemble`
    takes it.

    Attributes:
        model: the spec's model section (its ``e0`` turned to ``average`` when the oracle could
            not compute an isolated atom).
        kwargs: ``isolated_atom_energies``, ``isolated_source`` and ``e0_note`` for
            ``train_ensemble`` (empty when E0 is not ``isolated``).
    """

    model: ModelConfig
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        """Why the E0 method differs from the spec's, or ''."""
        return str(self.kwargs.get("e0_note", ""))


def _rows(store: Any) -> dict[str, Atoms]:
    """Element -> its isolated-atom label in data.db (the last one, ok or failed)."""
    return {
        atoms.get_chemical_symbols()[0]: atoms
        for atoms in store.structures(split=ISOLATED_ATOM_SPLIT)
        if len(atoms) == 1
    }


def _status(atoms: Atoms) -> str:
    return str(atoms.info.get(STATUS_KEY, OK))


def training_e0(store: Any, elements: list[str]) -> TrainingE0:
    """The E0 settings of the run in ``store`` for a model of ``elements``, from what data.db
    holds (nothing is labelled here: :func:`label_isolated_atoms` does that first).

    Raises:
        RuntimeError: ``isolated`` asked and an element has no isolated-atom row at all (the
            run's first train step labels them; a run that has not got there cannot train).
    """
    spec_model = store.spec.model
    if spec_model.e0 != E0Method.ISOLATED:
        return TrainingE0(model=spec_model)
    rows = _rows(store)
    absent = [el for el in elements if el not in rows]
    if absent:
        raise RuntimeError(
            f"{store.root}: no isolated-atom label for {', '.join(absent)} in data.db yet "
            "(the run's first train step computes them)"
        )
    failed = {el: _status(rows[el]) for el in elements if _status(rows[el]) != OK}
    oracle = str(store.spec.oracle.name)
    if failed:
        why = ", ".join(f"{el} ({status})" for el, status in failed.items())
        note = (
            f"E0: the {oracle} oracle could not compute the isolated atom of {why}; "
            "E0 by least squares on the training energies (average) instead"
        )
        return TrainingE0(
            model=spec_model.model_copy(update={"e0": E0Method.AVERAGE}),
            kwargs={"e0_note": note},
        )
    energies = {el: float(rows[el].info[ENERGY_KEY]) for el in elements}
    return TrainingE0(
        model=spec_model,
        kwargs={
            "isolated_atom_energies": energies,
            "isolated_source": f"oracle {oracle} (data.db, split {ISOLATED_ATOM_SPLIT})",
        },
    )


def label_isolated_atoms(
    store: Any,
    elements: list[str],
    *,
    executor: Executor | None = None,
    say: Callable[[str], None] = log.info,
) -> dict[str, float]:
    """Label the isolated atom of every element of ``elements`` data.db lacks (one oracle call
    each, in the oracle's spin convention), storing each result as it arrives; ``say`` gets
    one line for the user. Returns the isolated-atom energies now known (eV).
    """
    from chemgap.oracle import check_backend, isolated_atom, isolated_atom_config, label_batch

    if store.spec.model.e0 != E0Method.ISOLATED:
        return {}
    todo = [el for el in elements if el not in _rows(store)]
    if not todo:
        return _energies(store)
    check_backend(store.spec.oracle)
    for el in todo:

        def on_result(index: int, result: Any, el: str = el) -> None:
            store.add(
                result.atoms,
                iteration=0,
                oracle=str(store.spec.oracle.name),
                status=result.status,
                seconds=round(float(result.seconds), 6),
                source="isolated_atom",
                split=ISOLATED_ATOM_SPLIT,
                config_type="IsolatedAtom",
            )
            log.info("isolated %s atom: %s", el, result.status)

        label_batch(
            [isolated_atom(el)],
            isolated_atom_config(store.spec.oracle, el),
            on_result=on_result,
            name="isolated atom",
            executor=executor,
        )
    energies = _energies(store)
    note = training_e0(store, elements).note
    say(
        note
        or f"reference energies E0, {store.spec.oracle.name}'s isolated atoms: "
        + ", ".join(f"{el} {energies[el]:.3f} eV" for el in todo)
    )
    return energies


def _energies(store: Any) -> dict[str, float]:
    """Element -> isolated-atom energy (eV) of every ok label in data.db."""
    return {
        el: float(atoms.info[ENERGY_KEY])
        for el, atoms in _rows(store).items()
        if _status(atoms) == OK and ENERGY_KEY in atoms.info
    }
