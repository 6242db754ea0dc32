"""The run directory's layout: every file and folder a run writes, named in this one module.

A run directory (docs/architecture.md, "The run directory")::

    RUN/
      spec.yaml  state.json  data.db  run.lock  cluster.json  probes.json  report.html
      iterations/NNN/                      IterationLayout
        models/ensemble.json ...           the iteration's ensemble (chemgap.models.io)
        calibration.json  exploration.json  selection.json
        candidates.extxyz  visited.extxyz  md_failures.extxyz  selection.extxyz
        test_residuals.npz  selected_residuals.npz
        probes/probes.json  probes/candidates.extxyz
        regions.json  regions/<id>.extxyz  splits/...      DiagnosisLayout (--update)
      diagnosis/                           DiagnosisLayout of ``chemgap diagnose RUN``
      remedies/                            RemediesLayout (or any -o folder)
        experiment.json  results.json  labels.db  refused.txt  split.json
        guidance/regions.json  guidance/regions/<id>.extxyz   DiagnosisLayout
        plan/rK/pool.extxyz  plan/rK/<arm>.extxyz  plan/rK/<arm>.json
        cells/<key>.json  cells/<key>/models/

Readers and writers take their paths from :class:`RunLayout` (or, for a diagnosis written
outside a run, :class:`DiagnosisLayout`), so renaming a file is one edit here; the files keep
the format they had before this module existed (tests/test_layout.py reads an old run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chemgap.models.io import ENSEMBLE_FILE

# ---------------------------------------------------------------- the run's root
STATE_FILE = "state.json"
SPEC_FILE = "spec.yaml"
DB_FILE = "data.db"
LOCK_FILE = "run.lock"
CLUSTER_FILE = "cluster.json"  # the nodes and where each iteration's tasks ran
PROBES_FILE = "probes.json"  # the last probe run (also iterations/NNN/probes/probes.json)
REPORT_FILE = "report.html"
ITERATIONS_DIR = "iterations"
DIAGNOSIS_DIR = "diagnosis"  # where ``chemgap diagnose RUN`` writes unless --update / -o
REMEDIES_DIR = "remedies"

# ---------------------------------------------------------------- an iteration
MODELS_DIR = "models"
CALIBRATION_FILE = "calibration.json"
EXPLORATION_FILE = "exploration.json"
CANDIDATES_FILE = "candidates.extxyz"  # the explored frames (also the probes' MD frames)
VISITED_FILE = "visited.extxyz"  # a uniform sample of the walkers' frames (the roles' pool)
MD_FAILURES_FILE = "md_failures.extxyz"
SELECTION_FILE = "selection.extxyz"
SELECTION_INFO_FILE = "selection.json"
TEST_RESIDUALS = "test_residuals.npz"  # the iteration's ensemble on the test set (raw spread)
SELECTED_RESIDUALS = "selected_residuals.npz"  # ... on the structures it chose, once labelled
PROBES_DIR = "probes"

# ---------------------------------------------------------------- a diagnosis
REGIONS_FILE = "regions.json"
REGIONS_DIR = "regions"
SPLITS_DIR = "splits"

# ---------------------------------------------------------------- the remediation experiment
EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.json"
LABELS_DB = "labels.db"
REFUSED_FILE = "refused.txt"  # why the spec's experiment could not run
SPLIT_FILE = "split.json"  # the test set's guidance and scoring parts
GUIDANCE_DIR = "guidance"  # the diagnosis of the guidance part: the regions that guide
PLAN_DIR = "plan"
POOL_FILE = "pool.extxyz"
CELLS_DIR = "cells"

_ITERATION_GLOB = "[0-9][0-9][0-9]"


@dataclass(frozen=True)
class DiagnosisLayout:
    """Where a diagnosis is written: ``regions.json``, ``regions/<id>.extxyz``, ``splits/``.

    The folder is an iteration's (``--update`` and the campaign), the run's ``diagnosis/`` or
    any ``-o`` folder.
    """

    path: Path

    @property
    def regions_file(self) -> Path:
        """``regions.json``: the regions found, with their statistics."""
        return self.path / REGIONS_FILE

    @property
    def regions_dir(self) -> Path:
        """``regions/``: each region's exemplar structures."""
        return self.path / REGIONS_DIR

    def region_structures(self, region_id: str) -> Path:
        """``regions/<id>.extxyz``: a region's exemplar structures."""
        return self.regions_dir / f"{region_id}.extxyz"

    @staticmethod
    def region_file_name(region_id: str) -> str:
        """The exemplars' path relative to the diagnosis folder, as regions.json records it."""
        return f"{REGIONS_DIR}/{region_id}.extxyz"

    @property
    def splits_dir(self) -> Path:
        """``splits/``: the biased-split studies' models."""
        return self.path / SPLITS_DIR


@dataclass(frozen=True)
class IterationLayout(DiagnosisLayout):
    """``iterations/NNN``: one loop iteration's models, exploration, selection and diagnosis."""

    number: int = 0

    @property
    def models(self) -> Path:
        """``models/``: the iteration's ensemble (chemgap.models.io)."""
        return self.path / MODELS_DIR

    @property
    def ensemble_file(self) -> Path:
        """``models/ensemble.json``: present once the ensemble is saved."""
        return self.models / ENSEMBLE_FILE

    @property
    def calibration(self) -> Path:
        """``calibration.json``: trust levels and calibration fitted this iteration."""
        return self.path / CALIBRATION_FILE

    @property
    def exploration(self) -> Path:
        """``exploration.json``: what the exploration ran and found."""
        return self.path / EXPLORATION_FILE

    @property
    def candidates(self) -> Path:
        """``candidates.extxyz``: the frames explored."""
        return self.path / CANDIDATES_FILE

    @property
    def visited(self) -> Path:
        """``visited.extxyz``: every walker's frame every few steps, whatever its uncertainty
        (the holdout and calibration labels are drawn from it).
        """
        return self.path / VISITED_FILE

    @property
    def md_failures(self) -> Path:
        """``md_failures.extxyz``: the walkers that failed, at their last frame."""
        return self.path / MD_FAILURES_FILE

    @property
    def selection(self) -> Path:
        """``selection.extxyz``: the structures chosen for labelling."""
        return self.path / SELECTION_FILE

    @property
    def selection_info(self) -> Path:
        """``selection.json``: how they were chosen, and each one's role."""
        return self.path / SELECTION_INFO_FILE

    @property
    def test_residuals(self) -> Path:
        """``test_residuals.npz``: the ensemble's errors and spread on the test set."""
        return self.path / TEST_RESIDUALS

    @property
    def selected_residuals(self) -> Path:
        """``selected_residuals.npz``: ... on the selection, once labelled."""
        return self.path / SELECTED_RESIDUALS

    @property
    def probes(self) -> ProbesLayout:
        """``probes/``: the iteration's probe run."""
        return ProbesLayout(self.path / PROBES_DIR)


@dataclass(frozen=True)
class ProbesLayout:
    """A probe run's folder: ``probes.json`` and the MD probes' ``candidates.extxyz``."""

    path: Path

    @property
    def report(self) -> Path:
        """``probes.json``: the probe report."""
        return self.path / PROBES_FILE

    @property
    def candidates(self) -> Path:
        """``candidates.extxyz``: the MD probes' frames."""
        return self.path / CANDIDATES_FILE


@dataclass(frozen=True)
class RemediesLayout:
    """``remedies/``: the remediation experiment, its labels and each cell's models.

    The run's test set is split once per experiment into a *guidance* part and a *scoring*
    part (``split.json``): the regions that steer the ``region`` arm are found by diagnosing
    the base iteration's ensemble on the guidance part (``guidance/``), and every arm is
    scored on the scoring part only (``cells/KEY.json``, ``results.json``), never on a
    structure that guided it.
    """

    path: Path

    @property
    def experiment(self) -> Path:
        """``experiment.json``: the experiment's design (arms, cells, budget)."""
        return self.path / EXPERIMENT_FILE

    @property
    def results(self) -> Path:
        """``results.json``: each arm's scores on the scoring part and the comparisons (its
        ``test_split`` says which structures scored the arms and which guided them).
        """
        return self.path / RESULTS_FILE

    @property
    def labels_db(self) -> Path:
        """``labels.db``: the experiment's own labels (a store like data.db)."""
        return self.path / LABELS_DB

    @property
    def refused(self) -> Path:
        """``refused.txt``: why the spec's experiment could not run."""
        return self.path / REFUSED_FILE

    @property
    def split(self) -> Path:
        """``split.json``: the test set's split: per part (``guidance``: whose diagnosis finds
        the regions that guide the region arm; ``scoring``: on which every arm is scored) its
        indices, data.db ids and count per test kind, and the split's seed.
        """
        return self.path / SPLIT_FILE

    @property
    def guidance(self) -> DiagnosisLayout:
        """``guidance/``: the base ensemble's diagnosis on the guidance part only
        (``regions.json``, ``regions/<id>.extxyz``): the regions that guide the region arm.
        """
        return DiagnosisLayout(self.path / GUIDANCE_DIR)

    def plan(self, repeat: int) -> Path:
        """``plan/rK``: repeat K's pool and each data arm's pick."""
        return self.path / PLAN_DIR / f"r{repeat}"

    def pool(self, repeat: int) -> Path:
        """``plan/rK/pool.extxyz``: the exploration pool every data arm of repeat K picks from."""
        return self.plan(repeat) / POOL_FILE

    def pick(self, repeat: int, arm: str) -> Path:
        """``plan/rK/ARM.extxyz``: the structures a data arm labels."""
        return self.plan(repeat) / f"{arm}.extxyz"

    def pick_notes(self, repeat: int, arm: str) -> Path:
        """``plan/rK/ARM.json``: notes on the pick."""
        return self.plan(repeat) / f"{arm}.json"

    @property
    def cells_dir(self) -> Path:
        """``cells/``: one result file and one model folder per arm x repeat (x size)."""
        return self.path / CELLS_DIR

    def cell_result(self, key: str) -> Path:
        """``cells/KEY.json``: one finished cell's scores (on the scoring part) and costs."""
        return self.cells_dir / f"{key}.json"

    def cell_models(self, key: str) -> Path:
        """``cells/KEY/models``: its trained ensemble."""
        return self.cells_dir / key / MODELS_DIR


@dataclass(frozen=True)
class RunLayout:
    """A run directory's paths: ``RunLayout(root).iteration(3).models`` and so on."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def state(self) -> Path:
        """``state.json``: the loop's state (atomic, resumable)."""
        return self.root / STATE_FILE

    @property
    def spec(self) -> Path:
        """``spec.yaml``: the campaign spec, as run."""
        return self.root / SPEC_FILE

    @property
    def db(self) -> Path:
        """``data.db``: every label (SQLite)."""
        return self.root / DB_FILE

    @property
    def lock(self) -> Path:
        """``run.lock``: held while a process runs the campaign."""
        return self.root / LOCK_FILE

    @property
    def cluster(self) -> Path:
        """``cluster.json``: the Ray nodes and where each iteration's tasks ran."""
        return self.root / CLUSTER_FILE

    @property
    def probes_file(self) -> Path:
        """The last probe run's ``probes.json``, copied to the run's root."""
        return self.root / PROBES_FILE

    @property
    def report(self) -> Path:
        """``report.html``: the campaign's report."""
        return self.root / REPORT_FILE

    @property
    def iterations_dir(self) -> Path:
        """``iterations/``."""
        return self.root / ITERATIONS_DIR

    @property
    def diagnosis(self) -> DiagnosisLayout:
        """``diagnosis/``: where ``chemgap diagnose RUN`` writes."""
        return DiagnosisLayout(self.root / DIAGNOSIS_DIR)

    @property
    def last_diagnosis(self) -> DiagnosisLayout:
        """The campaign's last diagnosis, written at the run's root (``regions.json``, ...)."""
        return DiagnosisLayout(self.root)

    @property
    def remedies(self) -> RemediesLayout:
        """``remedies/``: the remediation experiment."""
        return RemediesLayout(self.root / REMEDIES_DIR)

    def iteration(self, number: int) -> IterationLayout:
        """``iterations/NNN`` of iteration ``number`` (1-based; nothing is created)."""
        return IterationLayout(self.iterations_dir / f"{number:03d}", number)

    def iterations(self) -> list[IterationLayout]:
        """The iterations on disk, in order."""
        found = sorted(self.iterations_dir.glob(_ITERATION_GLOB))
        return [IterationLayout(p, int(p.name)) for p in found if p.is_dir()]

    def trained_iterations(self) -> list[IterationLayout]:
        """The iterations whose ensemble was saved (``models/ensemble.json`` exists)."""
        return [it for it in self.iterations() if it.ensemble_file.is_file()]

    def is_run(self) -> bool:
        """Whether ``root`` holds a run (its ``state.json``)."""
        return self.state.is_file()
