"""The probe registry on the spec side: :data:`REGISTERED` lists each probe's
:class:`~.base.ProbeDefinition`, and :class:`ProbeName`, :data:`PROBE_BOUNDS` and
:class:`ProbesConfig` are assembled from it.

Design. A probe's spec-side knowledge lives in one settings module under
``campaigns/spec/probes/``: its settings section, the default bounds of its metrics and a
``PROBE = ProbeDefinition(name, summary, settings, bounds)`` record. This module is the only
list of those records; everything the schema needs per probe is derived from it, in the order
of :data:`REGISTERED` (the order of the enum, the schema, the ``probes:`` section and its dump):

- :class:`ProbeName`, a ``StrEnum`` with one member per probe (``md_stability`` ->
  ``ProbeName.MD_STABILITY``), the type every ``names``, ``bounds`` and ``remediation.probes``
  key is validated against;
- :data:`PROBE_BOUNDS`, probe -> metric -> default :class:`~.base.Bound`;
- :class:`ProbesConfig`, the ``probes:`` section: the shared fields (``names``, ``every``,
  ``pass_score``, ``candidates_per_probe``, ``bounds``) and one field per probe holding its
  settings, defaulted.

The agent runs a probe through its own registry (``agent/probes/registry.py``: ``ProbeName`` ->
the probe's module); it imports this one, never the other way round (``campaigns`` may not import
``agent``; docs/architecture.md, "Layers"), and refuses to start when a registered name has no
probe module.

To add a probe on the spec side:

1. write ``campaigns/spec/probes/<name>.py``: its settings class (a
   :class:`~chemgap.campaigns.spec.base.Section`), ``BOUNDS`` (metric -> :func:`~.base.bound`)
   and ``PROBE = ProbeDefinition(name="<name>", summary=..., settings=..., bounds=BOUNDS)``;
2. import it here and append ``<name>.PROBE`` to :data:`REGISTERED`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, create_model, field_validator

from ..base import Section, short
from . import dimer, elastic, eos, md_stability, nve_drift, rdf, surface, vacancy, vibrations
from .base import Bound, BoundOverride, ProbeDefinition

__all__ = ["PROBE_BOUNDS", "REGISTERED", "ProbeName", "ProbesConfig"]

REGISTERED: tuple[ProbeDefinition, ...] = (
    eos.PROBE,
    elastic.PROBE,
    vacancy.PROBE,
    surface.PROBE,
    dimer.PROBE,
    vibrations.PROBE,
    md_stability.PROBE,
    nve_drift.PROBE,
    rdf.PROBE,
)
"""Every probe the spec knows, in the order they are listed everywhere."""


def _probe_name(probes: tuple[ProbeDefinition, ...]) -> type[StrEnum]:
    """The ``StrEnum`` of the registered probes' names (duplicates refused)."""
    names = [p.name for p in probes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"probes registered twice: {', '.join(repeated)}")
    enum = StrEnum(  # type: ignore[misc]
        "ProbeName",
        [(name.upper(), name) for name in names],
        module=__name__,
        qualname="ProbeName",
    )
    enum.__doc__ = "Physical-behaviour probes (``agent/probes/``, one module each)."
    return enum


ProbeName = _probe_name(REGISTERED)
"""Physical-behaviour probes (``agent/probes/``, one module each); a ``StrEnum`` whose members
are the registered names in upper case (``ProbeName.EOS``, ``ProbeName.MD_STABILITY``)."""

PROBE_BOUNDS: dict[ProbeName, dict[str, Bound]] = {
    ProbeName(p.name): dict(p.bounds) for p in REGISTERED
}
"""Default bounds per probe and metric, in the units of what is judged (anchors:
:mod:`chemgap.campaigns.spec.probes.base`)."""


class _ProbesSection(Section):
    """The ``probes:`` fields every probe shares (:class:`ProbesConfig` adds one per probe)."""

    names: list[ProbeName] = Field(default_factory=list, description="probes to run")
    every: int = Field(0, ge=0, description="iterations between runs; 0 = only at the end")
    pass_score: float = Field(0.5, gt=0, le=1, description="score a metric needs to pass")
    candidates_per_probe: int = Field(
        2, ge=0, description="structures each probe proposes for labelling"
    )
    bounds: dict[ProbeName, dict[str, BoundOverride]] = Field(default_factory=dict)

    @field_validator("names")
    @classmethod
    def _unique(cls, value: list[ProbeName]) -> list[ProbeName]:
        return list(dict.fromkeys(value))

    @field_validator("bounds")
    @classmethod
    def _known_metrics(
        cls, value: dict[ProbeName, dict[str, BoundOverride]]
    ) -> dict[ProbeName, dict[str, BoundOverride]]:
        for probe, metrics in value.items():
            known = PROBE_BOUNDS[ProbeName(probe)]
            for metric, override in metrics.items():
                if metric not in known:
                    raise ValueError(
                        f"{probe} has no metric {short(metric)}; it has: {', '.join(known)}"
                    )
                merged = known[metric].model_dump() | override.model_dump(exclude_none=True)
                Bound(**merged)  # good == bad is refused here
        return value

    def bounds_for(self, probe: ProbeName | str) -> dict[str, Bound]:
        """The bounds of ``probe``'s metrics: defaults with this section's overrides applied."""
        name = ProbeName(probe)
        out = dict(PROBE_BOUNDS[name])
        for metric, override in self.bounds.get(name, {}).items():
            out[metric] = Bound(
                **(out[metric].model_dump() | override.model_dump(exclude_none=True))
            )
        return out


ProbesConfig = create_model(
    "ProbesConfig",
    __base__=_ProbesSection,
    __module__=__name__,
    __doc__="""Physical-behaviour probes against the oracle (off unless ``names`` lists some).

    ``every`` = 0 runs them once, after the last iteration; n > 0 every n iterations (and after
    the last). ``bounds`` overrides default bounds (:data:`PROBE_BOUNDS`) per probe and metric,
    e.g. ``{dimer: {force_flips: {bad: 3}}}``.
    """,
    **{p.name: (p.settings, Field(default_factory=p.settings)) for p in REGISTERED},
)
"""The ``probes:`` section: the shared fields, then each registered probe's settings under its
name (``probes.eos``, ``probes.md_stability``, ...)."""
