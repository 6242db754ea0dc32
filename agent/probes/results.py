"""What a probe returns: metrics with ensemble bands and bounds, candidates, a plot payload.

A :class:`Metric` holds one quantity for the ensemble mean (the *model*: the property computed
with the mean potential), each member and the oracle, and judges it against an ML-PEG-style
:class:`~chemgap.campaigns.spec.Bound` (``good`` scores 1, ``bad`` 0, linear between, clipped;
``normalize_metric`` of ddmms/ml-peg, ``ml_peg/analysis/utils/utils.py``). What is judged
depends on the metric's :class:`Judge`:

- ``error``: |model − oracle| (same unit as the value); counts that must equal the oracle's
  (a pair curve's force flips and energy minima) are errors with bound good 0, bad 1: a count
  one off scores 0 and fails at any pass score;
- ``relative_error``: |model − oracle| / |oracle|;
- ``shift``: model − oracle + ``good``: continuous shape metrics whose anchors assume a physical
  reference curve (a tortuosity of 1, a Spearman of −1) are judged by how much worse than the
  *user's* oracle the model is, placed on the anchor's scale, so an oracle whose own curve is
  odd does not fail the model for matching it (and a model better than it scores 1);
- ``value``: the model's value itself (already a comparison, or an absolute quality such as an
  MD stability score).

The band is the standard deviation (ddof = 0) of the members' values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.campaigns.spec import Bound

__all__ = ["Judge", "Metric", "ProbeReport", "ProbeResult", "score"]


class Judge(StrEnum):
    """What of a metric its bound is applied to."""

    ERROR = "error"
    RELATIVE_ERROR = "relative_error"
    SHIFT = "shift"
    VALUE = "value"


def score(value: float, bound: Bound) -> float:
    """ML-PEG's normalised score of ``value``: 1 at ``bound.good``, 0 at ``bound.bad``, linear
    between and clipped to [0, 1]; NaN or inf scores 0.
    """
    if not math.isfinite(value):
        return 0.0
    s = (value - bound.bad) / (bound.good - bound.bad)
    return float(min(1.0, max(0.0, s)))


def _finite(x: float | None) -> float | None:
    return None if x is None else float(x)


@dataclass(kw_only=True)
class Metric:
    """One judged (or informational) quantity of a probe.

    Attributes:
        name: the key of its bound (``B0``, ``force_flips``); several metrics of one probe may
            share a name (one per facet, pair, size) and differ in ``label``.
        label: what a table shows (``γ(111)``, ``force flips Cu-Cu``).
        unit: of the values (``GPa``, ``eV``, ``""`` for counts).
        model: the value for the ensemble-mean potential.
        members: the value for each member (K).
        oracle: the oracle's value, or None when the probe has none.
        judge: what the bound applies to (:class:`Judge`).
        bound: the bound, or None for an informational metric.
        pass_score: the score a judged metric needs to pass.
    """

    name: str
    label: str
    unit: str
    model: float
    members: list[float]
    oracle: float | None
    judge: Judge = Judge.ERROR
    bound: Bound | None = None
    pass_score: float = 0.5

    @property
    def band(self) -> float:
        """Std over the members' finite values (ddof = 0); NaN when none is finite."""
        finite = [m for m in self.members if math.isfinite(m)]
        return float(np.std(finite)) if finite else float("nan")

    @property
    def error(self) -> float | None:
        """Model − oracle, or None without an oracle value."""
        return None if self.oracle is None else self.model - self.oracle

    @property
    def judged(self) -> float | None:
        """The number the bound is applied to (None for informational metrics)."""
        if self.bound is None:
            return None
        if self.judge == Judge.VALUE or self.oracle is None:
            return self.model
        diff = self.model - self.oracle
        match self.judge:
            case Judge.ERROR:
                return abs(diff)
            case Judge.RELATIVE_ERROR:
                return abs(diff) / abs(self.oracle) if self.oracle else abs(diff)
            case _:
                return diff + self.bound.good

    @property
    def score(self) -> float | None:
        """Normalised score of :attr:`judged` (None for informational metrics)."""
        j = self.judged
        return None if j is None or self.bound is None else score(j, self.bound)

    @property
    def passed(self) -> bool | None:
        """Score ≥ ``pass_score``; None for an informational metric."""
        s = self.score
        return None if s is None else s >= self.pass_score

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: values, band, error, judged quantity, bound, score, pass."""
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "model": _json_float(self.model),
            "band": _json_float(self.band),
            "members": [_json_float(m) for m in self.members],
            "oracle": _json_float(self.oracle),
            "error": _json_float(self.error),
            "judge": str(self.judge),
            "judged": _json_float(self.judged),
            "bound": self.bound.model_dump() if self.bound else None,
            "score": _json_float(self.score),
            "passed": self.passed,
        }


def _json_float(x: float | None) -> float | str | None:
    """A float JSON can hold: NaN and infinities become strings."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


@dataclass(kw_only=True)
class ProbeResult:
    """What one probe found.

    Attributes:
        name: the probe (a :class:`~chemgap.campaigns.spec.ProbeName` value).
        metrics: judged and informational metrics.
        payload: plot-ready curves/values: ``{"kind": "curves", "x_label", "y_label",
            "curves": [{"label", "x", "oracle", "model", "members"}]}`` or ``{"kind": "table",
            ...}``, JSON-ready.
        candidates: structures for probe-triggered labelling, best first, with
            ``info['source'] = 'probe'``, ``info['probe']``, ``info['probe_reason']``
            (``error`` or ``disagreement``) and ``info['probe_score']``.
        seconds: wall time of the probe, s.
        error: ``"Type: message"`` when the probe raised (then no metrics), else None.
        notes: what a reader should know (sizes used, modes dropped, fits that failed).
    """

    name: str
    metrics: list[Metric] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    candidates: list[Atoms] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """All judged metrics pass; None when the probe raised or judged nothing."""
        if self.error is not None:
            return None
        verdicts = [m.passed for m in self.metrics if m.passed is not None]
        return all(verdicts) if verdicts else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the candidates as a count; they are written as extxyz)."""
        return {
            "name": self.name,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "notes": list(self.notes),
            "metrics": [m.to_dict() for m in self.metrics],
            "payload": self.payload,
            "n_candidates": len(self.candidates),
        }


@dataclass(kw_only=True)
class ProbeReport:
    """Every probe of one run, in the order run.

    Attributes:
        results: one :class:`ProbeResult` per probe.
        seconds: wall time of the whole run, s.
        meta: what was probed (model path, members, oracle, system, seed, settings).
    """

    results: list[ProbeResult] = field(default_factory=list)
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every probe ran and passed (a probe that raised or judged nothing does not)."""
        return bool(self.results) and all(r.passed is True for r in self.results)

    def __getitem__(self, name: str) -> ProbeResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def failed(self) -> list[str]:
        """Names of the probes that failed a bound or raised."""
        return [r.name for r in self.results if r.passed is False or r.error is not None]

    def candidates(self, per_probe: int | None = None) -> list[Atoms]:
        """Structures for probe-triggered labelling: up to ``per_probe`` of each probe (all
        when None), probes that failed first; copies without calculators.
        """
        ordered = sorted(self.results, key=lambda r: r.passed is not False)
        out: list[Atoms] = []
        for r in ordered:
            chosen = r.candidates if per_probe is None else r.candidates[:per_probe]
            out += [a.copy() for a in chosen]
        return out

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Table rows ``(probe, metric, model ± band, oracle, verdict)`` as display strings."""
        return report_rows(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (what ``probes.json`` holds)."""
        return {
            "passed": self.passed,
            "failed": self.failed(),
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
            "probes": [r.to_dict() for r in self.results],
        }


def report_rows(payload: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows ``(probe, metric, model ± band, oracle, verdict)`` as display strings, from
    a report as ``probes.json`` holds it (:meth:`ProbeReport.to_dict`).
    """
    out = []
    for r in payload.get("probes", []):
        if r.get("error") is not None:
            out.append((r["name"], "(probe raised)", r["error"][:40], "", "error"))
            continue
        for m in r.get("metrics", []):
            verdict = {True: "pass", False: "FAIL", None: "-"}[m.get("passed")]
            unit = f" {m['unit']}" if m.get("unit") else ""
            band = f" ± {_fmt(m['band'], 3)}" if len(m.get("members", [])) > 1 else ""
            oracle = "" if m.get("oracle") is None else _fmt(m["oracle"])
            out.append((r["name"], m["label"] + unit, _fmt(m["model"]) + band, oracle, verdict))
    return out


def _fmt(x: float | str | None, digits: int = 4) -> str:
    """``digits`` significant digits, compact (NaN and infinities as JSON keeps them)."""
    if x is None or isinstance(x, str) or not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def pick_candidates(
    structures: Sequence[Atoms],
    disagreement: Sequence[float],
    error: Sequence[float] | None,
    *,
    probe: str,
    n: int,
    failed: bool,
) -> list[Atoms]:
    """Up to ``n`` of ``structures`` for labelling: by |error| against the oracle when the probe
    failed (and errors are known), else by members' disagreement; tagged with provenance.

    Args:
        structures: the probe's structures (geometry only is used).
        disagreement: per structure, e.g. the members' energy std per atom, eV/atom.
        error: per structure, |model − oracle| of the same quantity, or None.
        probe: the probe's name (``info['probe']``).
        n: how many to return.
        failed: whether the probe failed a bound.
    """
    by_error = failed and error is not None
    keys = np.asarray(error if by_error else disagreement, dtype=float)
    keys = np.where(np.isfinite(keys), keys, np.inf)
    out = []
    for i in np.argsort(-keys, kind="stable")[:n]:
        a = Atoms(
            structures[i].numbers,
            structures[i].positions,
            cell=structures[i].cell,
            pbc=structures[i].pbc,
        )
        a.info.update(
            source="probe",
            probe=probe,
            probe_reason="error" if by_error else "disagreement",
            probe_score=float(keys[i]),
        )
        out.append(a)
    return out
