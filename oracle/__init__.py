"""Reference calculators (oracles) behind one interface, and labelling as Ray tasks.

Public API::

    from chemgap.oracle import OracleConfig, label_one, label_batch, check_elements
"""

from chemgap.oracle.backends import check_backend, cost_model, make_calculator
from chemgap.oracle.config import (
    OracleConfig,
    OracleName,
    UntrustedCode,
    check_elements,
    require_trust,
    supported_elements,
)
from chemgap.oracle.isolated import isolated_atom, isolated_atom_config
from chemgap.oracle.labelling import label_batch, label_one
from chemgap.oracle.results import FailureCategory, LabelResult, LabelSummary

__all__ = [
    "FailureCategory",
    "LabelResult",
    "LabelSummary",
    "OracleConfig",
    "OracleName",
    "UntrustedCode",
    "check_backend",
    "check_elements",
    "cost_model",
    "isolated_atom",
    "isolated_atom_config",
    "label_batch",
    "label_one",
    "make_calculator",
    "require_trust",
    "supported_elements",
]
