"""What each section of the report shows, as rows, sentences and figure keys (no HTML here).

:func:`build_sections` turns what :func:`chemgap.agent.report.gather.gather` read into the
sections, in the report's order; a section whose data the run has not produced has
``available`` False and a ``reason`` (the page says "not run: <reason>"). Figures are collected
in one dict keyed by their ``<div>``'s name, structures for the viewer in one list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chemgap.agent.diagnostics.region import shown_rule
from chemgap.agent.remedies.results import (
    ALPHA,
    comparison_caption,
    cost_rows,
    split_caption,
    unscorable_rows,
)
from chemgap.agent.report import figures
from chemgap.agent.report.gather import finite
from chemgap.agent.report.structures import region_views, top_error_views

__all__ = ["SECTIONS", "Report", "Section", "best_remedy", "build_sections"]


@dataclass(kw_only=True)
class Section:
    """One section of the report.

    Attributes:
        id: the HTML id (``learning-curves``).
        title: its heading.
        available: False when the run has not produced its data.
        reason: why not (shown after "not run: "), when not available.
        content: what the section's template block reads (rows, sentences, figure keys).
    """

    id: str
    title: str
    available: bool = True
    reason: str = ""
    content: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def not_run(cls, id: str, title: str, reason: str) -> Section:
        """A section whose data the run has not produced (shown as "not run: reason")."""
        return cls(id=id, title=title, available=False, reason=reason)


@dataclass(kw_only=True)
class Report:
    """The report's sections in order, its figures and its viewer structures."""

    title: str
    sections: list[Section]
    figures: dict[str, dict[str, Any]]
    views: list[dict[str, Any]]
    generated: str


def _mev(x: Any, digits: int = 0) -> str:
    """eV(/Å) as meV text, ``–`` when missing."""
    v = finite(x)
    return "–" if v is None else f"{1000 * v:.{digits}f}"


def _num(x: Any, fmt: str = ".2f") -> str:
    v = finite(x)
    return "–" if v is None else format(v, fmt)


def _pct(x: Any) -> str:
    v = finite(x)
    return "–" if v is None else f"{100 * v:.0f} %"


def _when(t: float | None) -> str:
    return "–" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class _Builder:
    """Builds the sections from the gathered data, collecting figures and views as it goes."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.figures: dict[str, dict[str, Any]] = {}
        self.views: list[dict[str, Any]] = []

    def figure(self, key: str, fig: dict[str, Any] | None) -> str | None:
        """Register ``fig`` under ``key``; returns the key, or None without a figure."""
        if fig is None:
            return None
        self.figures[key] = fig
        return key


# ---------------------------------------------------------------------- summary
def _quality_text(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "not scored yet"
    verdict = "its regions are findings" if quality.get("ready") else "its regions are tentative"
    return (
        f"in-distribution force MAE {_mev(quality.get('force_mae'))} meV/Å on the "
        f"{quality.get('basis', 'test set')} = {_pct(quality.get('ratio'))} of the force RMS "
        f"(target ≤ {_pct(quality.get('target'))}): {verdict}"
    )


def _probes_text(probes: dict[str, Any] | None) -> str:
    if not probes:
        return "not run"
    where = f" (iteration {probes['iteration']})" if probes.get("iteration") is not None else ""
    if probes.get("error"):
        return f"could not run{where}: {probes['error']}"
    if probes.get("failed"):
        return f"{len(probes['failed'])} of {probes['run']} failed{where}: " + ", ".join(
            probes["failed"]
        )
    return f"all {probes['run']} passed{where}"


def best_remedy(remedies: dict[str, Any] | None) -> str:
    """One line: the arm that beats its control most on the OOD test force MAE (its
    Holm-adjusted p below ``ALPHA``, :func:`chemgap.agent.remedies.results.counts`); for an
    arm compared at equal calls whose calls hold more atoms (cell_size), also its change at
    equal oracle atoms.
    """
    if not remedies:
        return "not run"
    if "refused" in remedies:
        return f"refused: {remedies['refused']}"
    best: tuple[float, str] | None = None
    for arm in remedies["results"]["arms"]:
        vs = (arm.get("vs_control") or {}).get("force_mae_ood") or {}
        rel, p = finite(vs.get("rel")), finite(vs.get("p_adj"))
        if rel is None or p is None or rel >= 0 or p >= ALPHA:
            continue
        name = arm["arm"] + (f" n={arm['size']}" if arm.get("size") else "")
        text = (
            f"{name}: OOD force MAE {100 * rel:+.0f} % against {arm['control']} "
            f"(Holm-adjusted p = {p:.2g})"
        )
        cost = (arm.get("vs_equal_atoms") or {}).get("force_mae_ood") or {}
        if arm.get("cost_control"):  # at equal calls only: say how it does at equal cost
            rel_cost, p_cost = finite(cost.get("rel")), finite(cost.get("p_adj"))
            text += f"; at equal oracle atoms against {arm['cost_control']}: " + (
                f"{100 * rel_cost:+.0f} % (Holm-adjusted p = {p_cost:.2g})"
                if rel_cost is not None and p_cost is not None
                else "not compared"
            )
        if best is None or rel < best[0]:
            best = (rel, text)
    return (
        best[1]
        if best
        else "none beats its control significantly (Holm-adjusted p < 0.05)"
        + _lowest(remedies["results"]["arms"])
    )


def _lowest(arms: list[dict[str, Any]]) -> str:
    """``; lowest OOD force MAE: <arm> <meV/Å>`` over the arms that are not controls."""
    scored = [
        (m, a["arm"] + (f" n={a['size']}" if a.get("size") else ""))
        for a in arms
        if a.get("control") is not None
        and (m := finite((a["metrics"].get("force_mae_ood") or {}).get("mean"))) is not None
    ]
    if not scored:
        return ""
    mae, name = min(scored)
    return f"; lowest OOD force MAE: {name} ({_mev(mae)} meV/Å)"


def _regions_text(payload: dict[str, Any] | None, regions: list[dict[str, Any]]) -> str:
    """Regions found in the last diagnosis: count, silent ones, the first (most severe) one."""
    if payload is None:
        return "not run"
    if not regions:
        return "none in the last diagnosis"
    silent = sum(1 for r in regions if r.get("silent"))
    text = f"{len(regions)} ({silent} silent); first: {regions[0].get('rule')} "
    text += f"({_num(regions[0].get('ratio'))}× the baseline error)"
    return text + (" · tentative" if payload.get("tentative") else "")


def _calls_text(run: dict[str, Any], last: dict[str, Any]) -> str:
    if not last:
        return f"{run['labels']['ok']} labels so far, no iteration finished"
    return (
        f"{last.get('oracle_calls', '–')} for training labels + "
        f"{last.get('oracle_calls_test') or 0} for the test set"
        + (f" + {e0} isolated atoms (E0)" if (e0 := last.get("oracle_calls_e0")) else "")
    )


def _mae_text(last: dict[str, Any]) -> str:
    if last.get("test_force_mae_id") is None and last.get("test_force_mae_ood") is None:
        return "not scored yet"
    return (
        f"ID {_mev(last.get('test_force_mae_id'))} · OOD "
        f"{_mev(last.get('test_force_mae_ood'))} meV/Å (iteration {last['iteration']})"
    )


def _summary(b: _Builder) -> Section:
    d = b.data
    s, run = d["summary"], d["run"]
    curve = s["learning_curve"]
    last = curve[-1] if curve else {}
    rows = [
        ("state", run["state"] + (f": {run['stop_reason']}" if run["stop_reason"] else "")),
        (
            "iterations",
            f"{len(curve)} finished (now: iteration {run['iteration']}, last step {run['step']})",
        ),
        ("oracle calls", _calls_text(run, last)),
        ("test force MAE", _mae_text(last)),
        ("failure regions", _regions_text(d["regions"], s["regions"])),
        ("resolved regions", str(len(s["resolved"]))),
        ("failing probes", _probes_text(s.get("probes"))),
        ("best remedy", best_remedy(d["remedies"])),
        ("model quality (ID)", _quality_text(s.get("quality"))),
    ]
    return Section(id="summary", title="Summary", content={"rows": rows})


# ---------------------------------------------------------------------- learning curves
def _learning(b: _Builder) -> Section:
    history = b.data["history"]
    key = b.figure("learning", figures.learning_curve(history))
    if key is None:
        return Section.not_run(
            "learning-curves", "Learning curves", "no iteration has finished yet"
        )
    rows = [
        (
            str(h["iteration"]),
            str(h.get("oracle_calls", "–")),
            _mev(h.get("force_mae")),
            _mev(h.get("test_force_mae_id")),
            _mev(h.get("test_force_mae_ood")),
            _mev(h.get("test_energy_mae_ood"), 1),
            "–" if h.get("regions") is None else str(h["regions"]),
        )
        for h in history
    ]
    header = (
        "iteration",
        "oracle calls",
        "holdout F MAE",
        "test ID F MAE",
        "test OOD F MAE",
        "test OOD E MAE",
        "regions",
    )
    return Section(
        id="learning-curves",
        title="Learning curves",
        content={"figure": key, "header": header, "rows": rows},
    )


# ---------------------------------------------------------------------- parity, calibration
def _parity(b: _Builder) -> Section:
    key = b.figure("parity", figures.parity(b.data["test"]))
    if key is None:
        return Section.not_run("parity", "Parity", "no ensemble has been scored on a test set yet")
    return Section(id="parity", title="Parity", content={"figure": key})


CHECK_PARTS = (
    ("fitted_on", "fitted on (describes the fit only)"),
    ("held_out", "holdout"),
    ("test_id", "test ID"),
    ("test_ood", "test OOD"),
)


def _check_rows(checks: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for key, name in CHECK_PARTS:
        q = checks.get(key)
        if not q:
            continue
        rows.append(
            (
                name,
                str(q.get("n_atoms", "–")),
                _num(q.get("spearman_atom")),
                _num(q.get("miscalibration_area_forces")),
                _num(q.get("mean_z2_forces"), ".3g"),
                _pct(q.get("coverage_68_forces")),
                _pct(q.get("coverage_95_forces")),
            )
        )
    return rows


def confidence_text(checks: dict[str, Any]) -> str | None:
    """What the measured mean z² of the forces says on data the calibration was not fitted on
    (holdout, test ID, test OOD): over-confident above 1 (the spread understates the error),
    under-confident below (it overstates it), within 20 % of 1 about right. None without such
    data.
    """
    parts = []
    for key, name in CHECK_PARTS[1:]:
        z2 = finite((checks.get(key) or {}).get("mean_z2_forces"))
        if z2 is None:
            continue
        if z2 > 1.2:
            verdict = "over-confident: the spread understates the error"
        elif z2 < 1 / 1.2:
            verdict = "under-confident: the spread overstates the error"
        else:
            verdict = "about right"
        parts.append(f"{name}: mean z² {z2:.3g}, {verdict}")
    return "Measured here — " + "; ".join(parts) + "." if parts else None


def _loop_text(loop: dict[str, Any] | None) -> str | None:
    if not loop or loop.get("loop_transfers_better") is None:
        return None
    better = "transfers better" if loop["loop_transfers_better"] else "does not transfer better"
    return (
        f"A calibration also fitted on the loop's own {loop.get('loop_structures', '?')} "
        f"labels {better} to the OOD test part (|log mean z²| {_num(loop.get('loop_gap'))} "
        f"against {_num(loop.get('split_gap'))})."
    )


def _calibration(b: _Builder) -> Section:
    cal = b.data["calibration"]
    scatter = b.figure("calibration", figures.calibration_scatter(b.data["test"]))
    checks = (cal or {}).get("checks") or {}
    bars = b.figure("coverage", figures.coverage(checks))
    if scatter is None and bars is None:
        return Section.not_run("calibration", "Calibration", "no ensemble has been calibrated yet")
    header = (
        "data",
        "atoms",
        "Spearman ρ(σ, |ΔF|)",
        "miscalibration area",
        "mean z²",
        "68 % coverage",
        "95 % coverage",
    )
    return Section(
        id="calibration",
        title="Calibration",
        content={
            "figures": [k for k in (scatter, bars) if k],
            "header": header,
            "rows": _check_rows(checks),
            "measured": confidence_text(checks),
            "loop": _loop_text((cal or {}).get("loop")),
        },
    )


# ---------------------------------------------------------------------- regions, splits
def _ratio(r: dict[str, Any]) -> str:
    lo, hi = r.get("ratio_ci") or (None, None)
    text = _num(r.get("ratio"))
    if finite(lo) is not None and finite(hi) is not None:
        text += f" ({lo:.2f}–{hi:.2f})"
    return text


def _region_rows(regions: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for r in regions:
        seen = "–" if r.get("first_seen") is None else f"{r['first_seen']}–{r['last_seen']}"
        history = " → ".join(_num(h.get("ratio")) for h in r.get("history") or []) or "–"
        rows.append(
            (
                r["id"],
                shown_rule(r),
                _ratio(r),
                _num(r.get("q_value"), ".1e"),
                "yes" if r.get("silent") else "",
                f"{r.get('n_atoms', '–')} / {r.get('n_structures', '–')}",
                seen,
                history,
            )
        )
    return rows


def _regions(b: _Builder) -> Section:
    payload = b.data["regions"]
    if payload is None:
        return Section.not_run("regions", "Failure regions", "no diagnosis yet")
    regions = payload.get("regions") or []
    resolved = b.data["summary"]["resolved"]
    b.views = region_views(regions)
    note = None
    if not regions and b.data["test"] is not None:
        b.views = top_error_views(b.data["test"])
        note = (
            "No failure region in the last diagnosis; the viewer shows the test structures "
            "with the highest mean force error, their worst atoms (top 10 %) marked."
        )
    header = (
        "id",
        "rule",
        "error ratio (selection-aware CI)",
        "q",
        "silent",
        "atoms / structures",
        "seen",
        "ratio per iteration",
    )
    return Section(
        id="regions",
        title="Failure regions",
        content={
            "iteration": payload.get("iteration"),
            "source": payload.get("source"),
            "tentative": payload.get("tentative"),
            "header": header,
            "rows": _region_rows(regions),
            "resolved": [
                (r["id"], str(r.get("rule") or ""), str(r.get("resolved_at"))) for r in resolved
            ],
            "figure": b.figure("region-history", figures.region_history(regions, resolved)),
            "viewer": bool(b.views),
            "note": note,
        },
    )


def _split_row(s: dict[str, Any]) -> tuple[str, ...]:
    if s.get("skipped"):
        return (
            s["name"],
            str(s.get("description", "")),
            "–",
            "–",
            "–",
            "–",
            "–",
            "–",
            f"skipped: {s['skipped']}",
        )
    return (
        s["name"],
        str(s.get("description", "")),
        f"{s.get('n_train')}/{s.get('n_test')}",
        _mev(s.get("id_force_mae")),
        _mev(s.get("ood_force_mae")),
        _num(s.get("ood_ratio")),
        _num(s.get("vs_random")),
        _mev(s.get("ood_energy_mae"), 1),
        "retrained" if s.get("trained") else "this ensemble",
    )


def _splits(b: _Builder) -> Section:
    splits = (b.data["regions"] or {}).get("splits") or []
    if not splits:
        return Section.not_run("splits", "Biased splits", "no split in the last diagnosis")
    header = (
        "split",
        "what",
        "train/test",
        "ID F MAE",
        "OOD F MAE",
        "OOD/ID",
        "vs random",
        "OOD E MAE",
        "model",
    )
    return Section(
        id="splits",
        title="Biased splits",
        content={"header": header, "rows": [_split_row(s) for s in splits]},
    )


# ---------------------------------------------------------------------- probes
def _table_payload(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A probe's table (md_stability) or matrices (elastic: model and oracle) to show as HTML."""
    kind = payload.get("kind")
    if kind == "table" and payload.get("rows"):
        return {
            "header": payload.get("columns") or [],
            "rows": [
                [_num(c, ".4g") if isinstance(c, int | float) else str(c) for c in row]
                for row in payload["rows"]
            ],
        }
    if kind == "matrices" and payload.get("model"):
        rows = []
        for i, (m, o) in enumerate(
            zip(payload["model"], payload.get("oracle") or payload["model"], strict=False)
        ):
            rows.append(
                [
                    str(i + 1),
                    *(f"{_num(x, '.4g')} / {_num(y, '.4g')}" for x, y in zip(m, o, strict=False)),
                ]
            )
        return {
            "header": [
                "C_ij (model / oracle), " + payload.get("unit", ""),
                *(str(j + 1) for j in range(len(payload["model"][0]))),
            ],
            "rows": rows,
        }
    return None


def _probe_rows(probe: dict[str, Any]) -> list[tuple[str, ...]]:
    from chemgap.agent.probes.results import report_rows

    return [row[1:] for row in report_rows({"probes": [probe]})]


def _probes(b: _Builder) -> Section:
    payload = b.data["probes"]
    if payload is None:
        return Section.not_run(
            "probes",
            "Probes",
            "no probe run (the spec's probes section names none, or none ran yet)",
        )
    items = []
    for k, probe in enumerate(payload.get("probes") or []):
        items.append(
            {
                "name": probe["name"],
                "verdict": {True: "pass", False: "FAIL", None: "–"}[probe.get("passed")],
                "error": probe.get("error"),
                "figure": b.figure(f"probe-{k}", figures.probe_figure(probe)),
                "table": _table_payload(probe.get("payload") or {}),
                "rows": _probe_rows(probe),
                "notes": list(probe.get("notes") or []),
            }
        )
    meta = payload.get("meta") or {}
    return Section(
        id="probes",
        title="Probes",
        content={
            "cards": items,
            "error": payload.get("error"),
            "iteration": meta.get("iteration", payload.get("iteration")),
            "oracle_calls": meta.get("oracle_calls"),
            "seconds": payload.get("seconds"),
            "header": ("metric", "model ± band", "oracle", "verdict"),
        },
    )


# ---------------------------------------------------------------------- remediation
def _remediation(b: _Builder) -> Section:
    rem = b.data["remedies"]
    if rem is None:
        return Section.not_run(
            "remediation", "Remediation", "no remediation experiment has finished"
        )
    if "refused" in rem:
        return Section(id="remediation", title="Remediation", content={"refused": rem["refused"]})
    s = rem["results"]["settings"]
    arms = rem["results"]["arms"]
    settings = f"from iteration {s.get('iteration')} · {s.get('repeats')} repeats"
    if any(a.get("kind") == "data" or a["arm"] == "random" for a in arms):
        settings += f" · {s.get('budget')} oracle calls per data arm and repeat"
        if any(a.get("cost_control") for a in arms):
            settings += " (random_atoms: as many oracle atoms as cell_size)"
    header = (
        "arm",
        "repeats",
        "test ID F MAE",
        "Δ ID",
        "test OOD F MAE",
        "Δ OOD",
        "oracle calls",
        "oracle atoms",
    )
    return Section(
        id="remediation",
        title="Remediation",
        content={
            "settings": settings,
            "header": header,
            "rows": rem["rows"],
            "regions": rem["regions"],
            "sources": rem.get("sources") or [],
            "caption": comparison_caption(rem["results"]),
            "split": split_caption(rem["results"]),
            "costs": cost_rows(rem["results"]),
            "unscorable": unscorable_rows(rem["results"]),
            "figure": b.figure("remedies", figures.remedies_chart(rem["results"])),
            "best": best_remedy(rem),
        },
    )


# ---------------------------------------------------------------------- metadata
def _timing_table(timings: list[dict[str, Any]]) -> dict[str, Any]:
    steps = list(dict.fromkeys(s for row in timings for s in row["steps"]))
    rows = [
        [
            str(row["iteration"]),
            *(_num(row["steps"].get(s), ".1f") for s in steps),
            _num(sum(row["steps"].values()), ".1f"),
        ]
        for row in timings
    ]
    return {"header": ["iteration", *steps, "total"], "rows": rows}


def _versions(versions: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(package, version the last ensemble recorded at training, version installed now)."""
    recorded, installed = versions["recorded"], versions["installed"]
    return [
        (name, str(recorded.get(name) or "–"), str(now or "–")) for name, now in installed.items()
    ]


def _cluster(cluster: dict | None) -> str:
    """``2 nodes (1 + 1 CPUs, 0 GPUs); tasks per node: 41, 37`` from cluster.json."""
    if not cluster or not cluster.get("nodes"):
        return "not recorded (the run ran in-process or before chemgap recorded it)"
    nodes = cluster["nodes"]
    per_node = dict.fromkeys(nodes, 0)
    for per_iteration in cluster.get("tasks", {}).values():
        for node, kinds in per_iteration.items():
            if node in per_node:  # the nodes of this cluster (a resume may have used others)
                per_node[node] += sum(kinds.values())
    cpus = " + ".join(f"{v['cpus']:g}" for v in nodes.values())
    gpus = sum(v.get("gpus", 0) for v in nodes.values())
    lost = sum(not v.get("alive", True) for v in nodes.values())
    return (
        f"{len(nodes)} node{'s' * (len(nodes) != 1)} ({cpus} CPUs, {gpus:g} GPUs"
        + (f"; {lost} lost or stopped since" if lost else "")
        + "); tasks per node: "
        + ", ".join(str(n) for n in per_node.values())
    )


def _metadata(b: _Builder) -> Section:
    d = b.data
    run, meta = d["run"], d["meta"]
    t = meta["time"]
    overhead = t.get("overhead_fraction")
    facts = [
        ("campaign", run["campaign"]),
        ("run directory", run["path"]),
        ("created", _when(run["created"])),
        ("updated", _when(run["updated"])),
        ("host", run["host"]),
        ("written by", f"chemgap {run['chemgap_version']}"),
        (
            "wall time",
            f"{t['elapsed_s']:.0f} s"
            + (
                ""
                if overhead is None
                else f", {t['overhead_s']:.0f} s ({100 * overhead:.1f} %) between steps"
            ),
        ),
        ("labels", f"{run['labels']['ok']} ok, {run['labels']['failed']} failed"),
        ("Ray cluster", _cluster(meta.get("cluster"))),
    ]
    return Section(
        id="metadata",
        title="Run metadata",
        content={
            "facts": facts,
            "versions": _versions(meta["versions"]),
            "timings": _timing_table(meta["timings"]),
            "spec": meta["spec"],
        },
    )


SECTIONS: tuple[tuple[str, Callable[[_Builder], Section]], ...] = (
    ("summary", _summary),
    ("learning-curves", _learning),
    ("parity", _parity),
    ("calibration", _calibration),
    ("regions", _regions),
    ("splits", _splits),
    ("probes", _probes),
    ("remediation", _remediation),
    ("metadata", _metadata),
)


def build_sections(data: dict[str, Any]) -> Report:
    """The report of the gathered ``data`` (:func:`chemgap.agent.report.gather.gather`)."""
    b = _Builder(data)
    sections = [fn(b) for _, fn in SECTIONS]
    run = data["run"]
    return Report(
        title=f"chemgap · {run['campaign']}",
        sections=sections,
        figures=b.figures,
        views=b.views,
        generated=_when(time.time()),
    )
