"""An experiment's numbers: per arm mean ± 95 % CI over repeats, paired differences to the
controls, and which arm fixed each flagged region.

Each cell is scored on the run's fixed test set (its in-distribution and out-of-distribution
parts, per kind), on the base holdout, and inside every failure region the base iteration
flagged (the mean force-error norm of the test atoms the region's rule selects, eV/Å). Repeats
share their seeds across arms, so an arm is compared with its control repeat by repeat: the
mean paired difference with a Student-t 95 % interval and a paired t-test p-value (Student
1908; with fewer than two repeats the interval and p are NaN). A region counts as *fixed* by
the arm with the lowest error inside it among those whose paired difference to their control
there is negative with p < ``ALPHA``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.region import Region, as_region
from chemgap.agent.remedies.arms import Arm

ALPHA = 0.05
# metric name -> (where in a cell result, readable name, unit scale to the table's unit)
METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "force_mae_id": (("test", "id", "force_mae"), "test F MAE ID, eV/Å"),
    "force_mae_ood": (("test", "ood", "force_mae"), "test F MAE OOD, eV/Å"),
    "energy_mae_id": (("test", "id", "energy_mae_per_atom"), "test E MAE ID, eV/atom"),
    "energy_mae_ood": (("test", "ood", "energy_mae_per_atom"), "test E MAE OOD, eV/atom"),
    "holdout_force_mae": (("holdout", "force_mae"), "holdout F MAE, eV/Å"),
}


def region_masks_on_test(base: Any, ensemble: Any) -> dict[str, list[bool]]:
    """(n_test_atoms,) mask of every base region's rule on the test set, with the features
    the base diagnosis saw (its environment classes, the base model's charges), rebuilt through
    :class:`chemgap.agent.diagnostics.selector.RegionSelector`; a region selecting no test atom
    (its rule names a feature the rebuilt features lack: a warning) is not scored.
    """
    from chemgap.agent.diagnostics.region import as_region
    from chemgap.agent.diagnostics.selector import RegionSelector

    regions = [as_region(r) for r in base.regions]
    if not regions:
        return {}
    selector = RegionSelector.rebuild(
        base.test,
        base.spec.diagnostics,
        seed=base.spec.seed,
        prediction=ensemble.predict(base.test),
        environment=base.environment,
    )
    out = {}
    for r in regions:
        mask = selector.select(r)
        if mask.any():
            out[r.id] = mask.tolist()
    return out


def _get(d: Any, path: tuple[str, ...]) -> float:
    for key in path:
        if not isinstance(d, dict) or d.get(key) is None:
            return float("nan")
        d = d[key]
    return float(d)


def cell_metrics(cell: dict[str, Any], masks: dict[str, list[bool]]) -> dict[str, float]:
    """One cell's metrics: the test/holdout errors of :data:`METRICS`, ``region:<id>`` (mean
    force-error norm inside each region, eV/Å) and its costs.
    """
    out = {name: _get(cell, path) for name, (path, _) in METRICS.items()}
    err = np.asarray(cell["atom_error"], dtype=float)
    for rid, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        out[f"region:{rid}"] = float(err[m].mean()) if m.any() and len(m) == len(err) else np.nan
    for probe in cell.get("probes", []):
        error = probe.get("error")
        out[f"probe:{probe['label']}"] = float("nan") if error is None else float(error)
    for key in ("oracle_calls", "oracle_s", "train_s", "n_train"):
        out[key] = float(cell.get(key, 0.0))
    return out


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its Student-t 95 % interval (NaN below two values)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) < 2:
        return float(v.mean()), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)


def paired(arm: np.ndarray, control: np.ndarray) -> dict[str, float]:
    """Paired difference arm − control over repeats: mean, 95 % CI half-width, relative
    change (mean difference / control mean), two-sided paired t-test p.
    """
    from scipy import stats

    a, c = np.asarray(arm, dtype=float), np.asarray(control, dtype=float)
    ok = np.isfinite(a) & np.isfinite(c)
    d = a[ok] - c[ok]
    mean, half = mean_ci(d)
    p = float("nan")
    if len(d) >= 2 and np.std(d) > 0:
        p = float(stats.ttest_rel(a[ok], c[ok]).pvalue)
    elif len(d) >= 2:
        p = 1.0 if mean == 0 else 0.0
    base = float(np.mean(c[ok])) if ok.any() else float("nan")
    rel = mean / base if base else float("nan")
    return {"diff": mean, "diff_ci": half, "rel": rel, "p": p, "n": int(ok.sum())}


def _group_key(cell: dict[str, Any]) -> str:
    return cell["arm"] + (f" n={cell['size']}" if cell.get("size") else "")


def summarise(
    cells: list[dict[str, Any]],
    arms: list[Arm],
    regions: Sequence[Region | Mapping[str, Any]],
    masks: dict[str, list[bool]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The experiment's summary (``results.json``).

    ``regions`` are the base iteration's (:class:`~chemgap.agent.diagnostics.region.Region`;
    a ``regions.json`` dict is read as one); those with a mask in ``masks`` are summarised.

    Returns:
        ``{"settings", "arms": [{"arm", "size", "kind", "control", "repeats", "metrics":
        {name: {"mean", "ci", "values"}}, "vs_control": {name: paired()}}], "regions":
        [{"id", "rule", "fixed_by", "best"}], "metric_names"}``.
    """
    kinds = {a.name: a for a in arms}
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(_group_key(cell), []).append(cell)
    table = {}
    units: dict[str, str] = {}
    for key, members in groups.items():
        members = sorted(members, key=lambda c: c["repeat"])
        metrics = [cell_metrics(c, masks) for c in members]
        names = list(dict.fromkeys(n for m in metrics for n in m))
        for cell in members:
            units |= {p["label"]: p.get("unit", "") for p in cell.get("probes", [])}
        table[key] = {
            "arm": members[0]["arm"],
            "size": members[0].get("size"),
            "kind": str(kinds[members[0]["arm"]].kind),
            "control": kinds[members[0]["arm"]].control,
            "repeats": [c["repeat"] for c in members],
            "metrics": {
                n: dict(
                    zip(
                        ("mean", "ci"),
                        mean_ci(np.array([m.get(n, np.nan) for m in metrics])),
                        strict=True,
                    )
                )
                | {"values": [m.get(n, np.nan) for m in metrics]}
                for n in names
            },
        }
    for row in table.values():
        row["vs_control"] = _versus(row, table)
    flagged = [as_region(r) for r in regions]
    out_regions = [_fixed(r, table) for r in flagged if r.id in masks]
    return {
        "settings": settings,
        "arms": list(table.values()),
        "regions": out_regions,
        "metric_names": {n: text for n, (_, text) in METRICS.items()},
        "probe_units": units,
    }


def _stats(values: list[float]) -> dict[str, Any]:
    mean, ci = mean_ci(np.array(values))
    return {"mean": mean, "ci": ci, "values": values}


def _versus(row: dict[str, Any], table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if row["control"] is None:
        return {}
    key = row["control"] + (f" n={row['size']}" if row["size"] else "")
    ctrl = table.get(key)
    if ctrl is None:
        return {}
    common = sorted(set(row["repeats"]) & set(ctrl["repeats"]))
    out = {}
    for name, m in row["metrics"].items():
        if name in ("oracle_calls", "oracle_s", "train_s", "n_train"):
            continue
        a = [m["values"][row["repeats"].index(r)] for r in common]
        c = [ctrl["metrics"][name]["values"][ctrl["repeats"].index(r)] for r in common]
        out[name] = paired(np.array(a), np.array(c))
    return out


def _fixed(region: Region, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = f"region:{region.id}"
    best, fixed = None, None
    for key, row in table.items():
        mean = row["metrics"].get(name, {}).get("mean", np.nan)
        if not np.isfinite(mean):
            continue
        if best is None or mean < table[best]["metrics"][name]["mean"]:
            best = key
        vs = row["vs_control"].get(name)
        significant = bool(vs) and vs["diff"] < 0 and vs["p"] < ALPHA
        if significant and (fixed is None or mean < table[fixed]["metrics"][name]["mean"]):
            fixed = key
    return {"id": region.id, "rule": region.rule, "best": best, "fixed_by": fixed}


def _pm(metric: dict[str, Any], scale: float, digits: int = 0) -> str:
    mean, ci = metric["mean"], metric["ci"]
    if not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f"±{ci * scale:.{digits}f}" if np.isfinite(ci) else "")


def _delta(vs: dict[str, Any] | None) -> str:
    if not vs or not np.isfinite(vs.get("rel", np.nan)):
        return ""
    star = "*" if np.isfinite(vs["p"]) and vs["p"] < ALPHA else ""
    return f"{100 * vs['rel']:+.0f}%{star}"


def table_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the remediation table (strings): arm, repeats, test force MAE ID and OOD in
    meV/Å (mean ± 95 % CI), each with its change against the arm's control (``*``: p < 0.05;
    ``control`` on the controls' rows), oracle calls and training seconds per repeat.
    """
    rows = []
    for row in summary["arms"]:
        m, vs = row["metrics"], row["vs_control"]
        control = row["control"] is None
        name = row["arm"] + (f" n={row['size']}" if row["size"] else "")
        rows.append(
            (
                name,
                str(len(row["repeats"])),
                _pm(m["force_mae_id"], 1000),
                "control" if control else _delta(vs.get("force_mae_id")),
                _pm(m["force_mae_ood"], 1000),
                "control" if control else _delta(vs.get("force_mae_ood")),
                f"{m['oracle_calls']['mean']:.0f}",
                f"{m['train_s']['mean']:.0f}",
            )
        )
    return rows


def region_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Per flagged region: its rule, the arm with the lowest error inside it and that error,
    its control's error there (mean force-error norm, meV/Å), and the arm that fixed it
    (significantly below its control) or ``none``.
    """
    rows = {(r["arm"] + (f" n={r['size']}" if r["size"] else "")): r for r in summary["arms"]}
    out = []
    for region in summary["regions"]:
        name = f"region:{region['id']}"
        best = rows.get(region["best"] or "")
        best_text, control_text = "–", "–"
        if best is not None:
            best_text = f"{region['best']} {1000 * best['metrics'][name]['mean']:.0f}"
            ctrl_key = (best["control"] or "") + (f" n={best['size']}" if best["size"] else "")
            ctrl = rows.get(ctrl_key)
            if ctrl is not None:
                control_text = f"{ctrl_key} {1000 * ctrl['metrics'][name]['mean']:.0f}"
        out.append((region["rule"] or region["id"], best_text, control_text,
                    region["fixed_by"] or "none"))  # fmt: skip
    return out


def probe_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Per arm and probe metric: |model − oracle| (mean ± 95 % CI over repeats, with its unit;
    relative errors in %) and its change against the arm's control (``*``: p < 0.05).
    """
    units = summary.get("probe_units", {})
    out = []
    for row in summary["arms"]:
        name = row["arm"] + (f" n={row['size']}" if row["size"] else "")
        for label, unit in units.items():
            metric = row["metrics"].get(f"probe:{label}")
            if metric is None:
                continue
            scale, shown = (100.0, "%") if unit == "" else (1.0, f" {unit}")
            value = _pm_sig(metric, scale) + (shown if np.isfinite(metric["mean"]) else "")
            change = (
                "control"
                if row["control"] is None
                else _delta(row["vs_control"].get(f"probe:{label}"))
            )
            out.append((name, label, value, change))
    return out


def _pm_sig(metric: dict[str, Any], scale: float) -> str:
    """``mean±ci`` to three significant figures (the CI to two)."""
    mean, ci = metric["mean"] * scale, metric["ci"] * scale
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3g}" + (f"±{ci:.2g}" if np.isfinite(ci) else "")
