"""``write_regions``: atomic against a crash, and never over files chemgap did not write."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import pytest
from click.testing import CliRunner
from test_diagnose import NoisyModel, cu_test_set

from chemgap.agent.diagnostics import diagnose as diagnose_mod
from chemgap.agent.diagnostics.diagnose import diagnose, load_regions, write_regions
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import DiagnosticsConfig

CFG = DiagnosticsConfig(bootstrap=100, environment_classes=4, n_clusters=4)


@pytest.fixture(scope="module")
def result():
    res = diagnose(cu_test_set(), NoisyModel(), CFG, seed=0, iteration=1)
    assert res.regions and any(res.exemplars.values())
    return res


def _snapshot(folder):
    """Every file under ``folder`` (relative name -> SHA-1), hidden ones included."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_crash_while_writing_exemplars_leaves_the_old_diagnosis(result, tmp_path, monkeypatch):
    """The exemplar writer fails half-way (one file written, then an error).

    Catches the old order (rmtree regions/, write exemplars, then the json): that leaves an
    emptied or half-written regions/ next to the old regions.json.
    """
    write_regions(result, tmp_path)
    before = _snapshot(tmp_path)
    assert "regions.json" in before and any(k.startswith("regions/") for k in before)

    def half_then_fail(folder, exemplars):
        rid = next(iter(exemplars))
        (folder / f"{rid}.extxyz").write_text("half a file")
        raise OSError("disk full")

    monkeypatch.setattr(diagnose_mod, "write_exemplars", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_regions(replace(result, iteration=2), tmp_path)
    assert _snapshot(tmp_path) == before  # nothing new, nothing removed, no temp folder left
    assert json.loads((tmp_path / "regions.json").read_text())["iteration"] == 1


def test_a_crash_between_the_renames_is_undone_by_the_next_write(result, tmp_path, monkeypatch):
    """Killed after moving the old regions/ aside and before moving the new one in.

    Catches a writer that leaves the run without regions/ (or with stale temp folders) for
    good: the next write puts the old folder back, then replaces it cleanly.
    """
    write_regions(result, tmp_path)
    before = _snapshot(tmp_path)
    real_replace = os.replace
    calls = []

    def killed_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(diagnose_mod.os, "replace", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_regions(replace(result, iteration=2), tmp_path)
    monkeypatch.setattr(diagnose_mod.os, "replace", real_replace)
    assert not (tmp_path / "regions").exists()
    diagnose_mod._tidy(tmp_path)
    assert _snapshot(tmp_path) == before  # the old folder is back, the half-done new one gone
    write_regions(replace(result, iteration=3), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["regions", "regions.json"]
    assert json.loads((tmp_path / "regions.json").read_text())["iteration"] == 3
    assert {k for k in _snapshot(tmp_path) if k.startswith("regions/")} == {
        k for k in before if k.startswith("regions/")
    }


def test_write_regions_refuses_folders_and_files_it_did_not_write(result, tmp_path):
    """A user's regions/ (any name but ``R<8 hex>.extxyz``) or regions.json is left alone.

    Catches a writer that replaces regions/ or regions.json whatever they hold.
    """
    user = tmp_path / "regions"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match=r"regions: holds files chemgap did not write \(notes.txt\)"):
        write_regions(result, tmp_path)
    assert (user / "notes.txt").read_text() == "mine" and not (tmp_path / "regions.json").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "regions.json").write_text('{"my": "data"}')
    with pytest.raises(BadInput, match="is not a chemgap regions file"):
        write_regions(result, other)
    assert (other / "regions.json").read_text() == '{"my": "data"}'
    assert not (other / "regions").exists()

    # chemgap's own output, from an older version too, is replaced
    ours = tmp_path / "ours"
    write_regions(result, ours)
    (ours / "regions" / "Rdeadbeef.extxyz").write_text("a resolved region's exemplars")
    write_regions(result, ours)
    assert not (ours / "regions" / "Rdeadbeef.extxyz").exists()
    regions, _ = load_regions(ours)
    assert [r.id for r in regions] == [r.id for r in result.regions]


def test_diagnose_dash_o_dot_keeps_a_users_regions_folder(tmp_path, monkeypatch):
    """``chemgap diagnose --models M --data D -o .`` in a folder with the user's regions/notes.txt:
    refused with exit 2 before any work, naming the folder and the file; the file survives.

    Catches the old behaviour (``shutil.rmtree('./regions')``).
    """
    import ase.io

    from chemgap.agent.cli.diagnose import diagnose as diagnose_cmd
    from chemgap.models.ensemble import Ensemble

    loaded = []
    monkeypatch.setattr(Ensemble, "load", staticmethod(lambda *a, **k: loaded.append(a)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ensemble.json").write_text("{}")
    ase.io.write(tmp_path / "test.extxyz", cu_test_set()[:4], format="extxyz")
    (tmp_path / "regions").mkdir()
    (tmp_path / "regions" / "notes.txt").write_text("my notes")
    res = CliRunner().invoke(
        diagnose_cmd,
        ["--models", "model", "--data", "test.extxyz", "-o", "."],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 2, res.output
    assert "regions: holds files chemgap did not write (notes.txt)" in res.output
    assert (tmp_path / "regions" / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "regions.json").exists() and loaded == []
