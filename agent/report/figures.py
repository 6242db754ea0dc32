"""The report's figures as plotly figure dicts (``{"data": [...], "layout": {...}}``), built in
Python from what :mod:`chemgap.agent.report.gather` read, rendered in the page by the vendored
plotly.js basic bundle (scatter and bar traces only).

Each builder returns None when its data are missing, so the page can say "not run". Force
errors are shown in meV/Å, energies in meV/atom; numbers are rounded to 4 significant digits
to keep the file small, and a parity plot keeps at most :data:`MAX_POINTS` points (a seeded
subsample, said in its title).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chemgap.agent.report.gather import finite

if TYPE_CHECKING:
    from chemgap.agent.report.gather import TestSet

__all__ = [
    "MAX_POINTS",
    "calibration_scatter",
    "coverage",
    "learning_curve",
    "parity",
    "probe_figure",
    "region_history",
    "remedies_chart",
]

MAX_POINTS = 6000  # points per parity/calibration plot; beyond it a seeded subsample
MARKER_LIMIT = 40  # a probe curve with more points is drawn as a line without markers
COMPONENTS = ("x", "y", "z")
ORACLE_COLOR, DIAGONAL_COLOR = "#222222", "#999999"
ID_COLOR, OOD_COLOR, HOLDOUT_COLOR = "#222222", "#d62728", "#7f7f7f"
# kinds, arms and curves; red is kept for OOD (and for the viewer's region atoms)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def _r(values: Any, scale: float = 1.0) -> list[float | None]:
    """Values × ``scale`` as JSON floats with 4 significant digits (non-finite as None)."""
    out = []
    for x in np.asarray(values, dtype=float).ravel() * scale:
        out.append(float(f"{x:.4g}") if np.isfinite(x) else None)
    return out


def _layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """The layout every figure shares: compact margins, axis titles, legend on top."""
    layout = {
        "height": 360,
        "margin": {"l": 64, "r": 16, "t": 36, "b": 52},
        "font": {"size": 12},
        "hovermode": "closest",
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "xaxis": {"title": {"text": x_title}, "zeroline": False},
        "yaxis": {"title": {"text": y_title}, "zeroline": False},
    }
    layout.update(extra)
    return layout


def _color(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _subsample(n: int, limit: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items (all when n ≤ limit), sorted, seeded."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# ---------------------------------------------------------------------- learning curves
def _kind_mae(row: dict[str, Any], kind: str) -> float | None:
    rep = ((row.get("test") or {}).get("kinds") or {}).get(kind) or {}
    return finite(rep.get("force_mae"))


def learning_curve(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Test force MAE (meV/Å) in and out of distribution, per kind, and on the holdout,
    against the oracle calls spent on training labels; None before an iteration finished.
    """
    rows = [h for h in history if h.get("oracle_calls") is not None]
    if not rows:
        return None
    x = [h["oracle_calls"] for h in rows]
    text = [f"iteration {h['iteration']}" for h in rows]
    series = [
        ("test ID", [h.get("test_force_mae_id") for h in rows], "solid", 3, ID_COLOR),
        ("test OOD", [h.get("test_force_mae_ood") for h in rows], "solid", 3, OOD_COLOR),
        ("holdout", [h.get("force_mae") for h in rows], "dot", 2, HOLDOUT_COLOR),
    ]
    kinds = list(dict.fromkeys(k for h in rows for k in ((h.get("test") or {}).get("kinds") or {})))
    series += [
        (f"kind {kind}", [_kind_mae(h, kind) for h in rows], "dash", 1.5, _color(k))
        for k, kind in enumerate(kinds)
    ]
    data = []
    for name, y, dash, width, color in series:
        if all(v is None for v in y):
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": x,
                "y": _r([np.nan if v is None else v for v in y], 1000),
                "text": text,
                "line": {"dash": dash, "width": width, "color": color},
                "hovertemplate": "%{text}<br>%{x} calls: %{y} meV/Å<extra>" + name + "</extra>",
            }
        )
    if not data:
        return None
    return {"data": data, "layout": _layout("oracle calls (training labels)", "force MAE (meV/Å)")}


# ---------------------------------------------------------------------- parity
def _diagonal(lo: float, hi: float, xaxis: str = "x", yaxis: str = "y") -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "lines",
        "x": [lo, hi],
        "y": [lo, hi],
        "line": {"color": DIAGONAL_COLOR, "dash": "dot", "width": 1},
        "hoverinfo": "skip",
        "showlegend": False,
        "xaxis": xaxis,
        "yaxis": yaxis,
    }


def _atom_labels(test: TestSet) -> list[str]:
    """Per atom: ``structure i (kind, ID|OOD) · atom j Cu`` with the data.db row id."""
    from ase.data import chemical_symbols

    first = np.concatenate([[0], np.cumsum(test.n_atoms)[:-1]])
    out = []
    for a, (s, z) in enumerate(zip(test.system_idx, test.numbers, strict=True)):
        part = "ID" if test.in_distribution[s] else "OOD"
        db = test.structures[s].info.get("db_id")
        out.append(
            f"structure {s} (row {db}, {test.kinds[s]}, {part}) · atom {a - first[s]} "
            f"{chemical_symbols[z]}"
        )
    return out


def _force_traces(test: TestSet, labels: list[str]) -> tuple[list[dict[str, Any]], int, int]:
    """Force-component parity traces per kind; (traces, points shown, points in all)."""
    n_a = len(test.numbers)
    atom = np.repeat(np.arange(n_a), 3)
    comp = np.tile(np.arange(3), n_a)
    keep = _subsample(3 * n_a)
    ref, pred = test.ref_forces.ravel()[keep], test.pred_forces.ravel()[keep]
    atom, comp = atom[keep], comp[keep]
    kinds = test.kinds[test.system_idx[atom]]
    traces = []
    for k, kind in enumerate(dict.fromkeys(test.kinds.tolist())):
        m = kinds == kind
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": kind,
                "legendgroup": kind,
                "x": _r(ref[m]),
                "y": _r(pred[m]),
                "text": [
                    f"{labels[a]} · F{COMPONENTS[c]}" for a, c in zip(atom[m], comp[m], strict=True)
                ],
                "marker": {"size": 4, "opacity": 0.6, "color": _color(k)},
                "hovertemplate": "%{text}<br>reference %{x} · predicted %{y} eV/Å<extra></extra>",
            }
        )
    return traces, len(keep), 3 * n_a


def _energy_traces(test: TestSet) -> list[dict[str, Any]]:
    """Energy-per-atom parity traces (second axes), one per kind, legend shared with forces."""
    traces = []
    for k, kind in enumerate(dict.fromkeys(test.kinds.tolist())):
        idx = np.flatnonzero(test.kinds == kind)
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": kind,
                "legendgroup": kind,
                "showlegend": False,
                "x": _r(test.ref_energy[idx]),
                "y": _r(test.pred_energy[idx]),
                "text": [
                    f"structure {i} (row {test.structures[i].info.get('db_id')}, {kind}) · "
                    f"{test.structures[i].get_chemical_formula()}"
                    for i in idx
                ],
                "marker": {"size": 7, "opacity": 0.8, "color": _color(k)},
                "hovertemplate": "%{text}<br>reference %{x} · predicted %{y} eV/atom"
                "<extra></extra>",
                "xaxis": "x2",
                "yaxis": "y2",
            }
        )
    return traces


def parity(test: TestSet | None) -> dict[str, Any] | None:
    """Predicted against reference force components (eV/Å) per kind, and energies (eV/atom)
    per structure, of the last scored ensemble on the test set; hover names structure, kind,
    atom and component.
    """
    if test is None or not len(test.numbers):
        return None
    labels = _atom_labels(test)
    forces, shown, total = _force_traces(test, labels)
    f_lo = float(min(test.ref_forces.min(), test.pred_forces.min()))
    f_hi = float(max(test.ref_forces.max(), test.pred_forces.max()))
    e_lo = float(min(test.ref_energy.min(), test.pred_energy.min()))
    e_hi = float(max(test.ref_energy.max(), test.pred_energy.max()))
    title = f"iteration {test.iteration}'s ensemble on the test set"
    if shown < total:
        title += f" ({shown} of {total} force components shown)"
    layout = _layout(
        "reference force component (eV/Å)",
        "predicted (eV/Å)",
        title={"text": title, "font": {"size": 12}, "x": 0, "xanchor": "left"},
        height=400,
        margin={"l": 64, "r": 16, "t": 64, "b": 52},
    )
    layout["xaxis"]["domain"] = [0, 0.58]
    layout["xaxis2"] = {
        "domain": [0.7, 1],
        "anchor": "y2",
        "zeroline": False,
        "title": {"text": "reference energy (eV/atom)"},
    }
    layout["yaxis2"] = {"anchor": "x2", "zeroline": False, "title": {"text": "predicted"}}
    data = [
        _diagonal(f_lo, f_hi),
        *forces,
        _diagonal(e_lo, e_hi, "x2", "y2"),
        *_energy_traces(test),
    ]
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------- calibration
def calibration_scatter(test: TestSet | None) -> dict[str, Any] | None:
    """Per atom: calibrated spread σ against |ΔF| (both eV/Å, log axes), in and out of
    distribution; a calibrated σ has the errors scattered around the diagonal.
    """
    if test is None or not len(test.numbers):
        return None
    labels = _atom_labels(test)
    err, sigma = test.atom_error, test.force_std_cal
    ident = test.atom_in_distribution
    keep = _subsample(len(err))
    data = []
    for name, mask, color in (("ID", ident, ID_COLOR), ("OOD", ~ident, OOD_COLOR)):
        idx = keep[mask[keep]]
        if not len(idx):
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"test {name}",
                "x": _r(sigma[idx]),
                "y": _r(err[idx]),
                "text": [labels[i] for i in idx],
                "marker": {"size": 5, "opacity": 0.6, "color": color},
                "hovertemplate": "%{text}<br>σ %{x} · |ΔF| %{y} eV/Å<extra></extra>",
            }
        )
    positive = np.concatenate([err[err > 0], sigma[sigma > 0]])
    layout = _layout("calibrated σ per atom (eV/Å)", "|ΔF| per atom (eV/Å)")
    if len(positive):
        lo, hi = float(positive.min()), float(positive.max())
        data.insert(0, _diagonal(lo, hi))
        ticks = _log_ticks(lo, hi)
        for axis in ("xaxis", "yaxis"):
            layout[axis].update(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return {"data": data, "layout": layout}


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks of a log axis from ``lo`` to ``hi`` (one label per step, no clutter)."""
    out = []
    for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1):
        out += [m * 10.0**k for m in (1, 2, 5) if lo / 1.5 <= m * 10.0**k <= hi * 1.5]
    return [float(f"{t:.3g}") for t in out]


COVERAGE_PARTS = (("held_out", "holdout"), ("test_id", "test ID"), ("test_ood", "test OOD"))


def coverage(checks: dict[str, Any] | None) -> dict[str, Any] | None:
    """Observed coverage of the calibrated 68 % and 95 % force intervals on the holdout and
    the test set's ID and OOD parts, against the nominal levels (dotted lines).
    """
    if not checks:
        return None
    parts = [(key, name) for key, name in COVERAGE_PARTS if checks.get(key)]
    if not parts:
        return None
    data = []
    for k, level in enumerate((68, 95)):
        y = [finite(checks[key].get(f"coverage_{level}_forces")) for key, _ in parts]
        data.append(
            {
                "type": "bar",
                "name": f"{level} % interval",
                "x": [name for _, name in parts],
                "y": [None if v is None else round(v, 3) for v in y],
                "marker": {"color": _color(k)},
                "hovertemplate": "%{x}: %{y:.0%} of force components inside<extra>"
                f"{level} %</extra>",
            }
        )
    shapes = [
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "y0": v,
            "y1": v,
            "line": {"dash": "dot", "color": _color(k), "width": 1.5},
        }
        for k, v in enumerate((0.68, 0.95))
    ]
    layout = _layout("", "fraction inside the interval", barmode="group", shapes=shapes)
    layout["yaxis"]["range"] = [0, 1.05]
    layout["yaxis"]["tickformat"] = ".0%"
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------- regions
def _ratio_trace(region: dict[str, Any], k: int, resolved: bool) -> dict[str, Any] | None:
    hist = [h for h in region.get("history") or [] if finite(h.get("ratio")) is not None]
    if not hist:
        return None
    ratio = [float(h["ratio"]) for h in hist]
    ci = [h.get("ratio_ci") or [None, None] for h in hist]
    plus = [max((finite(c[1]) or r) - r, 0.0) for c, r in zip(ci, ratio, strict=True)]
    minus = [max(r - (finite(c[0]) or r), 0.0) for c, r in zip(ci, ratio, strict=True)]
    name = region["id"] + (" (resolved)" if resolved else "")
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": [h["iteration"] for h in hist],
        "y": _r(ratio),
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": _r(plus),
            "arrayminus": _r(minus),
            "thickness": 1,
        },
        "text": [str(region.get("rule") or region["id"])] * len(hist),
        "line": {"color": _color(k), "dash": "dash" if resolved else "solid"},
        "hovertemplate": "%{text}<br>iteration %{x}: %{y}× the baseline error<extra>"
        + region["id"]
        + "</extra>",
    }


def region_history(
    regions: Sequence[dict[str, Any]], resolved: Sequence[dict[str, Any]] = ()
) -> dict[str, Any] | None:
    """Each region's force-error ratio to the baseline (its CI as stored: selection-aware for a
    significant region, :attr:`Region.ci_level`) per iteration it was found;
    resolved regions dashed. None when no region has a history.
    """
    data = []
    for k, r in enumerate([*regions, *resolved]):
        trace = _ratio_trace(r, k, resolved=k >= len(regions))
        if trace is not None:
            data.append(trace)
    if not data:
        return None
    shapes = [
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "y0": 1,
            "y1": 1,
            "line": {"dash": "dot", "color": DIAGONAL_COLOR, "width": 1},
        }
    ]
    layout = _layout("iteration", "error ratio to the baseline", shapes=shapes)
    layout["xaxis"]["dtick"] = 1
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------- probes
def _band(curve: dict[str, Any]) -> np.ndarray | None:
    """(n,) std over the members of a probe curve (None with fewer than two members); members
    on their own x (``members_x``: each row on its own grid, as the EOS) are interpolated
    onto the model's x first (NaN outside their range).
    """
    members = [
        np.asarray([np.nan if v is None else v for v in m], dtype=float)
        for m in curve.get("members") or []
    ]
    if len(members) < 2:
        return None
    xs = curve.get("members_x")
    if xs:
        x = np.asarray([np.nan if v is None else v for v in curve["x"]], dtype=float)
        members = [_on(x, mx, my) for mx, my in zip(xs, members, strict=True)]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column no member covers is NaN
        stack = np.vstack(members)
        return np.nanstd(stack, axis=0) if np.isfinite(stack).any() else None


def _on(x: np.ndarray, xp: list[float | None], yp: np.ndarray) -> np.ndarray:
    """``yp`` given at ``xp`` interpolated at ``x`` (NaN outside ``xp``'s range)."""
    xp_ = np.asarray([np.nan if v is None else v for v in xp], dtype=float)
    ok = np.isfinite(xp_) & np.isfinite(yp)
    if ok.sum() < 2:
        return np.full(len(x), np.nan)
    order = np.argsort(xp_[ok])
    return np.interp(x, xp_[ok][order], yp[ok][order], left=np.nan, right=np.nan)


def _curve_traces(curve: dict[str, Any], k: int, bars: bool) -> list[dict[str, Any]]:
    """Oracle, model and its ± member-std band for one probe curve."""
    x = curve.get("x_ticks") or curve["x"]
    model = np.asarray([np.nan if v is None else v for v in curve["model"]], dtype=float)
    band = _band(curve)
    label = curve.get("label") or ""
    mode = "lines+markers" if len(x) <= MARKER_LIMIT else "lines"
    traces: list[dict[str, Any]] = []
    if curve.get("oracle") is not None:
        oracle: dict[str, Any] = {
            "name": f"oracle {label}",
            "x": curve.get("oracle_x") or x,
            "y": curve["oracle"],
            "marker": {"color": ORACLE_COLOR},
        }
        traces.append(
            {"type": "bar", **oracle}
            if bars
            else {
                "type": "scatter",
                "mode": mode,
                "line": {"color": ORACLE_COLOR, "width": 1.5},
                **oracle,
            }
        )
    model_trace: dict[str, Any] = {
        "name": f"model {label}",
        "x": x,
        "y": _r(model),
        "marker": {"color": _color(k)},
    }
    if bars:
        model_trace["type"] = "bar"
        if band is not None:
            model_trace["error_y"] = {"type": "data", "array": _r(band)}
        return [*traces, model_trace]
    model_trace.update(type="scatter", mode=mode, line={"color": _color(k), "width": 2})
    if band is not None:
        traces += [
            {
                "type": "scatter",
                "mode": "lines",
                "x": x,
                "y": _r(model + band),
                "line": {"width": 0},
                "hoverinfo": "skip",
                "showlegend": False,
            },
            {
                "type": "scatter",
                "mode": "lines",
                "x": x,
                "y": _r(model - band),
                "line": {"width": 0},
                "fill": "tonexty",
                "fillcolor": _fill(k),
                "name": f"members ±σ {label}",
                "hoverinfo": "skip",
            },
        ]
    return [*traces, model_trace]


def _well_range(curves: list[dict[str, Any]]) -> list[float] | None:
    """A y range that shows pair curves' wells rather than their repulsive walls (eV), or None
    when every curve fits anyway.
    """
    values = np.asarray(
        [
            v
            for c in curves
            for key in ("model", "oracle")
            for v in (c.get(key) or [])
            if v is not None
        ],
        dtype=float,
    )
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo = min(float(values.min()), 0.0)
    hi = max(2.0 * abs(lo), 1.0)
    if float(values.max()) <= hi:
        return None
    return [lo - 0.15 * (hi - lo), hi]


def _fill(k: int) -> str:
    c = _color(k).lstrip("#")
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},0.2)"


def probe_figure(probe: dict[str, Any]) -> dict[str, Any] | None:
    """One probe's curves (EOS, vacancy, dimers, NVE drift, g(r)), bars (surface energies) or
    spectra (vibrations) as written in ``probes.json``: the oracle, the ensemble-mean model
    and the members' ±σ band. None for probes without curves (tables, matrices, errors).
    """
    payload = probe.get("payload") or {}
    kind = payload.get("kind")
    if kind not in ("curves", "bars", "spectra") or not payload.get("curves"):
        return None
    data = []
    for k, curve in enumerate(payload["curves"]):
        if kind == "bars" and payload.get("x_ticks"):
            curve = {**curve, "x_ticks": payload["x_ticks"]}
        data += _curve_traces(curve, k, bars=kind == "bars")
    layout = _layout(payload.get("x_label", ""), payload.get("y_label", ""), height=320)
    if kind == "bars":
        layout["barmode"] = "group"
        layout["xaxis"]["type"] = "category"  # facets like 100 and 111 are names, not numbers
    if probe.get("name") == "dimer" and (span := _well_range(payload["curves"])) is not None:
        layout["yaxis"]["range"] = span  # the wall is off the top: zoom out to see it
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------- remediation
def remedies_chart(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """Test force MAE in and out of distribution per arm (meV/Å), mean ± 95 % CI over repeats."""
    if not results or not results.get("arms"):
        return None
    names = [a["arm"] + (f" n={a['size']}" if a.get("size") else "") for a in results["arms"]]
    data = []
    for k, (metric, label) in enumerate(
        (("force_mae_id", "test ID"), ("force_mae_ood", "test OOD"))
    ):
        mean = [(a["metrics"].get(metric) or {}).get("mean") for a in results["arms"]]
        ci = [(a["metrics"].get(metric) or {}).get("ci") for a in results["arms"]]
        half = _r([np.nan if v is None else v for v in ci], 1000)
        data.append(
            {
                "type": "bar",
                "name": label,
                "x": names,
                "y": _r([np.nan if v is None else v for v in mean], 1000),
                "error_y": {"type": "data", "array": half},
                "customdata": half,
                "marker": {"color": _color(k)},
                "hovertemplate": "%{x}: %{y} ± %{customdata} meV/Å (95 % CI)<extra>"
                + label
                + "</extra>",
            }
        )
    return {"data": data, "layout": _layout("arm", "test force MAE (meV/Å)", barmode="group")}
