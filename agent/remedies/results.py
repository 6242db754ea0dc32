"""An experiment's numbers: per arm mean ± 95 % CI over repeats, paired differences to the
controls, and which arm fixed each flagged region.

Each cell is scored on the *scoring* part of the run's fixed test set (its in-distribution and
out-of-distribution structures, per kind), on the base holdout, and inside every failure region
found by diagnosing the base ensemble on the *guidance* part (the mean force-error norm of the
scoring atoms the region's rule selects, eV/Å; :mod:`chemgap.agent.remedies.guidance`): the
structures that found the regions never score an arm. A region selecting no atom of the scoring
part is listed as not scorable. Repeats
share their seeds across arms, so an arm is compared with its control repeat by repeat: the
mean paired difference with a Student-t 95 % interval (Student 1908; NaN below two repeats) and
the two-sided p of an exact paired sign-flip permutation test of that mean (Fisher 1935, ch. 21;
Good, *Permutation Tests*, 2005): under "the arm changes nothing" each repeat's difference is
as likely negated, so p is the fraction of the 2^R sign patterns whose mean difference is at
least as far from zero as the one observed. It needs no normality and never reads 0: its
smallest value is 2 / 2^R (R repeats), 0.25 for 3 repeats and 0.031 for 6, which is why an
experiment needs enough repeats before any difference can count (:func:`min_p_value`).

The p-values of one table are adjusted together by Holm's step-down method (Holm 1979;
family-wise error ``ALPHA``): the arms x test-set metrics of the arm table, the arms x regions of
the region table, the arms x probe metrics of the probe table, and the arms x the remaining
metrics (energies, holdout) apart. A difference counts (``*``, and a region *fixed*) only when
its adjusted p is below ``ALPHA``. A region counts as *fixed* by the arm with the lowest error
inside it among those whose paired difference to their control there is negative and counts.

``cell_size`` is compared twice: with ``random`` at equal oracle calls (``vs_control``, the
arm table) and with ``random_atoms`` at equal oracle atoms (``vs_equal_atoms``,
:func:`cost_rows`); both comparisons are in the Holm families.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.region import Region, as_region, shown_rule
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
    for key in COST_METRICS:
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


EXACT_MAX_REPEATS = 16  # up to 2^16 sign patterns enumerated; beyond, a seeded Monte Carlo
MONTE_CARLO_DRAWS = 20_000
COST_METRICS = ("oracle_calls", "oracle_s", "oracle_atoms", "train_s", "n_train")


def sign_flip_p(differences: np.ndarray) -> float:
    """Two-sided p of the exact paired sign-flip permutation test of a mean difference.

    Args:
        differences: (R,) paired differences arm − control, one per repeat (finite).

    Returns:
        The fraction of the 2^R sign patterns (the observed one included) whose mean is at
        least as far from zero as the observed mean: at least 2 / 2^R, 1.0 when every difference
        is zero; NaN without differences. Beyond :data:`EXACT_MAX_REPEATS` repeats a seeded
        Monte Carlo estimate (b + 1) / (m + 1) (Phipson & Smyth 2010), never 0 either.
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    if observed == 0:
        return 1.0
    if n <= EXACT_MAX_REPEATS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        means = np.abs(signs @ d) / n
        return float(np.mean(means >= observed * (1 - 1e-12)))
    rng = np.random.default_rng(0)
    signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_DRAWS, n))
    hits = int(np.sum(np.abs(signs @ d) / n >= observed * (1 - 1e-12)))
    return (hits + 1) / (MONTE_CARLO_DRAWS + 1)


def min_p_value(repeats: int) -> float:
    """The smallest p :func:`sign_flip_p` can give with ``repeats`` paired repeats."""
    return 1.0 if repeats < 1 else min(1.0, 2.0 / 2**repeats)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Stat. 6, 65, 1979), same order;
    NaN entries are left out of the family and stay NaN.

    p_adj(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)) over the m finite p-values in ascending
    order: rejecting every p_adj < alpha controls the family-wise error rate at alpha under any
    dependence between the tests.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def paired(arm: np.ndarray, control: np.ndarray) -> dict[str, float]:
    """Paired difference arm − control over repeats: mean, its Student-t 95 % CI half-width,
    relative change (mean difference / control mean) and the two-sided exact sign-flip p
    (:func:`sign_flip_p`; ``p_adj``, Holm's, is added by :func:`summarise`).
    """
    a, c = np.asarray(arm, dtype=float), np.asarray(control, dtype=float)
    ok = np.isfinite(a) & np.isfinite(c)
    d = a[ok] - c[ok]
    mean, half = mean_ci(d)
    p = sign_flip_p(d) if len(d) >= 2 else float("nan")
    base = float(np.mean(c[ok])) if ok.any() else float("nan")
    rel = mean / base if base else float("nan")
    return {"diff": mean, "diff_ci": half, "rel": rel, "p": p, "n": int(ok.sum())}


def family(metric: str) -> str:
    """The table a metric's comparisons are adjusted in: ``regions``, ``probes``, ``test``
    (the arm table's test-set force errors) or ``other``.
    """
    if metric.startswith("region:"):
        return "regions"
    if metric.startswith("probe:"):
        return "probes"
    return "test" if metric in ("force_mae_id", "force_mae_ood") else "other"


def adjust(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Holm-adjust every row's ``vs_control`` and ``vs_equal_atoms`` p-values within each
    :func:`family` (in place:
    each comparison gains ``p_adj``); returns per family its size ``m`` and the smallest
    adjusted p its repeats allow.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for row in table.values():
        for key in ("vs_control", "vs_equal_atoms"):
            for name, vs in (row.get(key) or {}).items():
                found.setdefault(family(name), []).append(vs)
    out = {}
    for fam, comparisons in found.items():
        for vs, adj in zip(comparisons, holm([vs["p"] for vs in comparisons]), strict=True):
            vs["p_adj"] = adj
        m = sum(np.isfinite(vs["p"]) for vs in comparisons)
        fewest = min((vs["n"] for vs in comparisons), default=0)
        out[fam] = {"m": int(m), "min_p_adj": min(1.0, m * min_p_value(fewest)) if m else None}
    return out


def counts(vs: Mapping[str, Any] | None) -> bool:
    """Whether a comparison counts: its Holm-adjusted p is below :data:`ALPHA`."""
    p = (vs or {}).get("p_adj", float("nan"))
    return bool(np.isfinite(p) and p < ALPHA)


def _group_key(cell: dict[str, Any]) -> str:
    return cell["arm"] + (f" n={cell['size']}" if cell.get("size") else "")


def summarise(
    cells: list[dict[str, Any]],
    arms: list[Arm],
    regions: Sequence[Region | Mapping[str, Any]],
    masks: dict[str, list[bool]],
    settings: dict[str, Any],
    *,
    not_scorable: Mapping[str, str] | None = None,
    test_split: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The experiment's summary (``results.json``).

    ``regions`` are those found on the guidance part
    (:class:`~chemgap.agent.diagnostics.region.Region`; a ``regions.json`` dict is read as
    one); those with a mask in ``masks`` (over the scoring part's atoms) are scored, the others
    are listed as not scorable, with the reason ``not_scorable`` gives.

    Returns:
        ``{"settings", "test_split", "arms": [{"arm", "size", "kind", "control",
        "cost_control", "repeats", "metrics": {name: {"mean", "ci", "values"}}, "vs_control":
        {name: paired()}, "vs_equal_atoms": {name: paired()}}], "regions": [{"id", "rule",
        "scorable", "fixed_by", "best", "why"}], "metric_names"}``.
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
            "sources": label_sources(members),
            "arm": members[0]["arm"],
            "size": members[0].get("size"),
            "kind": str(kinds[members[0]["arm"]].kind),
            "control": kinds[members[0]["arm"]].control,
            "cost_control": kinds[members[0]["arm"]].cost_control,
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
        row["vs_control"] = _versus(row, table, row["control"])
        if row["cost_control"]:
            row["vs_equal_atoms"] = _versus(row, table, row["cost_control"])
    families = adjust(table)
    why = dict(not_scorable or {})
    out_regions = []
    for r in (as_region(r) for r in regions):
        if r.id in masks:
            out_regions.append(_fixed(r, table) | {"scorable": True})
        else:
            reason = why.get(r.id, "its rule selects no atom of the scoring part")
            out_regions.append(
                {"id": r.id, "rule": shown_rule(r), "best": None, "fixed_by": None,
                 "scorable": False, "why": reason}
            )  # fmt: skip
    return {
        "settings": settings,
        "test_split": dict(test_split) if test_split is not None else None,
        "arms": list(table.values()),
        "regions": out_regions,
        "metric_names": {n: text for n, (_, text) in METRICS.items()},
        "probe_units": units,
        "comparisons": {
            "test": "exact paired sign-flip permutation test, two-sided",
            "correction": f"Holm within each table (family-wise error {ALPHA:g})",
            "families": families,
        },
    }


def label_sources(cells: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Where an arm's labels came from, per repeat on average (``{"pool frames": 12.0,
    "rattled pool frames": 4.0}``; empty for a model arm or cells written before).
    """
    total: dict[str, float] = {}
    for cell in cells:
        for name, n in (cell.get("sources") or {}).items():
            total[name] = total.get(name, 0.0) + float(n)
    return {name: n / len(cells) for name, n in total.items()} if cells else {}


def source_rows(summary: Mapping[str, Any]) -> list[str]:
    """One line per data arm: where its labels came from, per repeat."""
    out = []
    for row in summary["arms"]:
        sources = row.get("sources") or {}
        if sources:
            name = row["arm"] + (f" n={row['size']}" if row.get("size") else "")
            parts = ", ".join(f"{n:g} {what}" for what, n in sources.items())
            out.append(f"{name}: {parts}")
    return out


def comparison_caption(summary: Mapping[str, Any]) -> str:
    """What Δ and * mean in the experiment's tables, and what its repeats allow."""
    repeats = int(summary["settings"].get("repeats", 0))
    text = (
        "Δ: change against the arm's control (random for data arms, baseline for model "
        "arms), paired by repeat · *: exact sign-flip test, Holm-adjusted p < "
        f"{ALPHA:g} · calls, atoms: oracle calls per repeat and the atoms in them"
    )
    fam = (summary.get("comparisons") or {}).get("families", {}).get("test") or {}
    floor = fam.get("min_p_adj")
    if floor is not None and floor >= ALPHA:
        text += (
            f" · with {repeats} repeats no difference can reach it (smallest p "
            f"{min_p_value(repeats):.3g}, adjusted over {fam['m']}: {floor:.3g}); "
            "more repeats: remediation.repeats (--repeats)"
        )
    return text


def _stats(values: list[float]) -> dict[str, Any]:
    mean, ci = mean_ci(np.array(values))
    return {"mean": mean, "ci": ci, "values": values}


def _versus(
    row: dict[str, Any], table: dict[str, dict[str, Any]], control: str | None
) -> dict[str, Any]:
    if control is None:
        return {}
    key = control + (f" n={row['size']}" if row["size"] else "")
    ctrl = table.get(key)
    if ctrl is None:
        return {}
    common = sorted(set(row["repeats"]) & set(ctrl["repeats"]))
    out = {}
    for name, m in row["metrics"].items():
        if name in COST_METRICS:
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
        significant = bool(vs) and vs["diff"] < 0 and counts(vs)
        if significant and (fixed is None or mean < table[fixed]["metrics"][name]["mean"]):
            fixed = key
    return {"id": region.id, "rule": shown_rule(region), "best": best, "fixed_by": fixed}


def _pm(metric: dict[str, Any], scale: float, digits: int = 0) -> str:
    mean, ci = metric["mean"], metric["ci"]
    if not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f"±{ci * scale:.{digits}f}" if np.isfinite(ci) else "")


def _delta(vs: dict[str, Any] | None) -> str:
    if not vs or not np.isfinite(vs.get("rel", np.nan)):
        return ""
    star = "*" if counts(vs) else ""
    return f"{100 * vs['rel']:+.0f}%{star}"


def table_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of the remediation table (strings): arm, repeats, test force MAE ID and OOD in
    meV/Å (mean ± 95 % CI), each with its change against the arm's control (``*``: its
    Holm-adjusted p < ``ALPHA``; ``control`` on the controls' rows), and per repeat the oracle
    calls and the atoms in them (the oracle's cost grows with the atoms of a call).
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
                _atoms(m.get("oracle_atoms")),
            )
        )
    return rows


def _atoms(metric: Mapping[str, Any] | None) -> str:
    """Mean oracle atoms per repeat; "–" for a result written before they were counted."""
    mean = (metric or {}).get("mean", float("nan"))
    return f"{mean:.0f}" if np.isfinite(mean) and mean > 0 else "–"


NOT_SCORABLE = "not scorable"


def region_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Per region found on the guidance part: its rule, the arm with the lowest error inside it
    on the scoring part and that error, its control's error there (mean force-error norm,
    meV/Å), and the arm that fixed it (significantly below its control) or ``none``; a region
    with no atom on the scoring part reads ``not scorable`` (:func:`unscorable_rows` says why).
    """
    rows = {(r["arm"] + (f" n={r['size']}" if r["size"] else "")): r for r in summary["arms"]}
    out = []
    for region in summary["regions"]:
        if region.get("scorable") is False:
            out.append((region["rule"] or region["id"], NOT_SCORABLE, "–", "–"))
            continue
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
    relative errors in %) and its change against the arm's control (``*``: Holm-adjusted
    p < ``ALPHA``).
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


def unscorable_rows(summary: Mapping[str, Any]) -> list[str]:
    """One line per region found on the guidance part that cannot be scored: why."""
    return [
        f"{r['rule'] or r['id']}: {r.get('why') or 'no atom on the scoring part'}"
        for r in summary.get("regions") or []
        if r.get("scorable") is False
    ]


def _ids(ids: Sequence[Any], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > most else "")


def _part(part: Mapping[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in (part.get("per_kind") or {}).items())
    return f"{part.get('n', 0)} structures ({kinds}; data.db ids {_ids(part.get('db_ids') or [])})"


def split_caption(summary: Mapping[str, Any]) -> str:
    """Which test structures scored the arms and which guided them, in one paragraph."""
    split = summary.get("test_split")
    iteration = (summary.get("settings") or {}).get("iteration")
    if not split:
        return (
            "Scored on the whole test set, on which the regions were also found (an "
            "experiment written before chemgap split the test set into guidance and scoring "
            "parts)."
        )
    return (
        f"Scored on the scoring part of the run's test set: {_part(split['scoring'])}. The "
        f"regions that guide the region arm were found by diagnosing iteration {iteration}'s "
        f"ensemble on the guidance part: {_part(split['guidance'])}, which scores no arm "
        f"(split stratified by test kind, seed {split.get('seed')}, guidance fraction "
        f"{split.get('fraction')}; {split.get('file', 'split.json')})."
    )


def cost_rows(summary: Mapping[str, Any]) -> list[str]:
    """One line per arm compared at equal oracle atoms (``cell_size``): its atoms and calls,
    its control's, and the change in test force MAE ID and OOD against that control
    (``*``: Holm-adjusted p < ``ALPHA``).
    """
    rows = {(r["arm"] + (f" n={r['size']}" if r.get("size") else "")): r for r in summary["arms"]}
    out = []
    for row in summary["arms"]:
        control = row.get("cost_control")
        vs = row.get("vs_equal_atoms") or {}
        if not control:
            continue
        key = control + (f" n={row['size']}" if row.get("size") else "")
        ctrl = rows.get(key)
        if ctrl is None:
            continue

        def cost(r: Mapping[str, Any]) -> str:
            m = r["metrics"]
            return f"{_atoms(m.get('oracle_atoms'))} atoms in {m['oracle_calls']['mean']:.0f} calls"

        out.append(
            f"{row['arm']} ({cost(row)}) against {key} ({cost(ctrl)}) at equal oracle atoms: "
            f"Δ ID {_delta(vs.get('force_mae_id')) or '–'}, "
            f"Δ OOD {_delta(vs.get('force_mae_ood')) or '–'}"
        )
    return out
