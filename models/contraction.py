"""MACE's symmetric contraction as a sparse polynomial: same numbers, a fraction of the work.

MACE's product basis (Batatia et al., NeurIPS 2022, eq. 10) turns the atomic basis
``A`` (n_atoms, channels, L) of each channel into a polynomial of degree ``correlation``::

    B[b, c, w] = Σ_ν Σ_{ℓ1..ℓν} C_ν[z_b][w, ℓ1, …, ℓν, c] · A[b, c, ℓ1] ⋯ A[b, c, ℓν],
    C_ν[z] = U_ν · w_ν[z]   (generalised Clebsch–Gordan tensor (w, ℓ1..ℓν, k) times the
                              learnable weights (k, c) of the atom's element z).

mace's ``Contraction`` evaluates this with dense einsums over all atoms, which materialise a
per-atom weighted ``U`` of (n_atoms, channels, 3·L³) numbers for ``correlation = 3``. Two facts
make it much cheaper: ``U_ν`` is sparse (about 10 % of its (w, ℓ) entries are non-zero) and
symmetric under permutations of ℓ1..ℓν, so it only involves a few hundred distinct monomials
``A_ℓ1 A_ℓ2 A_ℓ3`` (ℓ1 ≤ ℓ2 ≤ ℓ3); and ``node_attrs`` is one-hot in the element, so ``C_ν[z]`` is
one matrix per element, not per atom. :class:`SparseSymmetricContraction` evaluates the
monomials of every atom once, then multiplies each element's atoms by that element's
(monomials × outputs) matrix, one batched product over channels. The polynomial is the same, so
outputs agree with mace's to float rounding (tests: 1e-5 relative in float32, 1e-12 in
float64, forces included); node attributes that are not one-hot fall back to mace's code.

Use :func:`sparse_contractions` around inference: it swaps the class of every
``SymmetricContraction`` in the given models and swaps it back on exit, so model files pickled
later never refer to chemgap.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from mace.modules.symmetric_contraction import Contraction, SymmetricContraction


@dataclass
class _Plan:
    """Monomials of one ``SymmetricContraction`` and the coupling of each output to them.

    Attributes:
        factors: (degree, n_mono) indices into [1, A_1, …, A_L]: monomial m is the product of
            the padded basis at ``factors[:, m]`` (index 0 is the constant 1).
        coupling: per contraction, (W, n_mono, k_total): U summed over the index permutations
            that give the same monomial, for all correlation orders stacked along k.
        widths: per contraction, W = 2 l_out + 1.
    """

    factors: torch.Tensor
    coupling: list[torch.Tensor]
    widths: list[int]


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _orders(con: Contraction) -> list[int]:
    """Correlation orders in the order the weights are stacked: ν = correlation, …, 1."""
    return list(range(con.correlation, 0, -1))


def _weights(con: Contraction) -> list[torch.Tensor]:
    """Per-element weights (E, k_ν, c) in the order of :func:`_orders`."""
    return [con.weights_max, *con.weights]


def _plan(module: SymmetricContraction, ell: int, dtype: torch.dtype, device) -> _Plan:
    # keyed on the U tensors themselves too, so buffers loaded after a plan was made count
    u_state = tuple(
        (u.data_ptr(), u._version)
        for con in module.contractions
        for u in (getattr(con, f"U_matrix_{nu}") for nu in _orders(con))  # no dict per call
    )
    key = (ell, dtype, str(device), u_state)
    cached = _PLANS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    degree = max(con.correlation for con in module.contractions)
    monomials: dict[tuple[int, ...], int] = {}
    entries = []  # (contraction, w, monomial, k offset, U values over k)
    widths = []
    k_totals = []
    for ci, con in enumerate(module.contractions):
        k_offset = 0
        width = None
        for nu in _orders(con):
            u = con.U_tensors(nu).detach().cpu().double().numpy()
            u = u.reshape(-1, *([ell] * nu), u.shape[-1])  # (W, L, …, L, k)
            width = u.shape[0]
            for idx in zip(*np.nonzero(np.any(u != 0, axis=-1)), strict=True):
                w, ls = int(idx[0]), sorted(int(i) + 1 for i in idx[1:])
                mono = (0,) * (degree - nu) + tuple(ls)
                m = monomials.setdefault(mono, len(monomials))
                entries.append((ci, w, m, k_offset, u[idx]))
            k_offset += u.shape[-1]
        widths.append(int(width))
        k_totals.append(k_offset)
    n_mono = len(monomials)
    coupling = [np.zeros((w, n_mono, k)) for w, k in zip(widths, k_totals, strict=True)]
    for ci, w, m, k0, values in entries:
        coupling[ci][w, m, k0 : k0 + len(values)] += values
    factors = np.array(list(monomials), dtype=np.int64).T.reshape(degree, n_mono)
    plan = _Plan(
        factors=torch.as_tensor(factors, device=device),
        coupling=[torch.as_tensor(c, dtype=dtype, device=device) for c in coupling],
        widths=widths,
    )
    _PLANS[module] = (key, plan)
    return plan


class SparseSymmetricContraction(SymmetricContraction):
    """mace ``SymmetricContraction`` evaluated as described in the module docstring."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Args: x (n_atoms, channels, L) atomic basis; y (n_atoms, n_elements) node attributes.

        Returns (n_atoms, Σ_out channels · (2 l_out + 1)), laid out as mace's module does.
        """
        if not bool(torch.all((y == 0) | (y == 1)) and torch.all(y.sum(dim=1) == 1)):
            return super().forward(x, y)
        n, c, ell = x.shape
        plan = _plan(self, ell, x.dtype, x.device)
        # monomials of every atom and channel: (c, n_mono, n), gathered along rows of length n
        basis = torch.cat([x.new_ones((c, 1, n)), x.permute(1, 2, 0)], dim=1)  # (c, 1 + L, n)
        mono = basis.index_select(1, plan.factors[0])
        for f in plan.factors[1:]:
            mono = mono * basis.index_select(1, f)
        # coefficients of the elements present, side by side: (c, E·ΣW, n_mono); every atom is
        # multiplied by all E of them and keeps its own (cheaper than grouping atoms for small
        # E, and E is what the batch holds, not the model's whole element table)
        present = torch.nonzero(y.sum(dim=0)).squeeze(1)
        coef = torch.cat(
            [
                torch.einsum(
                    "wmk,ekc->cewm", u, torch.cat(_weights(con), dim=1).index_select(0, present)
                )
                for u, con in zip(plan.coupling, self.contractions, strict=True)
            ],
            dim=2,
        )
        n_el, width = coef.shape[1], coef.shape[2]
        out = torch.bmm(coef.reshape(c, n_el * width, -1), mono)  # (c, E·ΣW, n)
        out = torch.einsum(
            "cewn,ne->ncw", out.reshape(c, n_el, width, n), y.index_select(1, present)
        )  # (n, c, ΣW)
        blocks = torch.split(out, plan.widths, dim=-1)
        return torch.cat([b.reshape(n, -1) for b in blocks], dim=-1)


_TARGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its contractions
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> open contexts
_LOCK = threading.Lock()


def _contractions(model: torch.nn.Module) -> list[torch.nn.Module]:
    targets = _TARGETS.get(model)
    if targets is None:
        targets = _TARGETS[model] = [  # exactly mace's class: subclasses are left alone
            m
            for m in model.modules()
            if type(m) in (SymmetricContraction, SparseSymmetricContraction)
        ]
    return targets


@contextlib.contextmanager
def sparse_contractions(models: Iterable[torch.nn.Module]) -> Iterator[int]:
    """Evaluate ``models``' symmetric contractions as sparse polynomials inside the block.

    Yields the number of modules in the fast form; mace's class is restored when the last
    open block on a model exits (blocks may nest or run in several threads at once), also on
    error.
    """
    models = list(models)
    count = 0
    with _LOCK:
        for model in models:
            _ACTIVE[model] = _ACTIVE.get(model, 0) + 1
            for module in _contractions(model):
                module.__class__ = SparseSymmetricContraction
                count += 1
    try:
        yield count
    finally:
        with _LOCK:
            for model in models:
                _ACTIVE[model] -= 1
                if _ACTIVE[model] == 0:
                    del _ACTIVE[model]
                    for module in _contractions(model):
                        module.__class__ = SymmetricContraction
