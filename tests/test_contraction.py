"""The sparse symmetric contraction and the other inference speed-ups compute mace's numbers."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from mace.modules.symmetric_contraction import SymmetricContraction

from chemgap.models import predict
from chemgap.models.build import DataStats, build_for_loading, build_model
from chemgap.models.config import ModelConfig
from chemgap.models.contraction import SparseSymmetricContraction, sparse_contractions
from chemgap.models.data import make_batch
from chemgap.models.predict import evaluate_members

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

Z_HCO = [1, 6, 8]


def stats(z_table=Z_HCO, avg_num_neighbors=6.0) -> DataStats:
    return DataStats(
        z_table=list(z_table),
        atomic_energies=[-13.6 * (i + 1) for i in range(len(z_table))],
        avg_num_neighbors=avg_num_neighbors,
        shift=0.1,
        scale=1.7,
    )


def member(correlation: int, max_L: int, dtype: str, seed: int = 0) -> torch.nn.Module:
    cfg = ModelConfig(
        num_channels=8,
        max_L=max_L,
        correlation=correlation,
        num_interactions=2,
        r_max=4.0,
        radial_mlp=[16, 16],
        dtype=dtype,
    )
    return build_model(cfg, stats(), seed=seed).eval()


def one_hot(rng: np.random.Generator, n: int, n_el: int, dtype) -> torch.Tensor:
    y = torch.zeros(n, n_el, dtype=dtype)
    y[torch.arange(n), torch.as_tensor(rng.integers(0, n_el, n))] = 1.0
    return y


@pytest.mark.parametrize(("correlation", "max_L"), [(3, 1), (2, 2), (3, 0)])
def test_contraction_and_its_gradient_equal_mace(correlation, max_L, rng):
    model = member(correlation, max_L, "float64")
    for block in model.products:
        sc = block.symmetric_contractions
        n_channels, ell = sc.contractions[0].num_features, sc.contractions[0].U_tensors(1).shape[-2]
        x = torch.randn(23, n_channels, ell, dtype=torch.float64, requires_grad=True)
        y = one_hot(rng, 23, len(Z_HCO), torch.float64)
        ref = sc(x, y)
        (g_ref,) = torch.autograd.grad((ref * torch.cos(ref)).sum(), x)
        with sparse_contractions([model]) as swapped:
            assert swapped == len(model.products)
            assert type(sc) is SparseSymmetricContraction
            out = sc(x, y)
            (g_out,) = torch.autograd.grad((out * torch.cos(out)).sum(), x)
        assert out.shape == ref.shape
        scale = ref.abs().max().item()
        assert scale > 1e-3
        assert (out - ref).abs().max().item() < 1e-12 * max(scale, 1.0)
        assert (g_out - g_ref).abs().max().item() < 1e-11 * max(g_ref.abs().max().item(), 1.0)


def test_whole_member_energy_and_forces_equal_mace():
    """Molecules and a periodic cell in one batch, float64 and float32."""
    h2o, ch4 = molecule("H2O"), molecule("CH4")
    for m in (h2o, ch4):
        m.center(vacuum=4.0)
    cell = bulk("C", "diamond", a=3.57)
    cell.numbers[0] = 8
    cell.rattle(0.05, seed=1)
    for dtype, tol in (("float64", 1e-10), ("float32", 2e-5)):
        model = member(3, 1, dtype)
        batch = make_batch([h2o, cell, ch4], Z_HCO, 4.0, dtype, "cpu")
        data = dict(batch.data)
        data["positions"] = batch.data["positions"].clone()
        stock = model(data, training=False, compute_force=True)
        fast = evaluate_members([model], batch)
        e_ref, f_ref = stock["energy"].detach(), stock["forces"].detach()
        assert torch.allclose(fast.energy[0], e_ref, rtol=tol, atol=tol)
        assert (fast.forces[0] - f_ref).abs().max().item() < tol * max(1.0, f_ref.abs().max())
        assert f_ref.abs().max().item() > 1e-2


def test_batch_with_some_elements_only(rng):
    """Only the elements present get coefficients; atoms of one or two of three elements."""
    model = member(3, 1, "float64")
    sc = model.products[0].symmetric_contractions
    x = torch.randn(9, 8, 16, dtype=torch.float64)
    for elements in ([2], [0, 2]):
        y = torch.zeros(9, 3, dtype=torch.float64)
        y[torch.arange(9), torch.as_tensor(rng.choice(elements, 9))] = 1.0
        ref = sc(x, y)
        with sparse_contractions([model]):
            out = sc(x, y)
        assert (out - ref).abs().max().item() < 1e-12 * max(1.0, ref.abs().max().item())


def test_not_one_hot_falls_back_to_mace(rng):
    model = member(3, 1, "float64")
    sc = model.products[0].symmetric_contractions
    x = torch.randn(5, 8, 16, dtype=torch.float64)
    y = one_hot(rng, 5, 3, torch.float64) * 0.5 + 0.1  # not one-hot
    ref = sc(x, y)
    with sparse_contractions([model]):
        out = sc(x, y)
    assert torch.equal(out, ref)


def test_class_restored_on_error_and_pickles_carry_no_chemgap():
    model = member(2, 1, "float32")
    with pytest.raises(RuntimeError), sparse_contractions([model]):
        raise RuntimeError("boom")
    assert all(type(m) is not SparseSymmetricContraction for m in model.modules())
    with sparse_contractions([model]):
        pass
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert b"chemgap" not in buffer.getvalue()


def test_nested_blocks_restore_only_when_the_last_exits():
    model = member(2, 1, "float32")
    sc = model.products[0].symmetric_contractions
    with sparse_contractions([model]):
        with sparse_contractions([model]):
            assert type(sc) is SparseSymmetricContraction
        assert type(sc) is SparseSymmetricContraction  # the outer block is still open
    assert type(sc) is SymmetricContraction


def test_build_for_loading_copies_architecture_with_own_constants():
    """The cached template carries each member's average neighbour count; weights come from
    the state dict, so a copied member predicts exactly what a freshly built one does.
    """
    cfg = ModelConfig(num_channels=8, max_L=1, num_interactions=2, r_max=4.0, radial_mlp=[8])
    trained = build_model(cfg, stats(avg_num_neighbors=3.0), seed=4)
    first = build_for_loading(cfg, stats(avg_num_neighbors=7.5))
    copy_ = build_for_loading(cfg, stats(avg_num_neighbors=3.0))
    assert copy_ is not first
    copy_.load_state_dict(trained.state_dict())
    water = molecule("H2O")
    water.center(vacuum=3.0)
    batch = make_batch([water], Z_HCO, 4.0, "float32", "cpu")
    a = evaluate_members([trained], batch)
    b = evaluate_members([copy_], batch)
    assert torch.equal(a.energy, b.energy)
    assert torch.equal(a.forces, b.forces)


def test_members_on_threads_equal_members_one_after_another():
    models = [member(2, 1, "float64", seed=s) for s in range(3)]
    ethanol = molecule("CH3CH2OH")
    ethanol.center(vacuum=3.0)
    batch = make_batch([ethanol, ethanol.copy()], Z_HCO, 4.0, "float64", "cpu")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = evaluate_members(models, batch)
        torch.set_num_threads(2)
        threaded = evaluate_members(models, batch)
    finally:
        torch.set_num_threads(old)
    assert (os.getpid(), 2) in predict._POOLS  # the threaded path ran
    seen = {}
    try:
        torch.set_num_threads(2)
        pool_counts = list(predict.member_pool(2).map(lambda _: torch.get_num_threads(), range(4)))
        later = threading.Thread(target=lambda: seen.setdefault("n", torch.get_num_threads()))
        later.start()
        later.join()
    finally:
        torch.set_num_threads(old)
    assert pool_counts == [1, 1, 1, 1]  # one torch thread per pool thread
    assert seen["n"] == 2  # threads made later start with the caller's count
    assert torch.allclose(serial.energy, threaded.energy, rtol=0, atol=1e-12)
    assert torch.allclose(serial.forces, threaded.forces, rtol=0, atol=1e-12)
    assert not torch.allclose(serial.forces[0], serial.forces[1])  # members differ


def test_training_loss_gradients_equal_mace():
    """Training differentiates the force loss w.r.t. the weights (double backward through the
    contraction): the parameter gradients match mace's own evaluation.
    """
    water = molecule("H2O")
    water.center(vacuum=3.0)
    water.rattle(0.05, seed=2)
    batch = make_batch([water, molecule("CH4")], Z_HCO, 4.0, "float64", "cpu")

    def grads(model, sparse: bool) -> list[torch.Tensor]:
        data = dict(batch.data)
        data["positions"] = batch.data["positions"].clone()
        if sparse:
            with sparse_contractions([model]):
                out = model(data, training=True, compute_force=True)
        else:
            out = model(data, training=True, compute_force=True)
        loss = (out["forces"] ** 2).sum() + out["energy"].sum() ** 2
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, params, allow_unused=True)

    model = member(3, 1, "float64", seed=3).train()
    ref, fast = grads(model, False), grads(model, True)
    checked = 0
    for a, b in zip(ref, fast, strict=True):
        if a is None:
            assert b is None or not b.abs().max() > 0
            continue
        assert (a - b).abs().max().item() <= 1e-10 * max(1.0, a.abs().max().item())
        checked += 1
    assert checked > 10
