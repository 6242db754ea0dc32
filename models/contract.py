"""The model contract: what the agent needs of an ensemble, whatever kind of model it holds.

The loop, the explorer, calibration, selection and the diagnostics see a model only through
:class:`EnsembleModel` (torch-sim's ``ModelInterface`` plays the same role there). Today's kind is
:class:`chemgap.models.ensemble.Ensemble`: K ``ScaleShiftMACE`` members, or K
:class:`~chemgap.models.longrange.LongRangeMACE` members (learned-charge electrostatics and/or
D3 dispersion, ``model.long_range``), whose predictions also carry per-atom ``charges``. Every
kind satisfies the same protocol and passes the same contract checks,
:func:`chemgap.models.testing.check_model_contract`.

Units everywhere: eV, Å, eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms

if TYPE_CHECKING:
    import torch

    from .calibration import Calibration
    from .data import Batch
    from .predict import MemberOutputs, Prediction

__all__ = ["EnsembleModel"]


@runtime_checkable
class EnsembleModel(Protocol):
    """An ensemble of K interatomic potentials that predicts with uncertainty.

    Attributes:
        n_members: K.
        elements: chemical symbols the model knows, in its one-hot order.
        z_table: the same as atomic numbers.
        r_max: cutoff radius of the local graph, Å.
        dtype: ``"float32"`` or ``"float64"``.
        device: the torch device the members run on.
        calibration: the stored uncertainty calibration, or None (raw spread).
        path: the model directory it was loaded from / saved to, or None.
    """

    n_members: int
    elements: list[str]
    z_table: list[int]
    r_max: float
    dtype: str
    device: torch.device
    calibration: Calibration | None
    path: Path | None

    def predict(
        self,
        structures: Sequence[Atoms],
        *,
        compute_stress: bool = False,
        calibrated: bool = True,
    ) -> Prediction:
        """Mean and spread over members for every structure (see ``Prediction``)."""

    def make_batch(self, structures: Sequence[Atoms], *, labels: bool = False) -> Batch:
        """One batched graph of ``structures`` at this model's cutoff, dtype and device."""

    def evaluate(
        self, batch: Batch, *, compute_stress: bool = False, node_features: bool = False
    ) -> MemberOutputs:
        """All members on one prepared batch: energies (K, n_struct), forces (K, n_atoms, 3)."""

    def descriptors(self, structures: Sequence[Atoms]) -> np.ndarray:
        """(n_struct, d) per-structure descriptors for diversity selection."""

    def calibrate(self, labelled: Sequence[Atoms], **options: Any) -> Calibration:
        """Fit the uncertainty calibration on held-out labelled data and keep it."""

    def save(self, path: str | Path) -> Path:
        """Write the model directory; returns it."""
