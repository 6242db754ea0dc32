"""The batched explorer and the diagnosis with long-range members (chemgap.models.longrange):
each walker's total charge reaches the members, the members' learned charges are written onto
the frames, and a diagnosis has them (and each structure's total charge) as features.

Members are tiny and untrained (randomised weights, float64), so the tests are about plumbing,
not physics, and run in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from test_longrange_members import members as lr_members

from chemgap.agent.explore import BatchedForceField, explore
from chemgap.agent.md import init_state
from chemgap.agent.trust import TrustLevels
from chemgap.campaigns.spec import ExplorationConfig
from chemgap.models.ensemble import Ensemble

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# every frame above the lower level, none above the upper: candidates at steps 1 and 11
EVERY_FRAME = TrustLevels(lower={}, upper={}, default_lower=0.0, default_upper=1e6)


def members(long_range: str, k: int = 2) -> Ensemble:
    """K untrained Na/Cl members with randomised weights (noise 0.1 on every parameter, so the
    charges are far from the readout's near-zero start and differ between members).
    """
    return lr_members(walkers(), long_range, k=k)


def walkers() -> list[Atoms]:
    """A Na2Cl⁺ cation (charge +1), a neutral Na4Cl4 cluster and a periodic rock-salt cell
    (Ewald), the cation first so that its atoms are not at offset 0 of any other walker.
    """
    cation = Atoms("Na2Cl", positions=[[0, 0, 0], [2.6, 0.3, 0], [4.9, 1.8, 0.4]])
    cation.info["charge"] = 1
    cluster = bulk("NaCl", "rocksalt", a=5.5, cubic=True)
    cluster.pbc, cluster.cell = False, np.zeros((3, 3))
    cluster.rattle(0.05, seed=1)
    cell = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell.rattle(0.05, seed=2)
    return [cation, cluster, cell]


@pytest.fixture(scope="module")
def coulomb() -> Ensemble:
    return members("coulomb")


def test_batched_long_range_forces_equal_single_structure_predictions(coulomb):
    """All walkers in one graph (a cation, a cluster, a periodic cell): energies, forces and
    charges equal ``Ensemble.predict`` of each walker alone, which reads its charge from
    ``info``; the cation's charges sum to +1.

    Broken variant caught: the graph built without each walker's charge (every walker
    neutral): the cation's charges sum to 0 and its energy differs (verified).
    """
    structures = walkers()
    state = init_state(structures, [300.0] * 3, friction_per_fs=0.01, rng=np.random.default_rng(0))
    assert state.charge.tolist() == [1.0, 0.0, 0.0]
    ff = BatchedForceField(coulomb, skin_A=0.5)
    energy, forces, std = ff.evaluate(state)
    assert ff.charges is not None and ff.charges.shape == (2, len(state.positions))
    for w, atoms in enumerate(structures):
        single = coulomb.predict([atoms], calibrated=False)
        s = state.walker_slice(w)
        assert energy[w] == pytest.approx(single.energy_mean[0], abs=1e-8)
        np.testing.assert_allclose(forces[s].numpy(), single.forces_mean, atol=1e-8)
        np.testing.assert_allclose(std[s], single.force_std_atom, atol=1e-8)
        np.testing.assert_allclose(
            ff.charges[:, s].mean(0).numpy(), single.charges_mean, atol=1e-10
        )
    sums = [float(ff.charges[:, state.walker_slice(w)].sum(1).mean()) for w in range(3)]
    assert sums == pytest.approx([1.0, 0.0, 0.0], abs=1e-10)


def test_charged_walker_frames_carry_its_charge_and_the_members_charges(coulomb):
    """A Na2Cl⁺ walker explored with untrained coulomb members next to neutral ones: every
    candidate frame of the cation has ``info["charge"] == 1`` and predicted charges summing to
    +1; the neutral walkers' frames sum to 0 and carry no charge; the charges written are those
    of the frame itself (``Ensemble.predict`` of the frame) with their spread over the members.

    Broken variants caught: the charge dropped on the graph (cation frames sum to 0) or not
    carried to the frames (no ``info["charge"]``); charges of the wrong walker's atoms (wrong
    length or sum) or of another step (differ from the frame's own prediction).
    """
    cfg = ExplorationConfig(steps=12, timestep_fs=1.0, temperatures_K=[300.0])
    result = explore(coulomb, walkers(), cfg, levels=EVERY_FRAME, rng=np.random.default_rng(1))
    assert not result.failures
    frames = {w: [c for c in result.candidates if c.info["walker"] == w] for w in range(3)}
    assert all(len(f) == 2 for f in frames.values())  # steps 1 and 11
    for w, total in enumerate([1.0, 0.0, 0.0]):
        for frame in frames[w]:
            q = frame.arrays["pred_charges"]
            assert q.shape == (len(frame),)
            assert q.sum() == pytest.approx(total, abs=1e-10)
            assert (frame.arrays["pred_charges_std"] > 0).all()
            assert frame.info.get("charge", 0) == total
    assert frames[0][0].info["charge"] == 1 and isinstance(frames[0][0].info["charge"], int)
    assert "charge" not in frames[1][0].info
    later = frames[0][1]
    own = coulomb.predict([later], calibrated=False)
    np.testing.assert_allclose(later.arrays["pred_charges"], own.charges_mean, atol=1e-10)
    np.testing.assert_allclose(later.arrays["pred_charges_std"], own.charges_std, atol=1e-10)


def test_md_failure_frames_carry_the_charges_of_their_own_steps(coulomb, monkeypatch):
    """The cation is declared failed at its 4th step (a check patched to say so): its md_failure
    keeps the frames of steps 1-4, each annotated with the charges of its own step (summing to
    +1, equal to ``Ensemble.predict`` of that frame).

    Broken variants caught: failure frames without charges, or all with the charges of the
    latest step (verified).
    """
    from chemgap.agent import explore as explore_module

    check = explore_module._Exploration.check
    calls: list[int] = []

    def fail_at_fourth(self, energy, forces, std):
        out = check(self, energy, forces, std)
        calls.append(1)
        if len(calls) == 4:
            out.nonfinite[0] = out.bad[0] = True
        return out

    monkeypatch.setattr(explore_module._Exploration, "check", fail_at_fourth)
    cfg = ExplorationConfig(steps=4, temperatures_K=[600.0])
    result = explore(coulomb, walkers()[:2], cfg, rng=np.random.default_rng(0))
    assert [(f.walker, f.step) for f in result.failures] == [(0, 4)]
    frames = result.failures[0].frames
    assert [f.info["step"] for f in frames] == [1, 2, 3, 4]
    own = coulomb.predict(frames, calibrated=False)
    np.testing.assert_allclose(
        np.concatenate([f.arrays["pred_charges"] for f in frames]), own.charges_mean, atol=1e-10
    )
    # steps differ, by far more than the tolerance above (so the latest step's charges on
    # every frame would fail it)
    assert np.ptp([f.arrays["pred_charges"][0] for f in frames]) > 1e-8
    for frame in frames:
        assert frame.info["charge"] == 1
        assert frame.arrays["pred_charges"].sum() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("long_range", ["none", "d3"])
def test_members_without_charges_write_none(long_range):
    """Plain and D3-only members learn no charges: no charge arrays on the frames, and a charged
    walker still carries its total charge in ``info``.
    """
    ens = members(long_range)
    cfg = ExplorationConfig(steps=2, temperatures_K=[300.0])
    result = explore(ens, walkers()[:2], cfg, levels=EVERY_FRAME, rng=np.random.default_rng(2))
    assert len(result.candidates) == 2
    for frame in result.candidates:
        assert "pred_charges" not in frame.arrays and "pred_charges_std" not in frame.arrays
    assert result.candidates[0].info["charge"] == 1


def test_diagnosis_has_the_predicted_charges_and_the_total_charge_as_features(coulomb):
    """A diagnosis of coulomb members: ``pred_charge_e`` is the ensemble-mean charge of every
    atom (as ``Ensemble.predict`` gives it), ``charge_spread_e`` its spread, ``total_charge_e``
    each structure's charge from ``info``; rules read them with units. Plain members add no
    charge columns.

    Broken variants caught: charges not passed to the features (column missing), charges in
    the wrong atom order (differ from the prediction), the structure charge read as NaN.
    """
    from chemgap.agent.diagnostics.diagnose import diagnose
    from chemgap.agent.diagnostics.rules import Condition, condition_text
    from chemgap.campaigns.spec import DiagnosticsConfig

    rng = np.random.default_rng(3)
    structures = []
    for k in range(4):
        for atoms in walkers():
            atoms.rattle(0.05, seed=k)
            atoms.info["REF_energy"] = -3.0 * len(atoms) + rng.normal()
            atoms.arrays["REF_forces"] = rng.normal(scale=0.5, size=(len(atoms), 3))
            structures.append(atoms)
    cfg = DiagnosticsConfig(splits=[], environment_classes=2)
    result = diagnose(structures, coulomb, cfg, seed=0)
    pred = coulomb.predict(structures)
    atom = result.features.atom
    np.testing.assert_allclose(atom["pred_charge_e"], np.round(pred.charges_mean, 4))
    np.testing.assert_allclose(atom["charge_spread_e"], np.round(pred.charges_std, 4))
    assert result.features.structure["total_charge_e"].tolist() == [1.0, 0.0, 0.0] * 4
    words = condition_text(Condition(feature="pred_charge_e", op="≥", value=0.5))
    assert words == "predicted atomic charge ≥ 0.5 e"

    plain = diagnose(structures, members("none"), cfg, seed=0)
    assert "pred_charge_e" not in plain.features.atom
    assert "total_charge_e" in plain.features.atom
