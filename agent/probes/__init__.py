"""Physical-behaviour probes: does the model get the physics of the user's system right?

Each probe computes a property with every ensemble member, their mean and the oracle (the
same procedure for each: single points, lockstep relaxations with ASE's optimisers, or MD
with common random numbers; EOS and elastic constants at each row's own relaxed lattice), and
judges the difference against ML-PEG-style bounds. One module per probe (its docstring says
what it measures and how it is judged), listed in :data:`PROBES` (:mod:`.registry`, which also
says how to add one); its settings and default bounds are the spec's
(``campaigns/spec/probes/<name>.py``).

Public API (what a campaign needs)::

    from chemgap.agent.probes import check_probes, run_probes, write_report

    check_probes(spec.system, spec.probes, oracle=spec.oracle)   # at start: BadInput if not
    report = run_probes(model, spec.oracle, spec.system, spec.probes, seed=spec.seed,
                        temperatures_K=spec.exploration.temperatures_K)
    write_report(report, iteration_dir / "probes")   # probes.json (+ candidates.extxyz)
    report.passed, report.failed()                   # all passed / names failed or raised
    report.candidates(spec.probes.candidates_per_probe)  # Atoms, info['source'] == 'probe'

A probe that raises inside :func:`run_probes` is recorded (``ProbeResult.error``), never
raised; a request that cannot run at all raises :class:`~chemgap.agent.errors.BadInput` before
anything runs.
"""

from chemgap.campaigns.spec import ProbeName, ProbesConfig

from .registry import PROBES
from .results import Judge, Metric, ProbeReport, ProbeResult, score
from .runner import check_probes, probe_model, run_probes, write_report
from .system import ProbeSystem, load_system

__all__ = [
    "PROBES",
    "Judge",
    "Metric",
    "ProbeName",
    "ProbeReport",
    "ProbeResult",
    "ProbeSystem",
    "ProbesConfig",
    "check_probes",
    "load_system",
    "probe_model",
    "run_probes",
    "score",
    "write_report",
]
