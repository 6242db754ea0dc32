"""Physical-behaviour probes: does the model get the physics of the user's system right?

Each probe computes a property with every ensemble member, their mean and the oracle (the
same procedure for each: single points, lockstep relaxations with ASE's optimisers, or MD
with common random numbers; EOS and elastic constants at each row's own relaxed lattice), and
judges the difference against ML-PEG-style bounds:

========== ===================================================================
eos        E(V) around each row's own V0, Birch–Murnaghan V0, E0, B0 (:mod:`.eos`)
elastic    C_ij from finite strains and stresses at each row's lattice (:mod:`.elastic`)
vacancy    vacancy formation energy (relaxed, unrelaxed) vs supercell size, the defect
           cell's energy error, RMSD (:mod:`.vacancy`)
surface    surface energies (relaxed, unrelaxed) of low-index facets, the slabs' energy
           errors (:mod:`.surface`)
dimer      pair curves, MLIP Arena / ML-PEG shape metrics, well (:mod:`.dimer`)
vibrations harmonic frequencies / Γ phonons, imaginary modes (:mod:`.vibrations`)
md_stability NVT to a cap or failure, MLIPAudit score (:mod:`.md_stability`)
nve_drift  NVE energy drift and drift ratio (:mod:`.nve_drift`)
rdf        g(r) of model MD against oracle MD (:mod:`.rdf`)
========== ===================================================================

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

from .results import Judge, Metric, ProbeReport, ProbeResult, score
from .runner import PROBES, check_probes, probe_model, run_probes, write_report
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
