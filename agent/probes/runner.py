""":func:`run_probes`: check the request, run each probe, never raise.

Probes are a ``StrEnum`` (:class:`~chemgap.campaigns.spec.ProbeName`) plus the registry
:data:`~.registry.PROBES` of modules (docs/architecture.md; how to add one: :mod:`.registry`),
each with ``applies(ctx)`` (why it cannot run on the system, or None) and
``run(ctx) -> ProbeResult``; this module names no probe. :func:`run_probes` refuses a bad
request before anything runs (:class:`~chemgap.agent.errors.BadInput`: an unknown probe, an
element the model or the oracle cannot do, a probe that does not apply); once running, a probe
that raises is recorded in its result (``error``) and the others still run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from chemgap.agent.errors import BadInput
from chemgap.agent.layout import ProbesLayout
from chemgap.campaigns.spec import (
    CampaignSpec,
    ProbeName,
    ProbesConfig,
    SpecError,
    SystemConfig,
    parse_sections,
)
from chemgap.common.files import atomic_write
from chemgap.models.contract import EnsembleModel
from chemgap.models.io import ENSEMBLE_FILE
from chemgap.oracle.config import (
    OracleConfig,
    OracleName,
    UntrustedCode,
    check_elements,
    require_trust,
)

from .context import ProbeContext
from .potentials import Potentials
from .registry import PROBES
from .results import ProbeReport, ProbeResult
from .system import ProbeSystem

log = logging.getLogger(__name__)

__all__ = [
    "OracleSpec",
    "SystemSpec",
    "check_probes",
    "probe_model",
    "run_probes",
    "write_report",
]

CHEAP_ORACLES = frozenset({OracleName.EMT, OracleName.SW, OracleName.TERSOFF})

OracleSpec = OracleConfig | BaseCalculator | Callable[[], BaseCalculator]
"""An oracle config (built with :func:`chemgap.oracle.make_calculator`), a calculator, or a
zero-argument factory of one."""

SystemSpec = ProbeSystem | SystemConfig | Atoms | Sequence[Atoms]
"""What to probe: a :class:`ProbeSystem`, a spec's ``system`` section, or structures."""


def _names(names: Sequence[str]) -> list[ProbeName]:
    out = []
    for name in names:
        try:
            out.append(ProbeName(name))
        except ValueError:
            allowed = ", ".join(p.value for p in ProbeName)
            raise BadInput(f"probe: {name!r} is not a probe; choose from {allowed}") from None
    return list(dict.fromkeys(out))


def _system(system: SystemSpec) -> ProbeSystem:
    if isinstance(system, ProbeSystem):
        return system
    if isinstance(system, SystemConfig):
        return ProbeSystem.from_config(system)
    if isinstance(system, Atoms):
        return ProbeSystem.from_structures([system])
    return ProbeSystem.from_structures(list(system))


def _oracle(oracle: OracleSpec) -> tuple[BaseCalculator, OracleConfig | None]:
    if isinstance(oracle, OracleConfig):
        from chemgap.oracle.backends import make_calculator

        return make_calculator(oracle), oracle
    if isinstance(oracle, BaseCalculator):
        return oracle, None
    return oracle(), None


def check_probes(
    system: SystemSpec,
    cfg: ProbesConfig,
    *,
    oracle: OracleConfig | None = None,
    names: Sequence[str] | None = None,
    model_elements: Sequence[str] | None = None,
) -> list[ProbeName]:
    """Refuse, in one sentence, a request that cannot run: an unknown probe, an element the
    oracle (or the model, when its elements are given) cannot do, a probe that does not apply
    to the system. Needs no model: a campaign can call it before its first training.

    Args:
        system: what would be probed.
        cfg: the probes section.
        oracle: the oracle's config (its element table is checked; None: not checked).
        names: the probes (default ``cfg.names``).
        model_elements: the model's elements (None: not checked).

    Returns:
        The probes, as :class:`~chemgap.campaigns.spec.ProbeName`, duplicates dropped.

    Raises:
        BadInput: naming the probe, element or field and what is allowed.
    """
    wanted = _names(cfg.names if names is None else names)
    probe_system = _system(system)
    if model_elements is not None:
        missing = sorted(set(probe_system.elements) - set(model_elements))
        if missing:
            raise BadInput(
                f"--system: element(s) {', '.join(missing)} are not in the model's elements "
                f"({', '.join(model_elements)})"
            )
    if oracle is not None:
        try:
            check_elements(oracle, probe_system.elements)
        except ValueError as exc:
            raise BadInput(f"--oracle: {exc}") from None
    ctx = ProbeContext(pot=None, system=probe_system, cfg=cfg, oracle_cheap=_cheap(oracle))
    for name in wanted:
        why = PROBES[name].applies(ctx)
        if why is not None:
            raise BadInput(f"probe {name.value!r} does not apply to {probe_system.name}: it {why}")
    return wanted


def _cheap(oracle: OracleConfig | None) -> bool:
    """Whether MD with the oracle is affordable (a bare calculator: the caller's call)."""
    return oracle is None or OracleName(oracle.name) in CHEAP_ORACLES


def run_probes(
    model: EnsembleModel,
    oracle: OracleSpec,
    system: SystemSpec,
    cfg: ProbesConfig,
    *,
    seed: int = 0,
    names: Sequence[str] | None = None,
    temperatures_K: Sequence[float] | None = None,
) -> ProbeReport:
    """Run the probes ``names`` (default ``cfg.names``) on ``model`` against ``oracle``.

    Args:
        model: any :class:`~chemgap.models.contract.EnsembleModel` (an ``Ensemble``, or the
            oracle itself behind :class:`~chemgap.models.reference.ReferenceModel`).
        oracle: an :class:`~chemgap.oracle.config.OracleConfig`, a calculator or a factory.
        system: what to probe (see :data:`SystemSpec`).
        cfg: the ``probes`` section: settings, bounds, pass score, candidates per probe.
        seed: seeds MD velocities and noise.
        names: probes to run, in this order (default ``cfg.names``).
        temperatures_K: the campaign's temperatures, K (MD stability's default; 300 K if None).

    Returns:
        A :class:`ProbeReport`; a probe that raised has ``error`` set and no metrics.

    Raises:
        BadInput: an unknown probe, an element the model or oracle cannot do, a probe that does
            not apply to the system (nothing has run then).
    """
    t0 = time.perf_counter()
    probe_system = _system(system)
    calc, oracle_config = _oracle(oracle)
    wanted = check_probes(
        probe_system, cfg, oracle=oracle_config, names=names, model_elements=model.elements
    )
    ctx = ProbeContext(
        pot=Potentials(model, calc),
        system=probe_system,
        cfg=cfg,
        seed=seed,
        temperatures_K=list(temperatures_K or [300.0]),
        oracle_cheap=_cheap(oracle_config),
    )
    report = ProbeReport(
        meta={
            "model": str(model.path) if model.path is not None else type(model).__name__,
            "members": model.n_members,
            "oracle": oracle_config.name if oracle_config else type(calc).__name__,
            "system": probe_system.name,
            "elements": probe_system.elements,
            "seed": seed,
            "probes": [n.value for n in wanted],
            "settings": cfg.model_dump(mode="json"),
        }
    )
    for name in wanted:
        report.results.append(_run_one(name, ctx))
    report.seconds = time.perf_counter() - t0
    report.meta["oracle_calls"] = ctx.pot.oracle_calls
    return report


def _run_one(name: ProbeName, ctx: ProbeContext) -> ProbeResult:
    """One probe, timed; an exception becomes the result's ``error``."""
    t0 = time.perf_counter()
    try:
        result = PROBES[name].run(ctx)
    except Exception as exc:
        log.warning("probe %s failed: %s: %s", name, type(exc).__name__, exc)
        log.debug("probe %s traceback", name, exc_info=True)
        result = ProbeResult(name=name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - t0
    log.info(
        "probe %s: %s in %.1f s",
        name,
        {True: "passed", False: "failed", None: "no verdict"}[result.passed],
        result.seconds,
    )
    return result


def write_report(
    report: ProbeReport, out_dir: str | Path, *, per_probe: int | None = None
) -> dict[str, Path]:
    """Write ``probes.json`` and, when there are any, ``candidates.extxyz`` into ``out_dir``
    (up to ``per_probe`` candidates of each probe, failed probes first; all when None).

    Returns:
        What was written: ``{"probes": path, "candidates": path}``.
    """
    import ase.io

    layout = ProbesLayout(Path(out_dir))
    layout.path.mkdir(parents=True, exist_ok=True)
    written = {"probes": layout.report}
    text = json.dumps(report.to_dict(), indent=1, ensure_ascii=False)
    atomic_write(written["probes"], lambda fh: fh.write(text))
    candidates = report.candidates(per_probe)
    stale = layout.candidates
    if not candidates and stale.exists():  # a rerun into the same folder proposes none
        stale.unlink()
    if candidates:
        written["candidates"] = layout.candidates
        atomic_write(
            written["candidates"], lambda fh: ase.io.write(fh, candidates, format="extxyz")
        )
    return written


def probe_model(
    model_dir: str | Path,
    system_source: str | Path,
    out_dir: str | Path,
    *,
    oracle: str | None = None,
    names: Sequence[str] = (),
    overrides: Mapping[str, str] | None = None,
    seed: int | None = None,
    temperatures_K: Sequence[float] | None = None,
    trust_code: bool = False,
) -> tuple[ProbeReport, dict[str, Path]]:
    """What ``chemgap probe`` does: load a model directory, build the system and the oracle, run
    the probes and write ``probes.json`` (and ``candidates.extxyz``) into ``out_dir``.

    Args:
        model_dir: a model directory (``ensemble.json``).
        system_source: a structure file, a campaign spec or a built-in campaign name.
        out_dir: where the report goes.
        oracle: an oracle name (default: the spec's oracle).
        names: probes to run (default: the spec's ``probes.names``).
        overrides: ``probes`` settings as ``probes.FIELD`` -> value text (``--set``), applied
            over the spec's section (else the defaults) and typed by the schema.
        seed: MD seed (default: the spec's seed, else 0).
        temperatures_K: MD stability's temperatures (default: the spec's exploration ladder).
        trust_code: allow an ``ase`` oracle to import the calculator it names.

    Raises:
        BadInput: no model directory, no oracle, an untrusted ``ase`` oracle, no probe named,
            a bad override, or anything :func:`run_probes` refuses.
    """
    from chemgap.models.ensemble import Ensemble

    from .system import load_system

    model_dir = Path(model_dir)
    if not (model_dir / ENSEMBLE_FILE).is_file():
        raise BadInput(f"MODEL_DIR: {model_dir} holds no {ENSEMBLE_FILE} (train one first)")
    system, spec = load_system(system_source)
    if oracle is None and spec is None:
        raise BadInput("--oracle: name the oracle (e.g. emt) when --system is a structure file")
    oracle_config = OracleConfig(name=oracle) if oracle is not None else spec.oracle
    try:
        require_trust(oracle_config, trust_code)
    except UntrustedCode as exc:
        raise BadInput(str(exc)) from None
    cfg = _probes_section(spec, overrides or {})
    wanted = list(names) or list(cfg.names)
    if not wanted:
        allowed = ", ".join(p.value for p in ProbeName)
        raise BadInput(f"--probe: name at least one probe ({allowed})")
    if temperatures_K is None and spec is not None:
        temperatures_K = spec.exploration.temperatures_K
    if seed is None:
        seed = spec.seed if spec is not None else 0
    try:
        model = Ensemble.load(model_dir)
    except Exception as exc:
        raise BadInput(f"MODEL_DIR: cannot load {model_dir}: {exc}") from None
    report = run_probes(
        model,
        oracle_config,
        system,
        cfg,
        seed=seed,
        names=wanted,
        temperatures_K=temperatures_K,
    )
    return report, write_report(report, out_dir)


def _probes_section(spec: CampaignSpec | None, overrides: Mapping[str, str]) -> ProbesConfig:
    """The spec's probes section (or the defaults) with ``probes.FIELD`` overrides applied."""
    base = {"probes": spec.probes} if spec is not None else None
    try:
        return parse_sections({"probes": ProbesConfig}, overrides, base=base)["probes"]
    except SpecError as exc:
        raise BadInput(str(exc)) from None
