"""What a campaign found, read back from its run directory: the answer ``chemgap run`` ends with.

:func:`campaign_summary` gathers, without changing anything:

- the learning curve: per iteration, oracle calls (training labels and the test set's apart),
  the holdout force MAE and the test set's force and energy MAE, in and out of distribution;
- the failure regions of the last diagnosis (readable rule and machine rule, error ratio with
  its CI, q, silent flag, first and last iteration seen, how many regions were folded under
  it) and the regions resolved on the way, with the iteration each stopped being found;
- the last diagnosis' sampling check (provenance; never a failure region), apart;
- the test-set error per kind, first iteration against last;
- the last probe run (``probes.json`` at the run's root): which probes failed, per metric the
  model's value with its ensemble band against the oracle's, and the verdict;
- where the wall time went: per step, and the overhead between the steps (state writes,
  cluster records: the loop's time outside every step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chemgap.agent.diagnostics.region import shown_rule
from chemgap.agent.layout import RunLayout
from chemgap.agent.store import (
    LOOP_STEPS,
    RunStatus,
    RunStore,
    is_locked,
    label_counts,
    read_state,
)

if TYPE_CHECKING:
    from chemgap.agent.store import RunState

__all__ = [
    "CURVE_KEYS",
    "WORK_STEPS",
    "campaign_summary",
    "learning_curve",
    "probe_summary",
    "run_status",
    "summarize",
    "time_budget",
]

CURVE_KEYS = (
    "iteration",
    "oracle_calls",
    "oracle_calls_test",
    "oracle_calls_e0",
    "force_mae",
    "test_force_mae_id",
    "test_force_mae_ood",
    "test_energy_mae_id",
    "test_energy_mae_ood",
    "regions",
    "elapsed_s",
)
WORK_STEPS = (*LOOP_STEPS, "diagnose")
"""The loop's steps (the evaluate step's diagnosis timed apart); the rest is bookkeeping between
them (benchmarks/campaign_profile.py)."""


def learning_curve(state: RunState) -> list[dict[str, Any]]:
    """One row per finished iteration with :data:`CURVE_KEYS` (None where not measured)."""
    return [{k: row.get(k) for k in CURVE_KEYS} for row in state.history]


def time_budget(state: RunState) -> dict[str, Any]:
    """Wall seconds per step summed over iterations, and the overhead between the steps.

    ``overhead_s`` is the campaign's elapsed time minus the time in :data:`WORK_STEPS`
    (iteration 0's labelling counts as labelling); ``overhead_fraction`` is its share.
    """
    per_step: dict[str, float] = {}
    for steps in state.timings.values():
        for step, seconds in steps.items():
            name = "label" if step == "initial_labels" else step
            per_step[name] = per_step.get(name, 0.0) + float(seconds)
    work = sum(per_step.get(s, 0.0) for s in WORK_STEPS)
    total = float(state.elapsed_s)
    overhead = max(total - work, 0.0)
    return {
        "elapsed_s": total,
        "per_step_s": per_step,
        "overhead_s": overhead,
        "overhead_fraction": overhead / total if total > 0 else None,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _region_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r.get("id"),
        "rule": shown_rule(r),
        "machine_rule": r.get("machine_rule") or r.get("rule"),
        "level": r.get("level") or None,
        "folded": len(r.get("folded") or []),
        "ratio": r.get("ratio"),
        "ratio_ci": r.get("ratio_ci"),
        "q_value": r.get("q_value"),
        "silent": bool(r.get("silent")),
        "first_seen": r.get("first_seen"),
        "last_seen": r.get("last_seen"),
        "enriched": list(r.get("enriched") or []),
    }


def _regions_history(
    layout: RunLayout,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Every region any iteration reported (last report wins), and those resolved with when."""
    seen: dict[str, dict[str, Any]] = {}
    resolved = []
    for folder in layout.iterations():
        payload = _read_json(folder.regions_file)
        if payload is None:
            continue
        for r in payload.get("regions", []):
            seen[r["id"]] = _region_row(r)
        gone = payload.get("resolved_regions") or [
            {"id": rid} for rid in payload.get("resolved", [])
        ]
        for r in gone:
            if r.get("status", "resolved") != "resolved":  # not re-found is not resolved
                continue
            row = {**seen.get(r["id"], {"id": r["id"], "rule": None}), **r}
            row["resolved_at"] = folder.number
            resolved.append(row)
    return seen, resolved


def _kind_errors(state: RunState) -> list[dict[str, Any]]:
    rows = [h for h in state.history if h.get("test")]
    if not rows:
        return []
    first, last = rows[0], rows[-1]
    out = []
    for kind, rep in (first["test"].get("kinds") or {}).items():
        end = (last["test"].get("kinds") or {}).get(kind) or {}
        out.append(
            {
                "kind": kind,
                "first_iteration": first["iteration"],
                "last_iteration": last["iteration"],
                "force_mae_first": (rep or {}).get("force_mae"),
                "force_mae_last": end.get("force_mae"),
                "n_structures": (rep or {}).get("n_structures"),
            }
        )
    return out


def summarize(store: RunStore) -> dict[str, Any]:
    """What the campaign of ``store`` found so far (:func:`campaign_summary`)."""
    return campaign_summary(store.root, store.state)


def campaign_summary(root: Path, state: RunState) -> dict[str, Any]:
    """What the campaign in ``root`` found (see the module docstring).

    Args:
        root: the run directory.
        state: its state.

    Returns:
        ``{"learning_curve", "regions", "resolved", "provenance", "quality", "test_by_kind",
        "probes", "time"}`` (``provenance``: the last diagnosis' sampling check, empty before
        it existed; ``quality``: the model's in-distribution quality at that diagnosis, its
        regions tentative when ``ready`` is False;
        ``probes``: :func:`probe_summary`).
    """
    layout = RunLayout(root)
    payload = _read_json(layout.last_diagnosis.regions_file) or {}
    _, resolved = _regions_history(layout)
    return {
        "learning_curve": learning_curve(state),
        "regions": [_region_row(r) for r in payload.get("regions", [])],
        "resolved": resolved,
        "provenance": list(payload.get("provenance") or []),
        "quality": payload.get("quality"),
        "test_by_kind": _kind_errors(state),
        "probes": probe_summary(root),
        "time": time_budget(state),
    }


def probe_summary(root: Path) -> dict[str, Any] | None:
    """The last probe run of the campaign in ``root``, or None when none ran.

    Returns:
        ``{"iteration", "run", "passed", "failed", "error", "seconds", "rows"}``: probes run,
        whether all passed, the names that failed (a bound, or raised), why the run could not
        start (else None), its wall time (s) and the display rows
        (:func:`chemgap.agent.probes.results.report_rows`).
    """
    from chemgap.agent.probes.results import report_rows

    payload = _read_json(RunLayout(root).probes_file)
    if payload is None:
        return None
    return {
        "iteration": (payload.get("meta") or {}).get("iteration", payload.get("iteration")),
        "run": len(payload.get("probes") or []),
        "passed": bool(payload.get("passed")),
        "failed": list(payload.get("failed") or []),
        "error": payload.get("error"),
        "seconds": payload.get("seconds"),
        "rows": report_rows(payload),
    }


def run_status(root: str | Path) -> dict[str, Any]:
    """What ``chemgap status`` reports, read without changing anything in the directory.

    Keys: ``campaign``, ``state`` (running | done | failed | interrupted), ``iteration``,
    ``step``, ``labels`` (``{"ok": n, "failed": n}``), ``regions`` (count; None with
    ``regions_unreadable`` saying why when regions.json cannot be read), ``stop_reason``,
    ``path``, ``updated``, ``history``, ``learning_curve`` (per iteration: oracle calls,
    holdout and test-set errors in and out of distribution), ``test_errors`` (the last
    iteration's test-set errors per part, kind and element), ``model_quality`` and
    ``regions_tentative`` (the last iteration's in-distribution quality against its target;
    its regions are tentative when it misses it), ``probes`` (the last probe run,
    :func:`probe_summary`; None before one) and ``time`` (wall time
    per step and the overhead between the steps); see this module's docstring.
    """
    root = Path(root)
    state = read_state(root)
    status = state.status
    if status == RunStatus.RUNNING and not is_locked(root):
        status = RunStatus.INTERRUPTED  # killed without a chance to say so: resumable
    regions: int | None = 0
    unreadable = None
    regions_path = RunLayout(root).last_diagnosis.regions_file
    if regions_path.exists():
        try:
            payload = json.loads(regions_path.read_text())
            regions = len(payload["regions"])
        except (json.JSONDecodeError, OSError, UnicodeDecodeError, KeyError, TypeError) as exc:
            regions, unreadable = None, f"{regions_path} is unreadable ({type(exc).__name__})"
    return {
        "campaign": state.campaign,
        "state": str(status),
        "iteration": state.iteration,
        "step": state.step,
        "labels": label_counts(RunLayout(root).db),
        "regions": regions,
        "regions_unreadable": unreadable,
        "stop_reason": state.stop_reason,
        "path": str(root.resolve()),
        "updated": state.updated,
        "history": state.history,
        "learning_curve": learning_curve(state),
        "test_errors": state.history[-1].get("test") if state.history else None,
        "probes": probe_summary(root),
        "model_quality": state.history[-1].get("model_quality") if state.history else None,
        "regions_tentative": bool(state.history and state.history[-1].get("regions_tentative")),
        "time": time_budget(state),
    }
