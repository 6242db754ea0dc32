"""``write_regions``: atomic against a crash, and never over files chemgap did not write; what
a diagnosis stores with its result (bond-perception counts).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from click.testing import CliRunner
from test_diagnose import NoisyModel, cu_test_set

from chemgap.agent.diagnostics import storage as diagnose_mod
from chemgap.agent.diagnostics.diagnose import diagnose, load_regions, write_regions
from chemgap.agent.errors import BadInput
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import (
    ENERGY_KEY,
    FORCES_KEY,
    STATUS_KEY,
    reference_energies,
    reference_forces,
)

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


class MoleculeModel:
    """A stand-in ensemble for H/C/O molecules: the labels plus seeded force noise."""

    elements = ["H", "C", "O"]  # noqa: RUF012
    n_members = 2
    calibration = None
    path = None

    def predict(self, structures, *, compute_stress=False, calibrated=True):
        rng = np.random.default_rng(3)
        n_atoms = np.array([len(a) for a in structures])
        f_ref = reference_forces(structures)
        return SimpleNamespace(
            energy_mean=reference_energies(structures) + rng.normal(0.0, 0.01, len(n_atoms)),
            forces_mean=f_ref + rng.normal(0.0, 0.1, f_ref.shape),
            force_std_atom_cal=rng.uniform(0.01, 0.1, len(f_ref)),
            calibrated=False,
            numbers=np.concatenate([a.numbers for a in structures]),
        )


def _labelled_molecules() -> list[Atoms]:
    """Three ethanols RDKit perceives; two methyl radicals and a stretched ethanol it cannot."""
    ethanols = []
    for i in range(3):
        a = molecule("CH3CH2OH")
        a.rattle(0.02, seed=i)
        ethanols.append(a)
    stretched = molecule("CH3CH2OH")
    stretched.positions *= 1.5  # bonds 1.5x too long: no bond orders fit
    out = [*ethanols, molecule("CH3"), molecule("CH3"), stretched]
    for a in out:
        a.center(vacuum=4.0)
        a.info[ENERGY_KEY] = 0.0
        a.arrays[FORCES_KEY] = np.zeros((len(a), 3))
        a.info[STATUS_KEY] = "ok"
    return out


PERCEPTION = {"tried": 6, "perceived": 3, "failed": 3, "failed_formulas": ["CH3", "C2H6O"]}


def test_failed_bond_perception_is_counted_stored_and_printed(tmp_path, monkeypatch):
    """3 of 6 molecules without perceived bonds: the diagnosis counts them, regions.json keeps
    the counts, ``chemgap diagnose`` and ``chemgap inspect`` print one line about them.

    Broken variant caught: failures only logged (the old ``_molecular``), so nothing in the
    result, the file or the output says that half the molecules have no group features.
    """
    import ase.io

    from chemgap.agent.cli.diagnose import diagnose as diagnose_cmd
    from chemgap.agent.cli.diagnose import inspect as inspect_cmd
    from chemgap.agent.cli.diagnose import perception_line
    from chemgap.agent.diagnostics.features import perceive_molecule
    from chemgap.models.ensemble import Ensemble

    mols = _labelled_molecules()
    assert [perceive_molecule(a) is not None for a in mols] == [True] * 3 + [False] * 3
    res = diagnose(mols, MoleculeModel(), CFG, seed=0)
    assert res.perception == PERCEPTION
    path = write_regions(res, tmp_path / "api")
    assert json.loads(path.read_text())["perception"] == PERCEPTION

    monkeypatch.setattr(Ensemble, "load", staticmethod(lambda *a, **k: MoleculeModel()))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ensemble.json").write_text("{}")
    ase.io.write(tmp_path / "mols.extxyz", mols, format="extxyz")
    out = CliRunner().invoke(
        diagnose_cmd,
        ["--models", str(tmp_path / "model"), "--data", str(tmp_path / "mols.extxyz"),
         "-o", str(tmp_path / "cli"), "--set", "bootstrap=100"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    line = (
        "bond perception failed for 3 of 6 molecules: they have no functional-group features "
        "(e.g. CH3, C2H6O)"
    )
    assert line in out.output
    assert json.loads((tmp_path / "cli" / "regions.json").read_text())["perception"] == PERCEPTION
    shown = CliRunner().invoke(inspect_cmd, [str(tmp_path / "cli")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and line in shown.output
    # every molecule perceived, or no molecules at all: no line
    assert perception_line({**PERCEPTION, "failed": 0, "failed_formulas": []}) is None
    assert perception_line({}) is None and perception_line(None) is None
