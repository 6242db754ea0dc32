"""The model contract (chemgap.models.testing) on every model kind chemgap ships.

Each kind is a factory in ``MODEL_KINDS``; a second kind (members with long-range terms, say)
joins the list and runs these tests unchanged. The members are untrained MACE models with
randomised weights in float64, so the physics checks (finite-difference forces, rotation and
permutation invariance, batched = single, save/load) are sharp and cost no training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from chemgap.models.build import build_model, compute_stats
from chemgap.models.config import ModelConfig
from chemgap.models.contract import EnsembleModel
from chemgap.models.data import symbols_to_z
from chemgap.models.ensemble import Ensemble
from chemgap.models.testing import Tolerances, check_model_contract

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CFG = ModelConfig(
    num_channels=8, max_L=1, num_interactions=2, r_max=4.0, radial_mlp=[16, 16], dtype="float64"
)


def _fake_labels(structures: list[Atoms]) -> list[Atoms]:
    """Energies/forces only for the data statistics the model is built with (E0s, scale)."""
    rng = np.random.default_rng(0)
    for a in structures:
        a.info["REF_energy"] = -3.0 * len(a) + rng.normal()
        a.arrays["REF_forces"] = rng.normal(scale=0.5, size=(len(a), 3))
    return structures


def mace_ensemble(structures: list[Atoms], k: int = 2) -> Ensemble:
    """K MACE members with non-trivial random weights (fresh readouts are near zero)."""
    z = symbols_to_z(sorted({s for a in structures for s in a.get_chemical_symbols()}))
    stats = compute_stats(_fake_labels([a.copy() for a in structures]), z, CFG.r_max)
    members = []
    for seed in range(k):
        model = build_model(CFG, stats, seed=seed)
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        members.append(model)
    return Ensemble(members, model_cfg=CFG)


def copper_cells() -> list[Atoms]:
    rng = np.random.default_rng(1)
    out = []
    for repeat in ((1, 1, 1), (2, 1, 1)):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
        a.positions += rng.normal(scale=0.08, size=a.positions.shape)
        out.append(a)
    return out


def molecules() -> list[Atoms]:
    rng = np.random.default_rng(2)
    out = []
    for name in ("CH3CH2OH", "CH3CHO"):
        a = molecule(name)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(a)
    return out


MODEL_KINDS = {"mace-ensemble": mace_ensemble}
SYSTEMS = {"periodic Cu": copper_cells, "molecules CHO": molecules}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize("system", list(SYSTEMS))
def test_model_contract(kind, system, tmp_path):
    structures = SYSTEMS[system]()
    model = MODEL_KINDS[kind](structures)
    assert isinstance(model, EnsembleModel)
    report = check_model_contract(model, structures, load=type(model).load, save_dir=tmp_path)
    assert report.force_fd_error < 1e-5
    assert report.reload_error == 0.0


def test_contract_catches_a_model_that_breaks_it():
    """Broken variant: members whose energy gets a position-dependent term the forces do not
    carry (a predict() that adds 0.01 eV/Å × sum of x) must fail the finite-difference check.
    """
    structures = copper_cells()
    model = mace_ensemble(structures)
    honest = model.predict

    def broken(batch, **kw):
        pred = honest(batch, **kw)
        shift = np.array([0.01 * a.positions[:, 0].sum() for a in batch])
        pred.energy_members = pred.energy_members + shift[None, :]
        pred.energy_mean = pred.energy_mean + shift
        return pred

    model.predict = broken
    with pytest.raises(AssertionError, match="forces vs -dE/dx"):
        check_model_contract(model, structures)


def test_float32_tolerances_are_looser_but_finite():
    loose, tight = Tolerances.for_dtype("float32"), Tolerances.for_dtype("float64")
    assert tight.force_fd < loose.force_fd < 0.1
