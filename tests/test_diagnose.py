"""Planted failures: a bulk-trained Cu ensemble on defects and surfaces, a molecular ensemble
that never saw a nitrile; the regions, the split table, storage and the CLI.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from click.testing import CliRunner

from chemgap.agent.diagnostics.diagnose import diagnose, load_regions, write_regions
from chemgap.agent.diagnostics.regions import region_masks
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import (
    ENERGY_KEY,
    FORCES_KEY,
    STATUS_KEY,
    reference_energies,
    reference_forces,
)
from chemgap.common.metrics import (
    energy_errors_per_atom,
    force_error_norms,
    mae,
    per_element_force_mae,
)
from chemgap.models.config import EnsembleConfig, ModelConfig

SMALL = ModelConfig(
    r_max=4.0, num_channels=8, max_L=1, num_interactions=2, correlation=2, e0="average"
)
FAST = EnsembleConfig(members=2, max_epochs=20, batch_size=4, lr=1e-2, patience=50)
CFG = DiagnosticsConfig(bootstrap=300, environment_classes=6, n_clusters=6)


def emt_labelled(atoms: Atoms) -> Atoms:
    ref = atoms.copy()
    ref.calc = EMT()
    atoms.info[ENERGY_KEY] = ref.get_potential_energy()
    atoms.arrays[FORCES_KEY] = ref.get_forces()
    atoms.info[STATUS_KEY] = "ok"
    return atoms


def cu_bulk(i: int) -> Atoms:
    rng = np.random.default_rng(i)
    a = bulk("Cu", cubic=True) * (2, 1, 1)
    a.set_cell(a.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
    a.rattle(0.08, seed=i)
    a.info.update(seed_kind="bulk", temperature_K=300.0)
    return a


def cu_vacancy(i: int) -> Atoms:
    a = bulk("Cu", cubic=True) * (2, 2, 2)
    del a[i % len(a)]
    a.rattle(0.08, seed=1000 + i)
    a.info.update(seed_kind="vacancy", temperature_K=600.0)
    return a


def cu_slab(i: int, miller: str) -> Atoms:
    a = (fcc111 if miller == "111" else fcc100)("Cu", size=(2, 2, 4), vacuum=6.0)
    a.pbc = True
    a.rattle(0.08, seed=2000 + i)
    a.info.update(seed_kind=f"surface{miller}", temperature_K=600.0)
    return a


def cu_test_set() -> list[Atoms]:
    return [
        *(emt_labelled(cu_bulk(100 + i)) for i in range(6)),
        *(emt_labelled(cu_vacancy(i)) for i in range(6)),
        *(emt_labelled(cu_slab(i, "111")) for i in range(4)),
        *(emt_labelled(cu_slab(i, "100")) for i in range(4)),
    ]


class NoisyModel:
    """A stand-in ensemble (no training): the labels plus seeded noise, the same every call."""

    elements = ["Cu"]  # noqa: RUF012
    n_members = 2
    calibration = None
    path = None

    def predict(self, structures, *, compute_stress=False, calibrated=True):
        rng = np.random.default_rng(7)
        n_atoms = np.array([len(a) for a in structures])
        f_ref = reference_forces(structures)
        # larger force errors on the under-coordinated (slab and vacancy) cells
        scale = np.repeat(np.where(n_atoms > 8, 0.15, 0.05), n_atoms)[:, None]
        return SimpleNamespace(
            energy_mean=reference_energies(structures)
            + rng.normal(0.0, 0.01, len(structures)) * n_atoms,
            forces_mean=f_ref + rng.normal(0.0, 1.0, f_ref.shape) * scale,
            force_std_atom_cal=rng.uniform(0.01, 0.1, len(f_ref)),
            calibrated=False,
            numbers=np.concatenate([a.numbers for a in structures]),
        )


def test_baseline_and_split_figures_are_the_common_metrics():
    """The diagnosis reports chemgap.common.metrics figures, computed here independently on the
    same predictions, so the diagnosis and the metrics module cannot drift apart.
    """
    test = cu_test_set()
    model = NoisyModel()
    cfg = DiagnosticsConfig(bootstrap=100, environment_classes=4, n_clusters=4)
    res = diagnose(test, model, cfg, seed=0)
    pred = model.predict(test)
    f_ref, e_ref = reference_forces(test), reference_energies(test)
    n_atoms = np.array([len(a) for a in test])
    norms = force_error_norms(pred.forces_mean, f_ref)
    e_err = energy_errors_per_atom(pred.energy_mean, e_ref, n_atoms)
    b = res.baseline
    exact = {"rel": 1e-12, "abs": 0.0}
    assert b["n_structures"] == len(test) and b["n_atoms"] == len(f_ref)
    assert b["force_mae"] == pytest.approx(mae(pred.forces_mean - f_ref), **exact)
    assert b["force_error_mean"] == pytest.approx(norms.mean(), **exact)
    assert b["energy_mae_per_atom"] == pytest.approx(mae(e_err), **exact)
    cu = b["per_element"]["Cu"]
    per_el = per_element_force_mae(pred.numbers, pred.forces_mean, f_ref)
    assert cu["force_mae"] == pytest.approx(per_el["Cu"], **exact)
    assert cu["force_error_mean"] == pytest.approx(norms.mean(), **exact)
    assert cu["n_atoms"] == len(f_ref)
    np.testing.assert_allclose(res.atom_error, norms, rtol=1e-12)
    np.testing.assert_allclose(res.energy_error, e_err, rtol=1e-12)
    # each side of each split: the same metrics restricted to that side's structures
    assert res.splits and all(s.skipped is None for s in res.splits)
    sidx = res.features.system_idx
    for s in res.splits:
        for side, force_mae, energy_mae in (
            (s.split["train"], s.id_force_mae, s.id_energy_mae),
            (s.split["test"], s.ood_force_mae, s.ood_energy_mae),
        ):
            atoms = np.isin(sidx, side)
            assert force_mae == pytest.approx(mae((pred.forces_mean - f_ref)[atoms]), **exact)
            assert energy_mae == pytest.approx(mae(e_err[side]), **exact)


@pytest.fixture(scope="module")
def cu(tmp_path_factory):
    """An ensemble trained on rattled bulk cells only, and a test set with defects/surfaces."""
    from chemgap.models.ensemble import train_ensemble

    train = [emt_labelled(cu_bulk(i)) for i in range(16)]
    out = tmp_path_factory.mktemp("cu_bulk_models")
    ens = train_ensemble(train, SMALL, FAST, out, seed=0)  # in-process
    return ens, cu_test_set()


@pytest.fixture(scope="module")
def cu_result(cu):
    ens, test = cu
    return diagnose(test, ens, CFG, seed=0, iteration=1)


def _about_coordination(region) -> bool:
    text = " ".join([region.rule, region.machine_rule, *region.also])
    return "coordination" in text or "defect" in text


def test_planted_failure_cu_undercoordination(cu, cu_result):
    res = cu_result
    found = [r for r in res.regions if _about_coordination(r)]
    assert found, [r.rule for r in res.regions]
    best = found[0]
    print(
        f"\n{best.rule}: error {best.mean_error:.3f} eV/Å "
        f"(95% CI {best.ci[0]:.3f}-{best.ci[1]:.3f}), "
        f"ratio {best.ratio:.2f} ({best.ratio_ci[0]:.2f}-{best.ratio_ci[1]:.2f}), "
        f"q {best.q_value:.2g}"
    )
    assert best.significant and best.q_value <= CFG.alpha
    assert best.ratio_ci[0] > 1.2 and best.ci[0] > best.baseline
    # the atoms the rule picks are defect/surface atoms: under-coordinated or next to one
    mask = region_masks([best], res.features)[best.id]
    cn = res.features.atom["coordination"]
    dist = res.features.atom["defect_distance_A"]
    assert ((cn[mask] < 12) | (dist[mask] < 3.0)).mean() > 0.9
    # bulk atoms are not a failure region: no significant rule selects mostly perfect bulk
    bulk_like = (cn == 12) & (dist >= 10.0)
    for r in res.regions:
        m = region_masks([r], res.features)[r.id]
        assert bulk_like[m].mean() < 0.5, r.rule
    # provenance and bookkeeping
    assert best.first_seen == 1 and best.last_seen == 1
    assert best.exemplars and best.exemplars[0]["atoms_in_region"] > 0
    assert res.baseline["n_structures"] == 20 and res.baseline["per_element"]["Cu"]["n_atoms"] > 0


def test_split_table_reports_every_split_next_to_random(cu_result):
    rows = {s.name: s for s in cu_result.splits}
    assert set(rows) == {"random", "cluster", "maxsep", "size"}
    rnd = rows["random"]
    for s in rows.values():
        assert s.skipped is None and not s.trained
        assert np.isfinite(s.ood_force_mae) and np.isfinite(s.id_force_mae)
        assert s.vs_random == pytest.approx(s.ood_force_mae / rnd.ood_force_mae)
    # size split: train on the 8-atom bulk cells, test on the large defect/surface cells
    assert rows["size"].ood_force_mae > rows["size"].id_force_mae


def test_first_and_last_seen_follow_previous_regions(cu, cu_result):
    ens, test = cu
    again = diagnose(test, ens, CFG, seed=0, iteration=2, previous=cu_result.regions)
    ids_before = {r.id: r for r in cu_result.regions}
    common = [r for r in again.regions if r.id in ids_before]
    assert common, "the same data and seed must find the same rules"
    for r in common:
        assert r.first_seen == 1 and r.last_seen == 2
    ghost = cu_result.regions[0].__class__.from_dict(
        {**cu_result.regions[0].to_dict(), "id": "Rdeadbeef", "rule": "element = Xx"}
    )
    third = diagnose(test, ens, CFG, seed=0, iteration=3, previous=[ghost])
    # not found again (its id is new) but its atoms are as bad as before: not resolved
    (gone,) = third.resolved_regions
    assert gone["id"] == "Rdeadbeef" and gone["status"] == "still above the baseline"
    assert third.resolved == []


def test_write_regions_and_inspect(cu_result, tmp_path):
    from chemgap.agent.cli.diagnose import inspect as inspect_cmd

    path = write_regions(cu_result, tmp_path)
    payload = json.loads(path.read_text())
    assert len(payload["regions"]) == len(cu_result.regions) > 0
    assert {s["name"] for s in payload["splits"]} == {"random", "cluster", "maxsep", "size"}
    regions, _ = load_regions(tmp_path)
    assert [r.id for r in regions] == [r.id for r in cu_result.regions]
    top = regions[0]
    import ase.io

    frames = ase.io.read(tmp_path / "regions" / f"{top.id}.extxyz", index=":")
    assert len(frames) == len(top.exemplars)
    assert frames[0].arrays["in_region"].sum() == top.exemplars[0]["atoms_in_region"]
    assert FORCES_KEY in frames[0].arrays and frames[0].info["region"] == top.id

    runner = CliRunner()
    table = runner.invoke(inspect_cmd, [str(tmp_path)], terminal_width=250)
    assert table.exit_code == 0, table.output
    assert top.id in table.output and "ratio to the baseline" in table.output
    assert "random" in table.output and "maxsep" in table.output
    one = runner.invoke(inspect_cmd, [str(tmp_path), "--region", top.id], terminal_width=200)
    assert one.exit_code == 0 and "ratio to baseline" in one.output and "exemplars" in one.output
    as_json = runner.invoke(inspect_cmd, [str(tmp_path), "--json"])
    assert json.loads(as_json.output)["regions"][0]["id"] == top.id
    export = tmp_path / "export"
    ex = runner.invoke(inspect_cmd, [str(tmp_path), "--region", top.id, "--export", str(export)])
    assert ex.exit_code == 0 and [p.name for p in export.iterdir()] == [f"{top.id}.extxyz"]
    bad = runner.invoke(inspect_cmd, [str(tmp_path), "--region", "Rnope"])
    assert bad.exit_code == 2 and "Rnope" in bad.output
    missing = runner.invoke(inspect_cmd, [str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert not payload["tentative"] and "tentative" not in table.output  # no quality: findings


def test_regions_of_a_model_that_misses_its_target_are_tentative(cu_result, tmp_path):
    """A diagnosis whose model misses its ID target writes ``tentative`` and the quality into
    regions.json, and ``inspect`` says so above the regions; one that meets it does not.
    """
    from dataclasses import replace

    from chemgap.agent.cli.diagnose import inspect as inspect_cmd

    quality = {"force_mae": 0.05, "force_rms": 0.2, "ratio": 0.25, "target": 0.15}
    quality |= {"ready": False, "basis": "holdout"}
    write_regions(replace(cu_result, quality=quality), tmp_path)
    payload = json.loads((tmp_path / "regions.json").read_text())
    assert payload["tentative"] and payload["quality"] == quality
    out = CliRunner().invoke(inspect_cmd, [str(tmp_path)], terminal_width=120).output
    assert "tentative: the in-distribution force MAE (50 meV/Å on the holdout) is 25 %" in out
    write_regions(replace(cu_result, quality={**quality, "ratio": 0.1, "ready": True}), tmp_path)
    assert not json.loads((tmp_path / "regions.json").read_text())["tentative"]


def test_diagnose_cli_on_files_and_on_a_run(cu, tmp_path):
    import ase.io

    from chemgap.agent.cli.diagnose import diagnose as diagnose_cmd
    from chemgap.agent.report.summary import run_status
    from chemgap.agent.store import RunStore
    from chemgap.campaigns.spec import parse_spec

    ens, test = cu
    data = tmp_path / "test.extxyz"
    ase.io.write(data, test, format="extxyz")
    runner = CliRunner()
    out = tmp_path / "diag"
    args = [
        "--models",
        str(ens.path),
        "--data",
        str(data),
        "-o",
        str(out),
        "--set",
        "bootstrap=200",
    ]
    res = runner.invoke(diagnose_cmd, args, terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "failure regions" in res.output and "maxsep" in res.output
    assert (out / "regions.json").exists() and (out / "regions").is_dir()

    spec = parse_spec(
        {
            "name": "cu-diag",
            "system": {"seeds": [{"kind": "bulk", "formula": "Cu", "crystal": "fcc", "count": 4}]},
            "oracle": {"name": "emt"},
            "diagnostics": {"bootstrap": 200, "n_clusters": 4},
        }
    )
    run = tmp_path / "run"
    store = RunStore.create(run, spec)
    for i, atoms in enumerate(test):
        store.add(atoms, iteration=0, source="test", status="ok", split="test", walker=i)
    shutil.copytree(ens.path, store.iteration_dir(1) / "models")
    res = runner.invoke(diagnose_cmd, [str(run)], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert (run / "diagnosis" / "regions.json").exists() and not (run / "regions.json").exists()
    res = runner.invoke(diagnose_cmd, [str(run), "--update"], terminal_width=250)
    assert res.exit_code == 0, res.output
    payload = json.loads((run / "regions.json").read_text())
    assert payload["iteration"] == 1 and (run / "iterations" / "001" / "regions.json").exists()
    assert run_status(run)["regions"] == len(payload["regions"]) > 0
    assert all(e["db_id"] is not None for r in payload["regions"] for e in r["exemplars"])

    neither = runner.invoke(diagnose_cmd, [])
    assert neither.exit_code == 2 and "--models" in neither.output
    bad_set = runner.invoke(diagnose_cmd, [str(run), "--set", "alpha=2"])
    assert bad_set.exit_code == 2 and "alpha" in bad_set.output
    no_models = tmp_path / "empty_run"
    RunStore.create(no_models, spec)
    res = runner.invoke(diagnose_cmd, [str(no_models)])
    assert res.exit_code == 2 and "no trained ensemble" in res.output


# --------------------------------------------------------------------------- molecules
TRAIN_SMILES = ["CCO", "CO", "CC(C)=O", "CC(=O)O", "COC", "CN", "CC(N)=O", "CCC", "CC=O", "CCN"]
NITRILES = ["CC#N", "CCC#N"]


def _molecules(smiles: list[str], n: int, seed: int) -> list[Atoms]:
    from tblite.ase import TBLite

    from chemgap.agent.seeds import smiles_conformers

    calc = TBLite(method="GFN2-xTB", verbosity=0)
    out = []
    for k, smi in enumerate(smiles):
        for j, atoms in enumerate(smiles_conformers(smi, n, seed + k)):
            atoms.rattle(0.05, seed=1000 * seed + 10 * k + j)
            atoms.center(vacuum=5.0)
            atoms.pbc = False
            atoms.calc = calc
            atoms.info[ENERGY_KEY] = atoms.get_potential_energy()
            atoms.arrays[FORCES_KEY] = atoms.get_forces()
            atoms.calc = None
            out.append(atoms)
    return out


def test_planted_failure_molecules_withheld_nitrile_group(tmp_path):
    """Trained without any nitrile (xTB labels), diagnosed with nitriles: the region names it."""
    from chemgap.models.ensemble import train_ensemble

    train = _molecules(TRAIN_SMILES, 3, 0)
    test = _molecules(TRAIN_SMILES, 2, 50) + _molecules(NITRILES, 5, 90)
    ens = train_ensemble(train, SMALL, FAST, tmp_path / "mol_models", seed=0)
    res = diagnose(test, ens, CFG, seed=0)
    named = [r for r in res.regions if any("nitrile" in t for t in [r.rule, *r.also, *r.enriched])]
    assert named, [r.rule for r in res.regions]
    best = named[0]
    assert best.significant and best.ratio_ci[0] > 1.5
    mask = region_masks([best], res.features)[best.id]
    assert res.features.atom["group:nitrile"][mask].mean() > 0.9
    # and no region is about a group the ensemble was trained on
    assert not any(r.rule == "group = hydroxyl" for r in res.regions)
