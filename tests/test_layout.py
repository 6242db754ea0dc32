"""The run directory's layout: the names it gives are the format runs have on disk, and a run
written before the layout module existed still reads.

``tests/data/run-before-layout`` is a ``make run`` (cu-defects) written by chemgap before
``chemgap.agent.layout`` and the typed records existed: its small files (state, spec, data.db,
the iterations' JSON files, the last diagnosis and probe run, the experiment's results), without
the model weights and the extxyz frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from chemgap.agent.cli import main
from chemgap.agent.layout import RunLayout
from chemgap.agent.records import (
    CalibrationRecord,
    ExplorationRecord,
    RemedyResultsRecord,
    SelectionRecord,
)

OLD_RUN = Path(__file__).parent / "data" / "run-before-layout"


@pytest.fixture
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


def test_the_layout_names_the_files_as_runs_have_them(tmp_path):
    """The names are the on-disk format (spelled here on purpose: renaming one in the layout
    would orphan every existing run, and this test says so).
    """
    run = RunLayout(tmp_path)
    it = run.iteration(3)
    expected = {
        run.state: "state.json",
        run.spec: "spec.yaml",
        run.db: "data.db",
        run.lock: "run.lock",
        run.cluster: "cluster.json",
        run.probes_file: "probes.json",
        run.report: "report.html",
        run.last_diagnosis.regions_file: "regions.json",
        run.diagnosis.regions_file: "diagnosis/regions.json",
        it.models: "iterations/003/models",
        it.ensemble_file: "iterations/003/models/ensemble.json",
        it.calibration: "iterations/003/calibration.json",
        it.exploration: "iterations/003/exploration.json",
        it.candidates: "iterations/003/candidates.extxyz",
        it.md_failures: "iterations/003/md_failures.extxyz",
        it.selection: "iterations/003/selection.extxyz",
        it.selection_info: "iterations/003/selection.json",
        it.test_residuals: "iterations/003/test_residuals.npz",
        it.selected_residuals: "iterations/003/selected_residuals.npz",
        it.probes.report: "iterations/003/probes/probes.json",
        it.probes.candidates: "iterations/003/probes/candidates.extxyz",
        it.regions_file: "iterations/003/regions.json",
        it.region_structures("R1"): "iterations/003/regions/R1.extxyz",
        it.splits_dir: "iterations/003/splits",
        run.remedies.experiment: "remedies/experiment.json",
        run.remedies.results: "remedies/results.json",
        run.remedies.labels_db: "remedies/labels.db",
        run.remedies.refused: "remedies/refused.txt",
        run.remedies.pool(0): "remedies/plan/r0/pool.extxyz",
        run.remedies.pick(1, "random"): "remedies/plan/r1/random.extxyz",
        run.remedies.cell_result("random-r0"): "remedies/cells/random-r0.json",
        run.remedies.cell_models("random-r0"): "remedies/cells/random-r0/models",
    }
    for path, name in expected.items():
        assert path == tmp_path / name


def test_the_iterations_on_disk_in_order(old_run):
    layout = RunLayout(old_run)
    assert layout.is_run()
    assert [it.number for it in layout.iterations()] == [1, 2, 3]
    assert [it.number for it in layout.trained_iterations()] == [3]  # weights left out


def test_every_record_of_an_older_run_reads(old_run):
    """Broken variant caught: a record field required that older runs lack, or typed wrongly."""
    layout = RunLayout(old_run)
    for it in layout.iterations():
        cal = CalibrationRecord.read(it.calibration)
        assert set(cal.trust) >= {"lower", "upper"} and cal.holdout_errors["force_mae"] > 0
        expl = ExplorationRecord.read(it.exploration)
        assert expl.walkers > 0 and abs(sum(expl.overall.values()) - 1) < 1e-9
        sel = SelectionRecord.read(it.selection_info)
        assert sel.selected is None or sel.selected <= sel.batch
        assert sel.to_dict() == json.loads(it.selection_info.read_text())
    results = RemedyResultsRecord.read(layout.remedies.results)
    assert results.arms and results.arms[0]["metrics"]


def test_status_summary_and_report_of_an_older_run(old_run):
    """``chemgap status`` and the report's reader take a run written before the layout."""
    from chemgap.agent.report.gather import gather
    from chemgap.agent.report.summary import run_status

    info = run_status(old_run)
    assert info["campaign"] == "cu-defects" and info["iteration"] == 3
    assert info["regions"] > 0 and info["probes"]["rows"]
    data = gather(old_run)
    assert data["calibration"]["trust"] and data["test"].iteration == 3
    assert data["remedies"]["rows"] and data["summary"]["learning_curve"]
    result = CliRunner().invoke(main, ["status", str(old_run)])
    assert result.exit_code == 0, result.output
    assert "cu-defects" in result.output


def test_a_record_missing_a_field_is_one_error_naming_the_file_and_field(tmp_path):
    from chemgap.agent.errors import RunDirError

    path = tmp_path / "exploration.json"
    path.write_text('{"walkers": 2}')
    with pytest.raises(RunDirError, match=r"exploration\.json: steps: Field required"):
        ExplorationRecord.read(path)
    assert ExplorationRecord.read_optional(path) is None
