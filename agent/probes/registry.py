"""The probe registry on the agent side: :data:`PROBES` maps each
:class:`~chemgap.campaigns.spec.ProbeName` to the module that runs the probe.

Design. A probe is named, configured and bounded on the spec side
(``campaigns/spec/probes/<name>.py``, listed in ``campaigns/spec/probes/registry.py``, which
builds ``ProbeName``, ``PROBE_BOUNDS`` and the ``probes:`` section from its list). What the
agent needs of a probe is its module under ``agent/probes/``, which follows :class:`Probe`:

- ``NAME``: its :class:`~chemgap.campaigns.spec.ProbeName` member;
- ``applies(ctx) -> str | None``: why it cannot run on the system, or None;
- ``run(ctx) -> ProbeResult``: its property for every member, the mean potential and the oracle.

:data:`_MODULES` is the one list of those modules; :data:`PROBES` is built from it, keyed by each
module's ``NAME``, and is the only table :mod:`.runner` consults (``PROBES[name].applies``,
``PROBES[name].run``, looked up at call time). The two registries stay separate because of the
layers (docs/architecture.md: ``campaigns`` never imports ``agent``), and are tied here: this
module refuses to import when a registered ``ProbeName`` has no module, two modules share a
name, or a module lacks ``NAME``, ``applies`` or ``run``, so a probe registered on one side
only fails at once, not in the middle of a campaign.

To add a probe:

1. the spec side: its settings module ``campaigns/spec/probes/<name>.py`` (settings class,
   ``BOUNDS``, ``PROBE = ProbeDefinition(...)``), appended to ``REGISTERED`` in
   ``campaigns/spec/probes/registry.py`` (which gives ``ProbeName.<NAME>``);
2. the agent side: its module ``agent/probes/<name>.py`` with ``NAME = ProbeName.<NAME>``,
   ``applies`` and ``run``, imported here and appended to :data:`_MODULES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from chemgap.campaigns.spec import ProbeName

from . import dimer, elastic, eos, md_stability, nve_drift, rdf, surface, vacancy, vibrations

if TYPE_CHECKING:
    from .context import ProbeContext
    from .results import ProbeResult

__all__ = ["PROBES", "Probe"]


class Probe(Protocol):
    """What a probe module provides (the module itself is the registry's entry)."""

    NAME: ProbeName

    def applies(self, ctx: ProbeContext) -> str | None:
        """Why the probe cannot run on ``ctx.system`` (a phrase after "it"), or None."""

    def run(self, ctx: ProbeContext) -> ProbeResult:
        """The probe's result for every member, the mean potential and the oracle."""


_MODULES: tuple[ModuleType, ...] = (
    eos,
    elastic,
    vacancy,
    surface,
    dimer,
    vibrations,
    md_stability,
    nve_drift,
    rdf,
)
"""Every probe module; one entry per probe."""


def _registry(modules: Iterable[ModuleType]) -> dict[ProbeName, Probe]:
    """``ProbeName`` -> module, checked against the spec's registry.

    Raises:
        RuntimeError: a module without ``NAME``, ``applies`` or ``run``, two modules of one
            name, or a registered ``ProbeName`` without a module.
    """
    out: dict[ProbeName, Probe] = {}
    for module in modules:
        lacking = [a for a in ("NAME", "applies", "run") if not hasattr(module, a)]
        if lacking:
            raise RuntimeError(f"probe module {module.__name__} has no {', '.join(lacking)}")
        name = ProbeName(module.NAME)
        if name in out:
            raise RuntimeError(f"probe {name.value!r} has two modules: {module.__name__} too")
        out[name] = module  # type: ignore[assignment]
    missing = [n.value for n in ProbeName if n not in out]
    if missing:
        raise RuntimeError(f"probe(s) {', '.join(missing)} have no module in agent/probes/")
    return {name: out[name] for name in ProbeName}


PROBES: dict[ProbeName, Probe] = _registry(_MODULES)
"""Probe name -> its module (``NAME``, ``applies``, ``run``), in ``ProbeName``'s order."""
