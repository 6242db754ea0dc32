"""MACE ensembles: build, train, predict with uncertainty, calibrate, save/load, transfer.

Public API (imported lazily; torch and mace load on first use):
``Ensemble``, ``train_ensemble``, ``train_member``, ``Prediction``, ``MemberOutputs``,
``evaluate_members``, ``make_batch``, ``Batch``, ``fit_calibration``, ``Calibration``,
``EnsembleModel`` (the model contract),
``transfer_model``, ``parse_element_map``, ``ModelConfig``, ``EnsembleConfig``, ``EnsembleMode``,
``LongRange``, ``LongRangeMACE`` (members with long-range terms), ``ChemgapCalculator`` (an ASE
calculator for any chemgap member or committee), ``load_committee``, ``coulomb_energy``,
``d3_energy``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Ensemble": "ensemble",
    "train_ensemble": "ensemble",
    "plan_jobs": "ensemble",
    "MODES": "ensemble",
    "train_member": "train",
    "ProgressEvent": "train",
    "Prediction": "predict",
    "MemberOutputs": "predict",
    "evaluate_members": "predict",
    "make_batch": "data",
    "Batch": "data",
    "fit_calibration": "calibration",
    "EnsembleModel": "contract",
    "Calibration": "calibration",
    "transfer_model": "transfer",
    "parse_element_map": "transfer",
    "ModelConfig": "config",
    "EnsembleConfig": "config",
    "EnsembleMode": "config",
    "Dtype": "config",
    "LongRange": "config",
    "LongRangeMACE": "longrange",
    "ChemgapCalculator": "calculator",
    "load_committee": "calculator",
    "coulomb_energy": "electrostatics",
    "d3_energy": "dispersion",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
