"""An ASE calculator for any chemgap member or committee, long-range terms included.

``mace.calculators.MACECalculator`` loads plain MACE members (chemgap's ``member_KK.model``
files of ``long_range: none`` members still load there, unchanged), but not members with a term
it does not know. :class:`ChemgapCalculator` loads any of them — a model directory
(``ensemble.json``), one or several member files (``member_KK.model`` or ``member_KK.pt``, with
their ``member_KK.json``), or a loaded :class:`~chemgap.models.ensemble.Ensemble` — and gives
the committee mean as ASE's ``energy``, ``forces``, ``stress`` (periodic cells) and ``charges``
(members with learned charges), with the spread in ``results`` (``energy_std``,
``forces_std``, ``charges_std``, ``member_energies``).

Example::

    from ase.md.verlet import VelocityVerlet
    from chemgap.models import ChemgapCalculator

    atoms.calc = ChemgapCalculator("runs/x/iterations/003/models")
    VelocityVerlet(atoms, timestep=1.0 * ase.units.fs).run(100)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .build import DataStats, build_for_loading
from .config import ModelConfig
from .contract import EnsembleModel
from .io import ENSEMBLE_FILE, load_member_stem, read_json

log = logging.getLogger(__name__)

__all__ = ["ChemgapCalculator", "load_committee", "load_member_file"]

ModelSource = str | Path | Sequence[str | Path] | EnsembleModel


def load_member_file(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """One member from ``member_KK.model`` or ``member_KK.pt``.

    With the member's ``member_KK.json`` beside it, the member is rebuilt from its metadata and
    the state dict is loaded with ``torch.load(weights_only=True)`` (the safe path); otherwise
    the whole-model pickle is loaded (``weights_only=False``, with a warning: only load files
    you trust). See :func:`chemgap.models.io.load_member_stem`.

    Raises:
        FileNotFoundError: neither file exists.
        ValueError: ``member_KK.pt`` holds more than weights.
    """
    stem = Path(path).with_suffix("")
    meta_file = stem.with_suffix(".json")
    rebuild = None
    if meta_file.exists():
        meta = read_json(meta_file)
        if "model" in meta and "stats" in meta:

            def rebuild() -> torch.nn.Module:
                return build_for_loading(
                    ModelConfig.from_saved(meta["model"]), DataStats(**meta["stats"])
                )

    return load_member_stem(stem, rebuild, device)


def _config_of(path: Path, model: torch.nn.Module) -> ModelConfig:
    """The member's spec section from its metadata, or the little a bare model file tells."""
    meta_file = path.with_suffix(".json")
    if meta_file.exists():
        meta = read_json(meta_file)
        if "model" in meta:
            return ModelConfig.from_saved(meta["model"])
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return ModelConfig(
        r_max=float(model.r_max),
        dtype=dtype,
        long_range=getattr(model, "long_range", "none"),
    )


def load_committee(source: ModelSource, device: str | torch.device = "cpu") -> EnsembleModel:
    """An :class:`~chemgap.models.ensemble.Ensemble` from a model directory, member file(s) or
    an already loaded model (returned as is).

    Raises:
        FileNotFoundError: a path that is neither a model directory nor a member file.
        ValueError: member files of different architectures, terms or elements.
    """
    from .ensemble import Ensemble

    if isinstance(source, EnsembleModel):
        return source
    paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
    if not paths:
        raise ValueError("calculator: no model given")
    if len(paths) == 1 and paths[0].is_dir():
        if not (paths[0] / ENSEMBLE_FILE).exists():
            raise FileNotFoundError(2, "not a model directory (no ensemble.json)", str(paths[0]))
        return Ensemble.load(paths[0], device=device)
    members = [load_member_file(p, device) for p in paths]
    configs = [_config_of(p.with_suffix(""), m) for p, m in zip(paths, members, strict=True)]
    if any(c != configs[0] for c in configs[1:]):
        raise ValueError("calculator: the member files have different model settings")
    return Ensemble(members, model_cfg=configs[0], device=device)


class ChemgapCalculator(Calculator):
    """ASE calculator over a chemgap committee (one member is a committee of one).

    Results: ``energy`` / ``free_energy`` (eV), ``forces`` (eV/Å), ``stress`` (Voigt, eV/Å³,
    periodic cells only) and ``charges`` (e, members with learned charges) are committee means;
    ``energy_std`` (eV), ``forces_std`` (n, 3) eV/Å, ``charges_std`` (e) and
    ``member_energies`` (K,) eV are in ``results`` too.

    Args:
        model: a model directory, member file(s) or a loaded model (see :func:`load_committee`).
        device: torch device for the members.
        calibrated: report calibrated stds (the model directory's stored calibration).
        **kwargs: ASE ``Calculator`` arguments.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "charges")

    def __init__(
        self,
        model: ModelSource,
        *,
        device: str | torch.device = "cpu",
        calibrated: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model = load_committee(model, device)
        self.calibrated = calibrated

    def calculate(
        self,
        atoms=None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Predict ``atoms`` with every member; stress on fully periodic cells."""
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.pbc))
        pred = self.model.predict([self.atoms], compute_stress=periodic, calibrated=self.calibrated)
        energy = float(pred.energy_mean[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": pred.forces_mean.copy(),
            "energy_std": float(pred.energy_std_cal[0]),
            "forces_std": pred.forces_std_cal.copy(),
            "member_energies": pred.energy_members[:, 0].copy(),
        }
        if periodic:
            self.results["stress"] = pred.stress_mean[0].copy()
        if pred.charges_mean is not None:
            self.results["charges"] = pred.charges_mean.copy()
            self.results["charges_std"] = pred.charges_std.copy()
