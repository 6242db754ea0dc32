"""MACE ensembles: build, train, predict with uncertainty, calibrate, save/load, transfer.

Public API (imported lazily; torch and mace load on first use):
``Ensemble``, ``train_ensemble``, ``train_member``, ``Prediction``, ``MemberOutputs``,
``evaluate_members``, ``make_batch``, ``Batch``, ``fit_calibration``, ``Calibration``,
``EnsembleModel`` (the model contract),
``transfer_model``, ``parse_element_map``, ``ModelConfig``, ``EnsembleConfig``, ``EnsembleMode``.
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
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
