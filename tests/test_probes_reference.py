"""The oracle behind the model contract (models/reference.py), and the probes' null test: every
probe on the oracle-as-model gives zero error and passes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from chemgap.agent.probes import ProbesConfig, ProbeSystem, run_probes, write_report
from chemgap.models.contract import EnsembleModel
from chemgap.models.data import make_batch
from chemgap.models.reference import ReferenceModel
from chemgap.models.testing import check_model_contract
from chemgap.oracle import OracleConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cu_cells() -> list:
    rng = np.random.default_rng(1)
    out = []
    for repeat in ((1, 1, 1), (2, 1, 1)):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
        a.positions += rng.normal(scale=0.08, size=a.positions.shape)
        out.append(a)
    return out


def test_reference_model_passes_the_model_contract(tmp_path):
    model = ReferenceModel(EMT, elements=["Cu"], n_members=3)
    assert isinstance(model, EnsembleModel)
    report = check_model_contract(
        model,
        cu_cells(),
        load=lambda p: ReferenceModel.load(p, EMT),
        save_dir=tmp_path,
    )
    assert report.force_fd_error < 1e-5
    assert report.reload_error == 0.0
    saved = json.loads((tmp_path / "reference.json").read_text())
    assert saved["calculator"] == "ase.calculators.emt:EMT" and saved["n_members"] == 3


def test_reference_model_is_the_calculator_with_zero_spread():
    cells = cu_cells()
    model = ReferenceModel(EMT(), elements=["Cu"], n_members=2)
    pred = model.predict(cells, compute_stress=True)
    for i, a in enumerate(cells):
        a.calc = EMT()
        assert pred.energy_mean[i] == a.get_potential_energy()
        assert np.array_equal(pred.forces_mean[pred.per_structure(i)], a.get_forces())
        assert np.allclose(pred.stress_mean[i], a.get_stress())
    assert pred.energy_std.max() == 0.0 and pred.force_std_atom.max() == 0.0
    # a MACE graph (what the explorer builds) carries positions, cell and pbc: same numbers
    graph = make_batch(cells, model.z_table, 4.0, "float64")
    out = model.evaluate(graph)
    assert np.array_equal(out.energy[0].numpy(), pred.energy_mean)
    with pytest.raises(ValueError, match="not in the model's elements"):
        model.predict([molecule("H2O")])


def test_reference_model_calibration_keeps_unit_scales():
    cells = cu_cells()
    for a in cells:
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
    cal = ReferenceModel(EMT, elements=["Cu"]).calibrate(cells)
    assert cal.energy_scale == 1.0 and cal.uncalibrated


SMALL_MD = {"steps": 30, "min_atoms": 32}
STATIC = ["eos", "elastic", "vacancy", "surface", "dimer", "vibrations"]
DYNAMIC = ["md_stability", "nve_drift", "rdf"]


def _null_model() -> ReferenceModel:
    return ReferenceModel(EMT, elements=["Cu", "C", "O"], n_members=2, r_max=4.5)


def _crystal() -> ProbeSystem:
    return ProbeSystem.from_structures([bulk("Cu", "fcc", a=3.6, cubic=True)])


def _assert_null(report) -> None:
    for result in report.results:
        assert result.error is None, result.error
        assert result.passed is True, result.name
        assert result.seconds > 0
        for m in result.metrics:
            if m.oracle is not None:
                assert m.error == pytest.approx(0.0, abs=1e-9), (result.name, m.label)
            assert not m.members or m.band == 0.0  # identical members: no spread
            assert m.passed in (True, None), (result.name, m.label)
    assert report.passed


def test_static_probes_on_the_oracle_as_model_have_zero_error_and_pass(tmp_path):
    """Null test: the oracle wrapped as a 2-member model against itself."""
    cfg = ProbesConfig(vacancy={"sizes": [1, 2]})
    report = run_probes(_null_model(), OracleConfig(name="emt"), _crystal(), cfg, names=STATIC)
    _assert_null(report)
    co = run_probes(_null_model(), EMT(), [molecule("CO")], cfg, names=["vibrations", "dimer"])
    _assert_null(co)
    assert {m.label for m in co["dimer"].metrics} >= {"force flips C-O", "force flips O-O"}
    written = write_report(report, tmp_path)
    data = json.loads(written["probes"].read_text())
    assert [p["name"] for p in data["probes"]] == STATIC
    assert data["passed"] is True and data["meta"]["oracle"] == "emt"
    eos = data["probes"][0]
    assert eos["payload"]["curves"][0]["oracle"] == eos["payload"]["curves"][0]["model"]


def test_md_probes_on_the_oracle_as_model_have_zero_error_and_pass():
    """The MD probes share velocities and noise between rows: identical potentials retrace
    identical trajectories (members, mean and oracle), so even g(r) overlaps exactly.
    """
    cfg = ProbesConfig(
        md_stability={**SMALL_MD, "oracle": True, "members": True},
        nve_drift=SMALL_MD,
        rdf={**SMALL_MD, "steps": 40, "equilibration": 10},
    )
    report = run_probes(_null_model(), OracleConfig(name="emt"), _crystal(), cfg, names=DYNAMIC)
    _assert_null(report)
    assert report["rdf"].metrics[0].model == 1.0  # overlap of identical g(r)
