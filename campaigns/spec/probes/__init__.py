"""The ``probes:`` section: one settings module per probe, assembled by :mod:`.registry`.

Each probe's module (``probes/<name>.py``) holds its settings class and the default bounds of
its metrics; :mod:`.registry` lists them (:data:`REGISTERED`) and builds :class:`ProbeName`,
:data:`PROBE_BOUNDS` and :class:`ProbesConfig` from them; :mod:`.base` holds what the modules
share. A probe's settings class is ``REGISTERED[i].settings`` (or
``ProbesConfig.model_fields[name].annotation``).
"""

from .base import Bound, BoundOverride, MDProbeBase, ProbeDefinition, RelaxSettings, bound
from .registry import PROBE_BOUNDS, REGISTERED, ProbeName, ProbesConfig

__all__ = [
    "PROBE_BOUNDS",
    "REGISTERED",
    "Bound",
    "BoundOverride",
    "MDProbeBase",
    "ProbeDefinition",
    "ProbeName",
    "ProbesConfig",
    "RelaxSettings",
    "bound",
]
