"""The campaign spec: one YAML document composed of sections owned by the packages that use them.

``oracle`` is :class:`chemgap.oracle.config.OracleConfig`; ``model`` and ``ensemble`` are
:class:`chemgap.models.config.ModelConfig` and :class:`~chemgap.models.config.EnsembleConfig`. The
sections the agent owns (seed structures, exploration, selection, budget, diagnostics) are defined
here, because ``campaigns`` is the schema and ``agent`` depends on it, not the other way round.

Every model forbids unknown keys. :func:`load_spec` collects *every* problem of a spec into one
:class:`SpecError` whose lines read ``path.to.field: message (got VALUE)``.

One module per concept; this package re-exports what the rest of chemgap imports:

=============== ===============================================================================
``base``        the :class:`~.base.Section` base, the element set, :class:`SpecError`
``seeds``       seed structure kinds (:data:`Seed`)
``system``      :class:`SystemConfig`, the test set, :func:`initial_pool_size`,
                :func:`held_out_counts`
``loop``        trust window, exploration, selection, budget and convergence
``diagnostics`` :class:`DiagnosticsConfig`, :class:`SplitName`
``probes/``     one settings module per probe; ``probes/registry.py`` assembles
                :class:`ProbeName`, :data:`PROBE_BOUNDS` and :class:`ProbesConfig`
``remediation`` :class:`RemediationConfig`, :class:`RemedyName`
``campaign``    :class:`CampaignSpec`
``errors``      pydantic errors as problem lines
``checks``      checks across sections and of the raw numbers
``loading``     :func:`parse_spec`, :func:`load_spec`, :func:`dump_spec`, :func:`json_schema`
``overrides``   ``--set``: :func:`apply_overrides`, :func:`parse_sections`
=============== ===============================================================================

A probe's settings class (``EosProbeConfig``, ``MDStabilityProbeConfig``, ...) is importable from
here by its class name, looked up in the probe registry.
"""

from typing import Any

from .base import SPEC_VERSION, SpecError
from .campaign import CampaignSpec
from .checks import MAX_INTEGER
from .diagnostics import DiagnosticsConfig, SplitName
from .errors import path_part as _path_part  # noqa: F401 (tests/test_fuzz_specs.py uses it)
from .loading import dump_spec, json_schema, load_spec, parse_spec
from .loop import (
    BudgetConfig,
    ConvergenceConfig,
    ExplorationConfig,
    SelectionConfig,
    SelectionStrategy,
    TrustConfig,
    TrustMode,
)
from .overrides import apply_overrides, parse_sections
from .probes import (
    PROBE_BOUNDS,
    REGISTERED,
    Bound,
    BoundOverride,
    ProbeName,
    ProbesConfig,
    RelaxSettings,
)
from .remediation import RemediationConfig, RemedyName
from .seeds import (
    BulkSeed,
    ClusterSeed,
    DimerSeed,
    FileSeed,
    MoleculeSeed,
    Seed,
    SurfaceSeed,
    VacancySeed,
)
from .system import (
    SystemConfig,
    TestSetConfig,
    TestSetMethod,
    held_out_counts,
    initial_pool_size,
)

__all__ = [
    "MAX_INTEGER",
    "PROBE_BOUNDS",
    "SPEC_VERSION",
    "Bound",
    "BoundOverride",
    "BudgetConfig",
    "BulkSeed",
    "CampaignSpec",
    "ClusterSeed",
    "ConvergenceConfig",
    "DiagnosticsConfig",
    "DimerSeed",
    "ExplorationConfig",
    "FileSeed",
    "MoleculeSeed",
    "ProbeName",
    "ProbesConfig",
    "RelaxSettings",
    "RemediationConfig",
    "RemedyName",
    "Seed",
    "SelectionConfig",
    "SelectionStrategy",
    "SpecError",
    "SplitName",
    "SurfaceSeed",
    "SystemConfig",
    "TestSetConfig",
    "TestSetMethod",
    "TrustConfig",
    "TrustMode",
    "VacancySeed",
    "apply_overrides",
    "dump_spec",
    "held_out_counts",
    "initial_pool_size",
    "json_schema",
    "load_spec",
    "parse_sections",
    "parse_spec",
]

_SETTINGS = {probe.settings.__name__: probe.settings for probe in REGISTERED}


def __getattr__(name: str) -> Any:
    """A registered probe's settings class by its class name (``EosProbeConfig``)."""
    try:
        return _SETTINGS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_SETTINGS])
