"""Diagnosing a run directory or a model directory plus a labelled file: ``chemgap diagnose``.

:func:`run_diagnosis` is the library face of the command: in run mode the newest iteration's
ensemble on the run's fixed test set (:func:`run_test_set`), with the spec's settings and the
previous iteration's diagnosis, under the run's lock; in file mode a model directory and a
labelled structure file. It diagnoses (:func:`chemgap.agent.diagnostics.diagnose.diagnose`),
optionally runs the split study (:func:`~chemgap.agent.diagnostics.splits.run_splits`, which
trains one ensemble per split) and writes the result
(:func:`~chemgap.agent.diagnostics.storage.write_regions`). Every path is the layout's
(:mod:`chemgap.agent.layout`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ase import Atoms

from chemgap.agent.diagnostics.diagnose import diagnose
from chemgap.agent.diagnostics.result import DiagnosisResult, PreviousDiagnosis
from chemgap.agent.diagnostics.splits import SplitResult, run_splits
from chemgap.agent.diagnostics.storage import check_regions_target, load_previous, write_regions
from chemgap.agent.errors import BadInput, RunDirError
from chemgap.agent.layout import DIAGNOSIS_DIR, DiagnosisLayout, RunLayout
from chemgap.agent.structio import read_structures
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import TEST_SPLIT
from chemgap.models.io import ENSEMBLE_FILE

if TYPE_CHECKING:
    from chemgap.agent.store import RunStore
    from chemgap.common.tasks import Executor
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.contract import EnsembleModel


def latest_models(run: str | Path) -> tuple[Path, int]:
    """The newest ``iterations/NNN/models`` holding an ``ensemble.json``, and NNN."""
    trained = RunLayout(Path(run)).trained_iterations()
    if not trained:
        raise BadInput(
            f"RUN: {run} has no trained ensemble (no iterations/*/models/{ENSEMBLE_FILE}); "
            "use --models MODEL_DIR --data LABELLED"
        )
    return trained[-1].models, trained[-1].number


@dataclass(kw_only=True)
class DiagnosisRun:
    """What :func:`run_diagnosis` did: the result, where it was written, the models used."""

    result: DiagnosisResult
    regions_path: Path
    models: Path
    trained_splits: list[SplitResult] = field(default_factory=list)


@dataclass(kw_only=True)
class _Inputs:
    """What a diagnosis reads, from a run directory or from a model directory and a file."""

    structures: list[Atoms]
    model_dir: Path
    cfg: DiagnosticsConfig
    seed: int
    out_dir: Path
    splits_dir: Path
    source: str
    model_cfg: ModelConfig | None = None
    ens_cfg: EnsembleConfig | None = None
    extra_out: Path | None = None
    iteration: int | None = None
    previous: PreviousDiagnosis | None = None


def run_test_set(store: RunStore) -> list[Atoms]:
    """The run's fixed test set: the labelled ``data.db`` rows whose split is ``TEST_SPLIT``.

    Raises:
        BadInput: the run has none (runs made before campaigns kept a test set).
    """
    structures = store.structures(split=TEST_SPLIT, status="ok")
    if not structures:
        raise BadInput(
            f"RUN: {store.root} has no test set (no labelled data.db rows with "
            f"split={TEST_SPLIT}; runs made before chemgap kept one have none), so there is "
            "nothing its models were not trained on to diagnose them with; use "
            "--models MODEL_DIR --data LABELLED with data of your own"
        )
    return structures


def _run_inputs(
    store: RunStore,
    out: str | Path | None,
    update: bool,
    cfg: DiagnosticsConfig | None,
    seed: int | None,
    model_cfg: ModelConfig | None,
    ens_cfg: EnsembleConfig | None,
) -> _Inputs:
    """Run mode: the test set, newest models, spec settings and previous diagnosis of RUN.

    The previous diagnosis is the one of the iteration before the models' (as in the loop),
    so re-diagnosing an iteration gives the same first seen and history as the loop did.
    """
    root = store.root
    layout = RunLayout(root)
    model_dir, iteration = latest_models(root)
    structures = run_test_set(store)
    own = DiagnosisLayout(Path(out)) if out is not None else layout.diagnosis
    return _Inputs(
        structures=structures,
        model_dir=model_dir,
        cfg=cfg or store.spec.diagnostics,
        seed=store.spec.seed if seed is None else seed,
        out_dir=root if update else own.path,
        splits_dir=own.splits_dir,
        source=f"test set of {root} ({len(structures)} structures, split={TEST_SPLIT})",
        model_cfg=model_cfg or store.spec.model,
        ens_cfg=ens_cfg or store.spec.ensemble,
        extra_out=layout.iteration(iteration).path if update else None,
        iteration=iteration,
        previous=load_previous(layout.iteration(iteration - 1).regions_file),
    )


def _file_inputs(
    models: str | Path | None,
    data: str | Path | None,
    out: str | Path | None,
    cfg: DiagnosticsConfig | None,
    seed: int | None,
    model_cfg: ModelConfig | None,
    ens_cfg: EnsembleConfig | None,
) -> _Inputs:
    """File mode: a model directory and a labelled structure file."""
    if models is None or data is None:
        raise BadInput("diagnose: --models and --data go together")
    model_dir = Path(models)
    if not (model_dir / ENSEMBLE_FILE).exists():
        raise BadInput(f"--models: {model_dir} is not a model directory (no {ENSEMBLE_FILE})")
    out_dir = Path(out) if out is not None else Path(DIAGNOSIS_DIR)
    return _Inputs(
        structures=read_structures(data, "--data"),
        model_dir=model_dir,
        cfg=cfg or DiagnosticsConfig(),
        seed=0 if seed is None else seed,
        out_dir=out_dir,
        splits_dir=DiagnosisLayout(out_dir).splits_dir,
        source=f"{data}",
        model_cfg=model_cfg,
        ens_cfg=ens_cfg,
    )


def _check_elements(structures: list[Atoms], ensemble: EnsembleModel) -> None:
    """``BadInput`` when the data holds elements the ensemble does not know."""
    missing = sorted(
        {s for a in structures for s in a.get_chemical_symbols()} - set(ensemble.elements)
    )
    if missing:
        raise BadInput(
            f"data: element(s) {', '.join(missing)} unknown to the ensemble "
            f"(it knows {', '.join(ensemble.elements)})"
        )


@contextlib.contextmanager
def _holding(store: RunStore):
    """Hold RUN's lock; a run being driven right now is a ``BadInput`` naming its pid."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store.lock())
        except RunDirError:
            raise BadInput(
                f"RUN: {store.root} is running (pid {store.state.pid}); diagnose it when it stops"
            ) from None
        yield


def run_diagnosis(
    run: str | Path | None = None,
    *,
    models: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    update: bool = False,
    cfg: DiagnosticsConfig | None = None,
    seed: int | None = None,
    train_splits: bool = False,
    model_cfg: ModelConfig | None = None,
    ens_cfg: EnsembleConfig | None = None,
    executor: Executor | None = None,
    on_split: Callable[[SplitResult], None] | None = None,
) -> DiagnosisRun:
    """``chemgap diagnose``: a run's test set, or ``models`` + ``data``; writes regions.json.

    Run mode holds the run's lock throughout (a run being driven is refused) and diagnoses the
    newest ``iterations/NNN/models`` on the run's fixed test set (:func:`run_test_set`; a run
    without one is refused: its other labels are training data or were chosen by the models'
    own uncertainty, so errors on them say little), with the spec's ``diagnostics`` (and
    ``model``/``ensemble`` for the split study) and the previous iteration's diagnosis. It
    writes to ``RUN/diagnosis`` (or ``out``), leaving the loop's files alone; ``update``
    writes into ``RUN`` and ``RUN/iterations/NNN`` instead, as the loop does. File mode writes
    to ``out`` (default ``./diagnosis``). Where the output would replace files chemgap did not
    write, nothing is diagnosed (:func:`check_regions_target`).

    Args:
        run: the run directory (run mode), or None (file mode).
        models: file mode: the model directory (holding ``ensemble.json``).
        data: file mode: a labelled structure file ASE reads.
        out: where to write (default: ``RUN/diagnosis``, or ``./diagnosis``).
        update: run mode: replace the run's own diagnosis (not with ``out``).
        cfg: diagnostics settings (default: the run's spec, or the defaults).
        seed: seed of every random choice (default: the run's spec seed, or 0).
        train_splits: add the split study (trains one ensemble per split under
            ``<out>/splits/``, ``RUN/diagnosis/splits`` with ``update``; its table replaces the
            evaluate-only one).
        model_cfg: the split study's MACE architecture (default: the spec's, or the defaults).
        ens_cfg: the split study's ensemble training (default: the spec's, or the defaults).
        executor: where the split study trains (:mod:`chemgap.common.tasks`); None: in-process.
        on_split: receives each split study result as it is finished (progress).

    Returns:
        :class:`DiagnosisRun`.
    """
    from chemgap.agent.store import RunStore

    if (run is None) == (models is None and data is None):
        raise BadInput("diagnose: give either RUN or both --models and --data")
    if update and (run is None or out is not None):
        raise BadInput("--update: writes into RUN's own diagnosis; give RUN and leave out -o")
    settings = {
        "train_splits": train_splits,
        "executor": executor,
        "on_split": on_split,
    }
    if run is None:
        inp = _file_inputs(models, data, out, cfg, seed, model_cfg, ens_cfg)
        return _diagnose_and_write(inp, **settings)
    store = RunStore.open(run)
    with _holding(store):
        inp = _run_inputs(store, out, update, cfg, seed, model_cfg, ens_cfg)
        return _diagnose_and_write(inp, **settings)


def _diagnose_and_write(
    inp: _Inputs,
    *,
    train_splits: bool,
    executor: Executor | None,
    on_split: Callable[[SplitResult], None] | None,
) -> DiagnosisRun:
    """Check the targets, load the ensemble, diagnose, optionally train the splits, write."""
    from chemgap.models.ensemble import Ensemble

    for target in (inp.out_dir, inp.extra_out):
        if target is not None:
            check_regions_target(target)
    ensemble = Ensemble.load(inp.model_dir)
    _check_elements(inp.structures, ensemble)
    result = diagnose(
        inp.structures,
        ensemble,
        inp.cfg,
        seed=inp.seed,
        iteration=inp.iteration,
        previous=inp.previous,
        source=inp.source,
    )
    trained: list[SplitResult] = []
    if train_splits:
        from chemgap.models.config import EnsembleConfig, ModelConfig
        from chemgap.models.e0 import saved_atomic_energies

        # the split study's models are built like the diagnosed one: its E0s
        e0 = saved_atomic_energies(inp.model_dir)
        model_cfg = (inp.model_cfg or ModelConfig()).model_copy(update={"e0": e0})
        trained = run_splits(
            inp.structures,
            inp.cfg,
            model_cfg,
            inp.ens_cfg or EnsembleConfig(),
            inp.splits_dir,
            inp.seed,
            features=result.features,
            executor=executor,
            on_split=on_split,
        )
        result.splits = trained
    path = write_regions(result, inp.out_dir)
    if inp.extra_out is not None:
        write_regions(result, inp.extra_out)
    return DiagnosisRun(
        result=result, regions_path=path, models=inp.model_dir, trained_splits=trained
    )
