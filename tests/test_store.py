"""The run store: atomic state, provenance round trip, refusals that change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from click.testing import CliRunner

from chemgap.agent.cli import main
from chemgap.agent.errors import RunDirError
from chemgap.agent.report.summary import run_status
from chemgap.agent.store import RunStore, atomic_write_text, read_state, structure_key
from chemgap.campaigns.spec import load_spec


@pytest.fixture
def spec():
    return load_spec("cu-defects")


def labelled_cu(seed: int):
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=seed)
    ref = atoms.copy()
    ref.calc = EMT()
    atoms.info["REF_energy"] = ref.get_potential_energy()
    atoms.arrays["REF_forces"] = ref.get_forces()
    atoms.info["REF_stress"] = ref.get_stress()
    return atoms


def snapshot(root):
    return {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_create_layout_and_reopen(tmp_path, spec):
    store = RunStore.create(tmp_path / "run", spec)
    root = store.root
    assert {p.name for p in root.iterdir()} == {"spec.yaml", "state.json", "data.db", "iterations"}
    again = RunStore.open(root)
    assert again.spec == spec
    assert again.state.campaign == "cu-defects" and again.state.status == "running"
    assert store.iteration_dir(3) == root / "iterations" / "003"


def test_provenance_round_trip_through_data_db(tmp_path, spec):
    store = RunStore.create(tmp_path / "run", spec)
    ok = labelled_cu(1)
    store.add(
        ok,
        iteration=2,
        source="walker",
        walker=5,
        temperature_K=np.float64(800.0),
        oracle="emt",
        seconds=0.02,
    )
    failed = molecule("H2O")
    failed.info.update(label_status="scf_not_converged", label_message="no convergence in 250")
    store.add(failed, iteration=2, source="walker", walker=6, oracle="xtb", seconds=1.5)

    reopened = RunStore.open(store.root)  # a new connection reads what the first wrote
    (row,) = reopened.structures(status="ok")
    assert row.calc is None
    np.testing.assert_allclose(row.arrays["REF_forces"], ok.arrays["REF_forces"], atol=1e-12)
    np.testing.assert_allclose(row.info["REF_stress"], ok.info["REF_stress"], atol=1e-12)
    assert row.info["REF_energy"] == pytest.approx(ok.info["REF_energy"], abs=1e-12)
    np.testing.assert_allclose(row.positions, ok.positions)
    assert row.info["iteration"] == 2 and row.info["walker"] == 5
    assert row.info["temperature_K"] == 800.0 and row.info["oracle"] == "emt"
    (bad,) = reopened.structures(status="scf_not_converged")
    assert bad.info["label_message"] == "no convergence in 250"
    assert "REF_energy" not in bad.info
    assert reopened.label_counts() == {"ok": 1, "failed": 1}
    assert reopened.has(ok) and not reopened.has(labelled_cu(2))


def test_ase_db_cli_reads_the_store(tmp_path, spec):
    store = RunStore.create(tmp_path / "run", spec)
    store.add(labelled_cu(3), iteration=0, source="seed", oracle="emt")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ase",
            "db",
            str(store.root / "data.db"),
            "status=ok",
            "-c",
            "id,formula,energy,fmax,source",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Cu8" in out and "seed" in out and "Rows: 1" in out


def test_structure_key_sees_real_changes_only():
    a = bulk("Cu", cubic=True)
    b = a.copy()
    b.positions[0, 0] += 1e-7  # below the rounding
    c = a.copy()
    c.positions[0, 0] += 1e-2
    assert structure_key(a) == structure_key(b) != structure_key(c)
    # never a string ase.db would read as a number (a hex digest like "1620e00..." would be)
    for seed in range(200):
        d = a.copy()
        d.rattle(0.1, seed=seed)
        with pytest.raises(ValueError):
            float(structure_key(d))


def test_state_writes_are_atomic(tmp_path, spec, monkeypatch):
    store = RunStore.create(tmp_path / "run", spec)
    store.write_state(iteration=1, step="train")
    before = (store.root / "state.json").read_bytes()

    def crash(*_args, **_kw):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write_state(iteration=2, step="explore")
    monkeypatch.undo()
    assert (store.root / "state.json").read_bytes() == before  # the old state, whole
    assert [p.name for p in store.root.iterdir() if p.name.endswith(".tmp")] == []
    assert read_state(store.root).iteration == 1


def test_atomic_write_survives_a_killed_writer(tmp_path):
    # a child killed in the middle of writing leaves the old file intact
    target = tmp_path / "state.json"
    atomic_write_text(target, json.dumps({"v": "old"}))
    code = (
        "import os, signal, tempfile\n"
        "from pathlib import Path\n"
        "import chemgap.agent.store as s\n"
        "real = os.fsync\n"
        "def die(fd):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.fsync = die\n"
        f"s.atomic_write_text(Path({str(target)!r}), 'x' * 100000)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert json.loads(target.read_text()) == {"v": "old"}


def test_refuses_a_non_empty_foreign_directory(tmp_path, spec):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    before = snapshot(foreign)
    with pytest.raises(RunDirError, match="non-empty directory that is not a chemgap run"):
        RunStore.create(foreign, spec)
    assert snapshot(foreign) == before


def test_refuses_to_recreate_an_existing_run(tmp_path, spec):
    store = RunStore.create(tmp_path / "run", spec)
    with pytest.raises(RunDirError, match="chemgap resume"):
        RunStore.create(store.root, spec)


@pytest.mark.parametrize(
    ("prepare", "needle"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "empty directory"),
        (lambda root: (root.mkdir(), (root / "notes.txt").write_text("x")), "no state.json"),
    ],
)
def test_status_refusals_exit_2(tmp_path, prepare, needle):
    root = tmp_path / "run"
    prepare(root)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, ["status", str(root)])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


ROW = {
    "iteration": 1,
    "labels_ok": 12,
    "labels_failed": 0,
    "oracle_calls": 12,
    "energy_mae_per_atom": 0.01,
    "force_mae": 0.05,
    "accurate": 0.5,
    "candidate": 0.4,
    "failed": 0.1,
    "elapsed_s": 30.0,
}


def _state(**fields) -> str:
    """A state.json text: a valid one at iteration 1, with ``fields`` changed."""
    base = {"format_version": 1, "chemgap_version": "x", "campaign": "x", "iteration": 1}
    return json.dumps({**base, **fields})


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"format_version": 1, "campa', "corrupt"),
        ("[1, 2]", "corrupt"),
        ('{"format_version": 1, "campaign": "x"}', "corrupt (chemgap_version"),
        ('{"format_version": 99, "chemgap_version": "9.0", "campaign": "x"}', "run format 99"),
        # field-level corruption: a step the state machine does not have, a negative iteration
        ('{"format_version": 1, "chemgap_version": "x", "campaign": "x", "step": "bogus"}', "step"),
        ('{"format_version": 1, "chemgap_version": "x", "campaign": "x", "iteration": -1}', "iter"),
        # history rows are typed: a row the stop check would crash on, or one from the future
        (_state(history=[{**ROW, "force_mae": "low"}]), "history.0: force_mae"),
        (
            _state(history=[{k: v for k, v in ROW.items() if k != "accurate"}]),
            "history.0: accurate",
        ),
        (_state(history=[{**ROW, "accurate": 1.5}]), "history.0: accurate"),
        (_state(history=[ROW, ROW]), "strictly increasing"),
        (_state(iteration=0, history=[ROW]), "beyond the state's iteration"),
    ],
)
def test_corrupt_or_incompatible_state_is_refused_untouched(tmp_path, spec, content, needle):
    """Broken variant (history rows): ``history`` as untyped dicts, so a row without
    ``accurate`` or with a string MAE passes ``status`` and crashes ``resume`` in the stop check.
    """
    store = RunStore.create(tmp_path / "run", spec)
    (store.root / "state.json").write_text(content)
    before = snapshot(store.root)
    for args in (
        ["status", str(store.root)],
        ["status", "--json", str(store.root)],
        ["resume", str(store.root)],
        ["diagnose", str(store.root)],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
    with pytest.raises(RunDirError):
        RunStore.open(store.root)
    assert snapshot(store.root) == before


def test_status_json_and_liveness(tmp_path, spec):
    store = RunStore.create(tmp_path / "run", spec)
    store.add(labelled_cu(4), iteration=0, source="seed", oracle="emt")
    with store.lock():
        assert run_status(store.root)["state"] == "running"
        with (
            pytest.raises(RunDirError, match="another chemgap process"),
            RunStore.open(store.root).lock(),
        ):
            pass
    # no process holds the lock any more: a run that says 'running' was killed -> interrupted
    result = CliRunner().invoke(main, ["status", "--json", str(store.root)])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["campaign"] == "cu-defects" and info["state"] == "interrupted"
    assert info["iteration"] == 0 and info["labels"] == {"ok": 1, "failed": 0}
    assert info["regions"] == 0
    store.write_state(status="done", stop_reason="iteration cap", iteration=3)
    info = json.loads(CliRunner().invoke(main, ["status", "--json", str(store.root)]).output)
    assert info["state"] == "done" and info["iteration"] == 3
    human = CliRunner().invoke(main, ["status", str(store.root)])
    assert "done (iteration cap)" in human.output


def test_state_is_read_again_under_the_lock(tmp_path, spec):
    """Broken variant: a driver acting on the state.json it read when it opened the run, before
    another driver's last write; the lock must hand it the state on disk.
    """
    store = RunStore.create(tmp_path / "run", spec)
    early = RunStore.open(store.root)  # opened while another process still drives the run
    store.write_state(iteration=3, step="explore")
    assert early.state.iteration == 0
    with early.lock():
        assert (early.state.iteration, early.state.step) == (3, "explore")


def test_extxyz_steps_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    """Broken variant: write + rename without fsync (a power cut can leave an empty file)."""
    import os

    from chemgap.agent.structio import write_extxyz

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_extxyz(tmp_path / "sel.extxyz", [labelled_cu(0)])
    assert synced and (tmp_path / "sel.extxyz").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["sel.extxyz"]


def test_resume_checks_the_oracle_backend_first(tmp_path, spec):
    """Broken variant: resume without the backend check started Ray and failed at the first
    label (exit 1); now an oracle that cannot be built is bad input before anything runs.
    """
    from click.testing import CliRunner

    from chemgap.agent.cli import main

    broken = spec.model_copy(deep=True)
    broken.oracle.name = "ase"
    broken.oracle.params = {"calculator": "no_such_module_here:Calc"}
    store = RunStore.create(tmp_path / "run", broken)
    before = snapshot(store.root)
    result = CliRunner().invoke(main, ["resume", str(store.root)])
    assert result.exit_code == 2, result.output
    assert "oracle" in result.output and "no_such_module_here" in result.output
    assert snapshot(store.root) == before


def test_resume_refuses_a_state_with_a_bogus_step_and_changes_nothing(tmp_path, spec):
    """Broken variant: ``"step": "bogus"`` used to crash inside the loop and then write
    status=failed into the run it had been told was corrupt.
    """
    from click.testing import CliRunner

    from chemgap.agent.cli import main

    store = RunStore.create(tmp_path / "run", spec)
    state = json.loads((store.root / "state.json").read_text())
    state["step"] = "bogus"
    (store.root / "state.json").write_text(json.dumps(state))
    before = snapshot(store.root)
    for command in (["resume", str(store.root)], ["status", str(store.root)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "step" in result.output, result.output
    assert snapshot(store.root) == before


def test_a_damaged_store_is_an_error_not_zero_calls(tmp_path, spec):
    """Broken variant: label_counts returned zeros on a damaged database, so the oracle-call
    budget read "0 calls used".
    """
    store = RunStore.create(tmp_path / "run", spec)
    store.add(labelled_cu(0), status="ok", split="train")
    assert run_status(store.root)["labels"] == {"ok": 1, "failed": 0}
    (store.root / "data.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(RunDirError, match=r"data\.db cannot be read"):
        run_status(store.root)


def test_an_unreadable_regions_file_is_said_to_be_unreadable(tmp_path, spec):
    """Broken variant: an unreadable regions.json showed as "0 regions" in status."""
    store = RunStore.create(tmp_path / "run", spec)
    (store.root / "regions.json").write_text("{not json")
    info = run_status(store.root)
    assert info["regions"] is None and "unreadable" in info["regions_unreadable"]
