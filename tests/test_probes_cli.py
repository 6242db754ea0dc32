"""``chemgap probe``, the ``probes:`` spec section, and the probes on a real (tiny, untrained)
MACE ensemble: the model path, bands, candidates and the exit-2 refusals.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner

from chemgap.agent.cli.main import main
from chemgap.agent.errors import BadInput
from chemgap.agent.probes import ProbesConfig, ProbeSystem, run_probes
from chemgap.campaigns.spec import PROBE_BOUNDS, ProbeName, SpecError, load_spec, parse_spec
from chemgap.models.build import build_model, compute_stats
from chemgap.models.config import ModelConfig
from chemgap.models.ensemble import Ensemble

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ModelConfig(
    num_channels=8, max_L=1, num_interactions=2, r_max=4.0, radial_mlp=[16, 16], e0="average"
)


def _tiny_ensemble() -> Ensemble:
    """Two untrained MACE members on EMT-labelled Cu statistics, weights perturbed so that the
    members differ (probing needs no training to exercise every path).
    """
    rng = np.random.default_rng(0)
    data = []
    for _ in range(4):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
        data.append(a)
    stats = compute_stats(data, [29], TINY.r_max)
    members = []
    for seed in range(2):
        model = build_model(TINY, stats, seed=seed)
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        members.append(model)
    return Ensemble(members, model_cfg=TINY)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe_model")
    _tiny_ensemble().save(path)
    return path


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe_sys") / "cu.xyz"
    ase.io.write(path, bulk("Cu", "fcc", a=3.6, cubic=True))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_probe_command_writes_report_and_an_80_column_table(model_dir, cu_file, tmp_path):
    out = tmp_path / "out"
    res = _invoke(
        "probe", model_dir, "--oracle", "emt", "--system", cu_file,
        "--probe", "eos", "--probe", "dimer", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    table = [line for line in res.output.splitlines() if not line.startswith("wrote ")]
    assert max(len(line) for line in table) <= 80
    for text in ("eos", "dimer", "B0 GPa", "force flips Cu-Cu", "±", "probes passed"):
        assert text in res.output
    data = json.loads((out / "probes.json").read_text())
    assert [p["name"] for p in data["probes"]] == ["eos", "dimer"]
    b0 = next(m for m in data["probes"][0]["metrics"] if m["name"] == "B0")
    assert len(b0["members"]) == 2 and b0["oracle"] == pytest.approx(134.4, abs=1.0)
    assert data["meta"]["oracle"] == "emt" and data["meta"]["members"] == 2
    frames = ase.io.read(out / "candidates.extxyz", index=":")
    assert frames and {f.info["source"] for f in frames} == {"probe"}
    assert {f.info["probe"] for f in frames} <= {"eos", "dimer"}


def test_probe_command_reads_a_spec_and_its_overrides(model_dir, tmp_path):
    out = tmp_path / "out"
    res = _invoke(
        "probe", model_dir, "--system", "cu-defects", "--probe", "vacancy",
        "--set", "vacancy.sizes=[1]", "--set", "bounds.vacancy.E_vac.bad=9", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / "probes.json").read_text())
    assert data["meta"]["settings"]["vacancy"]["sizes"] == [1]
    e_vac = data["probes"][0]["metrics"][0]
    assert e_vac["label"] == "E_vac N=4" and e_vac["bound"] == {"good": 0.05, "bad": 9.0}
    assert data["meta"]["oracle"] == "emt"  # the spec's oracle


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--oracle", "emt", "--probe", "bogus"], "bogus"),
        (["--oracle", "sw", "--probe", "eos"], "oracle 'sw' does not support Cu"),
        (["--probe", "eos"], "--oracle: name the oracle"),
        (["--oracle", "emt"], "--probe: name at least one probe"),
        (["--oracle", "emt", "--probe", "eos", "--set", "eos.points=2"], "eos.points"),
    ],
)
def test_probe_command_refuses_bad_input_with_exit_2(model_dir, cu_file, tmp_path, args, expected):
    res = _invoke("probe", model_dir, "--system", cu_file, *args, "-o", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert "Traceback" not in res.output


def test_a_probe_that_does_not_apply_is_one_sentence(model_dir, tmp_path):
    cluster = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.1, 0]])
    cluster.center(vacuum=6.0)
    path = tmp_path / "cluster.xyz"
    ase.io.write(path, cluster)
    res = _invoke(
        "probe", model_dir, "--oracle", "emt", "--system", path, "--probe", "elastic",
        "-o", tmp_path / "o",
    )  # fmt: skip
    assert res.exit_code == 2
    assert (
        "probe 'elastic' does not apply to cluster.xyz: it needs a periodic crystal" in res.output
    )
    other = Ensemble.load(model_dir)
    with pytest.raises(BadInput, match="not in the model's elements"):
        run_probes(other, EMT(), [Atoms("Al2", positions=[[0, 0, 0], [2.5, 0, 0]])],
                   ProbesConfig(), names=["dimer"])  # fmt: skip


def test_relaxation_probes_on_a_mace_ensemble_give_bands_and_candidates(model_dir):
    ens = Ensemble.load(model_dir)
    cfg = ProbesConfig(
        vacancy={"sizes": [1], "relax": {"max_steps": 15}},
        surface={"facets": [(1, 1, 1)], "layers": 2, "relax": {"max_steps": 15}},
        candidates_per_probe=1,
    )
    system = ProbeSystem.from_structures([bulk("Cu", "fcc", a=3.6, cubic=True)])
    report = run_probes(ens, EMT(), system, cfg, names=["vacancy", "surface"])
    for result in report.results:
        assert result.error is None
        assert result.metrics[0].band > 0  # untrained members disagree
        assert result.metrics[0].members != [result.metrics[0].oracle] * 2
    cands = report.candidates(per_probe=1)
    assert len(cands) == 2
    assert {a.info["probe"] for a in cands} == {"vacancy", "surface"}
    assert all(a.info["probe_reason"] in ("error", "disagreement") for a in cands)
    assert len(cands[0]) in (3, 8)  # the relaxed 3-atom vacancy cell or the 8-atom slab


def test_a_dimer_keeps_the_separations_the_oracle_can_do():
    """An oracle that fails below 1.2 Å (as xTB's SCF can at a dimer's short separations):
    the dimer probe drops those separations for every row, judges the rest and says so; model
    and oracle are the same potential, so it passes with zero error.

    Broken variant caught: one failed oracle call raising out of the probe (the whole dimer
    probe lost, as organics-xtb's was before).
    """
    from ase.calculators.calculator import CalculationFailed

    from chemgap.models.reference import ReferenceModel

    class ShortFails(EMT):
        def calculate(self, atoms=None, *args, **kwargs):
            if atoms is not None and len(atoms) == 2 and atoms.get_distance(0, 1) < 1.2:
                raise CalculationFailed("SCF not converged")
            super().calculate(atoms, *args, **kwargs)

    model = ReferenceModel(EMT, elements=["Cu"], n_members=2, r_max=4.5)
    report = run_probes(model, ShortFails(), [bulk("Cu", "fcc", a=3.6)], ProbesConfig(),
                        names=["dimer"])  # fmt: skip
    (dimer,) = report.results
    assert dimer.error is None and dimer.passed is True
    assert any("36 of 251 separations dropped" in note for note in dimer.notes), dimer.notes
    (curve,) = dimer.payload["curves"]
    assert min(curve["x"]) > 1.2


def test_a_probe_that_raises_is_recorded_not_raised():
    class Broken(EMT):
        def calculate(self, *args, **kwargs):
            raise RuntimeError("oracle crashed")

    system = ProbeSystem.from_structures([bulk("Cu", "fcc", a=3.6, cubic=True)])
    from chemgap.models.reference import ReferenceModel

    report = run_probes(ReferenceModel(EMT, elements=["Cu"]), Broken(), system, ProbesConfig(),
                        names=["eos", "dimer"])  # fmt: skip
    eos, dimer = (r.error for r in report.results)
    assert eos == "RuntimeError: oracle crashed"
    assert dimer.startswith("RuntimeError: the oracle failed on 276 of 276 separations (first: ")
    assert dimer.endswith("RuntimeError: oracle crashed)")
    assert report.passed is False and report.failed() == ["eos", "dimer"]
    assert report.to_dict()["probes"][0]["passed"] is None
    assert report.rows()[0][-1] == "error"


def test_probes_section_defaults_off_and_validates_bounds():
    spec = load_spec("cu-defects")  # the default run probes every iteration
    assert spec.probes.names == ["eos", "vacancy", "surface", "dimer"] and spec.probes.every == 1
    seed = {"kind": "bulk", "formula": "Cu", "crystal": "fcc", "count": 8}
    data = {"name": "x", "system": {"seeds": [seed]}}
    spec = parse_spec(json.loads(json.dumps(data)))  # a spec without the section: off
    assert spec.probes.names == [] and spec.probes.every == 0
    spec = parse_spec(
        json.loads(json.dumps(data)),
        overrides={"probes.names": ["eos", "dimer"], "probes.bounds.dimer.force_flips.bad": "3"},
    )
    assert spec.probes.names == [ProbeName.EOS, ProbeName.DIMER]
    bounds = spec.probes.bounds_for("dimer")
    assert (bounds["force_flips"].good, bounds["force_flips"].bad) == (0.0, 3.0)
    assert bounds["tortuosity"] == PROBE_BOUNDS[ProbeName.DIMER]["tortuosity"]
    with pytest.raises(SpecError, match="dimer has no metric 'flips'"):
        parse_spec(json.loads(json.dumps(data)), overrides={"probes.bounds.dimer.flips.bad": "3"})
    with pytest.raises(SpecError, match=r"probes\.names\.0"):
        parse_spec(json.loads(json.dumps(data)), overrides={"probes.names": ["phonons"]})
    with pytest.raises(SpecError, match="good and bad must differ"):
        parse_spec(
            json.loads(json.dumps(data)), overrides={"probes.bounds.eos.B0": "{good: 30, bad: 30}"}
        )


def test_probe_system_from_builtin_specs():
    from chemgap.agent.probes import load_system

    cu, spec = load_system("cu-defects")
    assert spec.name == "cu-defects" and cu.elements == ["Cu"]
    assert len(cu.crystal) == 4 and cu.crystal.cell.lengths() == pytest.approx([3.59] * 3)
    assert len(cu.supercell(32)) == 32 and cu.molecules == []
    organics, _ = load_system("organics-xtb")
    formulas = [m.get_chemical_formula() for m in organics.molecules]
    assert organics.crystal is None and organics.elements == ["C", "H", "N", "O"]
    assert 1 <= len(formulas) <= 4 and len(set(formulas)) == len(formulas)
    assert not any(m.pbc.any() for m in organics.molecules)


def test_check_probes_needs_no_model():
    """A campaign validates its probes section before it has trained anything."""
    from chemgap.agent.probes import check_probes, load_system

    organics, spec = load_system("organics-xtb")
    cfg = ProbesConfig(names=["dimer", "vibrations", "dimer"])
    assert check_probes(organics, cfg, oracle=spec.oracle) == ["dimer", "vibrations"]
    with pytest.raises(BadInput, match=r"probe 'elastic' does not apply to .*periodic crystal"):
        check_probes(organics, ProbesConfig(names=["elastic"]), oracle=spec.oracle)
    with pytest.raises(BadInput, match="expensive_oracle=true"):
        check_probes(organics, ProbesConfig(names=["rdf"]), oracle=spec.oracle)
    with pytest.raises(BadInput, match="'phonons' is not a probe"):
        check_probes(organics, cfg, names=["phonons"])


def test_own_points_are_each_rows_single_points_on_its_own_structures(model_dir):
    """Each row on its own grid (members that differ, the mean, the oracle) from one batched
    call equals that row evaluated alone; every row on the oracle's grid equals
    ``single_points`` of it.
    """
    from chemgap.agent.probes.potentials import Potentials
    from chemgap.agent.probes.relax import scaled

    pot = Potentials(Ensemble.load(model_dir), EMT())
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    grids = [[scaled(cell, 1 + 0.01 * r + 0.02 * i) for i in range(3)] for r in range(4)]
    own, on_oracle = pot.own_points(grids, stress=True)
    for r in range(4):
        alone = pot.evaluate_rows([(a, r) for a in grids[r]], stress=True)
        # float32 members: another batch sums in another order (1e-5 eV on a 4-atom cell)
        assert own.energy[r] == pytest.approx([x.energy for x in alone], abs=1e-5)
        assert own.stress[r] == pytest.approx(np.array([x.stress for x in alone]), abs=1e-6)
        for i, x in enumerate(alone):
            assert own.forces[i][r] == pytest.approx(x.forces, abs=1e-5)
    assert own.energy[0, 0] != own.energy[1, 0]  # the members differ
    sp = pot.single_points(grids[3], stress=True)
    assert on_oracle.energy == pytest.approx(sp.energy, abs=1e-5)
    assert on_oracle.stress == pytest.approx(sp.stress, abs=1e-6)
