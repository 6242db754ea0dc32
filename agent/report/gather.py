"""A run directory read into plain dicts: everything the report shows, nothing computed anew.

:func:`gather` opens the run read-only and collects, each part None when the run has not
produced it yet (the report then says "not run"):

- ``run``: campaign, state, stop reason, iteration, labels, wall time;
- ``summary``: :func:`chemgap.agent.report.summary.campaign_summary` (learning curve, regions found
  and resolved, test error per kind, the last probe run, time per step);
- ``test``: the last scored iteration's ensemble on the test set, per atom and structure
  (reference and predicted forces and energies, calibrated spread, kind, ID/OOD), from the
  ``test_residuals.npz`` its calibrate step saved and the test rows of ``data.db``;
- ``calibration``: that iteration's ``calibration.json`` (checks on the holdout and on the
  test set's ID and OOD parts);
- ``regions`` / ``splits``: the last diagnosis (``regions.json``) with each region's exemplar
  structures read from ``regions/<id>.extxyz``;
- ``probes``: the last probe run (``probes.json`` at the run's root) as written;
- ``remedies``: ``remedies/results.json`` with its display rows, or why the experiment was
  refused;
- ``meta``: the resolved spec, package versions, wall time per iteration and step.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.layout import TEST_RESIDUALS, DiagnosisLayout, IterationLayout, RunLayout
from chemgap.agent.records import CalibrationRecord, RemedyResultsRecord
from chemgap.agent.report.summary import run_status, summarize
from chemgap.agent.store import RunStore
from chemgap.common.keys import TEST_SPLIT

log = logging.getLogger(__name__)

__all__ = ["TEST_RESIDUALS", "TestSet", "gather", "read_json"]

VERSION_PACKAGES = ("torch", "mace-torch", "ase", "ray", "numpy", "e3nn")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not a JSON object."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


@dataclass(kw_only=True)
class TestSet:
    """One ensemble on the run's test set, per structure and per atom.

    Attributes:
        iteration: the iteration whose ensemble made the predictions.
        structures: the test structures (labels under ``chemgap.common.keys``), n_s of them.
        kinds: (n_s,) str, each structure's test kind.
        in_distribution: (n_s,) bool.
        n_atoms: (n_s,) int.
        system_idx: (n_a,) int, the structure of each atom (atoms concatenated in order).
        numbers: (n_a,) int, atomic numbers.
        ref_forces / pred_forces: (n_a, 3) eV/Å, reference and ensemble-mean forces.
        force_std_cal: (n_a,) eV/Å, calibrated per-atom spread sqrt(Σ_c σ_c²).
        ref_energy / pred_energy: (n_s,) eV/atom.
        energy_std_cal: (n_s,) eV/atom, calibrated spread of the energy.
    """

    iteration: int
    structures: list[Atoms]
    kinds: np.ndarray
    in_distribution: np.ndarray
    n_atoms: np.ndarray
    system_idx: np.ndarray
    numbers: np.ndarray
    ref_forces: np.ndarray
    pred_forces: np.ndarray
    force_std_cal: np.ndarray
    ref_energy: np.ndarray
    pred_energy: np.ndarray
    energy_std_cal: np.ndarray

    @property
    def atom_error(self) -> np.ndarray:
        """(n_a,) eV/Å, norm of the force error of each atom."""
        return np.linalg.norm(self.pred_forces - self.ref_forces, axis=1)

    @property
    def atom_in_distribution(self) -> np.ndarray:
        """(n_a,) bool, whether each atom's structure is in distribution."""
        return self.in_distribution[self.system_idx]


def _last_scored(root: Path) -> IterationLayout | None:
    """The newest ``iterations/NNN`` holding test residuals, or None."""
    found = [it for it in RunLayout(root).iterations() if it.test_residuals.exists()]
    return found[-1] if found else None


def _calibration(folder: IterationLayout | None) -> dict[str, Any] | None:
    """That iteration's ``calibration.json`` as written, None when missing or unreadable."""
    record = CalibrationRecord.read_optional(folder.calibration) if folder else None
    return record.to_dict() if record else None


def _test_set(store: RunStore, folder: IterationLayout | None) -> TestSet | None:
    """The test set as the ensemble of ``folder`` predicted it (None when not scored)."""
    from chemgap.common.keys import ENERGY_KEY, FORCES_KEY
    from chemgap.models.calibration import Calibration, Residuals

    if folder is None:
        return None
    test = store.structures(status="ok", split=TEST_SPLIT)
    res = Residuals.load(folder.test_residuals)
    if res.n_structures != len(test) or res.n_atoms.tolist() != [len(a) for a in test]:
        log.warning("%s does not match the run's test set; parity left out", folder.path)
        return None
    cal_payload = (_calibration(folder) or {}).get("calibration")
    cal = Calibration.from_dict(cal_payload) if cal_payload else Calibration()
    ref_forces = np.concatenate([np.asarray(a.arrays[FORCES_KEY], dtype=float) for a in test])
    ref_energy = np.array([float(a.info[ENERGY_KEY]) / len(a) for a in test])
    return TestSet(
        iteration=folder.number,
        structures=test,
        kinds=np.array([str(a.info.get("test_kind", "test")) for a in test]),
        in_distribution=np.array([bool(a.info.get("in_distribution", True)) for a in test]),
        n_atoms=res.n_atoms,
        system_idx=res.system_idx,
        numbers=res.numbers,
        ref_forces=ref_forces,
        pred_forces=ref_forces + res.force_error,
        force_std_cal=np.linalg.norm(res.force_std, axis=1) * cal.force_scales_for(res.numbers),
        ref_energy=ref_energy,
        pred_energy=ref_energy + res.energy_error / res.n_atoms,
        energy_std_cal=res.energy_std * cal.energy_scale / res.n_atoms,
    )


def _exemplars(root: Path, region: dict[str, Any]) -> list[Atoms]:
    """The exemplar structures of ``region`` (``regions/<id>.extxyz``), empty when absent."""
    from ase.io import read

    path = DiagnosisLayout(root).region_structures(region["id"])
    if not path.exists():
        return []
    try:
        images = read(path, index=":", format="extxyz")
    except Exception as exc:  # a damaged exemplar file loses the viewer, not the report
        log.warning("%s is unreadable: %s", path, exc)
        return []
    for atoms in images:
        atoms.calc = None
    return images


def _regions(root: Path) -> dict[str, Any] | None:
    """The last diagnosis: its payload, each region with its exemplar structures."""
    payload = read_json(RunLayout(root).last_diagnosis.regions_file)
    if payload is None:
        return None
    regions = []
    for r in payload.get("regions") or []:
        regions.append({**r, "structures": _exemplars(root, r)})
    return {**payload, "regions": regions}


def _remedies(root: Path, folder: Path | None) -> dict[str, Any] | None:
    """The experiment's results with display rows, or its refusal; None when none ran."""
    from chemgap.agent.layout import RemediesLayout
    from chemgap.agent.remedies import region_rows, source_rows, table_rows

    layout = RemediesLayout(folder) if folder else RunLayout(root).remedies
    record = RemedyResultsRecord.read_optional(layout.results)
    if record is not None and record.arms:
        results = record.to_dict()
        return {
            "results": results,
            "rows": table_rows(results),
            "regions": region_rows(results),
            "sources": source_rows(results),
        }
    refused = layout.refused
    if refused.exists():
        return {"refused": refused.read_text().strip()}
    return None


def _versions(root: Path) -> dict[str, Any]:
    """Package versions: those the last trained ensemble recorded, the rest installed now."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    recorded: dict[str, str] = {}
    for it in RunLayout(root).trained_iterations():
        recorded = dict((read_json(it.ensemble_file) or {}).get("versions") or recorded)
    now: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("chemgap", *VERSION_PACKAGES):
        try:
            now[name] = version(name)
        except PackageNotFoundError:
            now[name] = None
    return {"recorded": recorded, "installed": now}


def _timings(state: Any) -> list[dict[str, Any]]:
    """One row per iteration: wall seconds per step (``initial_labels`` of iteration 0)."""
    return [
        {"iteration": int(it), "steps": dict(steps)}
        for it, steps in sorted(state.timings.items(), key=lambda kv: int(kv[0]))
    ]


def gather(root: str | Path, remedies: str | Path | None = None) -> dict[str, Any]:
    """Everything the report of run ``root`` shows (see the module docstring).

    Args:
        root: a campaign's run directory.
        remedies: the experiment directory when not ``RUN/remedies``.

    Returns:
        ``{"run", "summary", "history", "test", "calibration", "regions", "probes",
        "remedies", "meta"}``; ``test`` a :class:`TestSet` or None, the others dicts (None
        where the run has not produced the part).

    Raises:
        RunDirError: ``root`` is not a readable chemgap run.
    """
    root = Path(root)
    store = RunStore.open(root)
    status = run_status(root)
    folder = _last_scored(root)
    state = store.state
    return {
        "run": {
            "campaign": state.campaign,
            "description": (store.spec.description or "").strip(),
            "path": status["path"],
            "state": status["state"],
            "stop_reason": state.stop_reason,
            "iteration": state.iteration,
            "step": state.step,
            "labels": status["labels"],
            "elapsed_s": state.elapsed_s,
            "created": state.created,
            "updated": state.updated,
            "host": state.host,
            "chemgap_version": state.chemgap_version,
        },
        "summary": summarize(store),
        "history": list(state.history),
        "test": _test_set(store, folder),
        "calibration": _calibration(folder),
        "regions": _regions(root),
        "probes": read_json(RunLayout(root).probes_file),
        "remedies": _remedies(root, Path(remedies) if remedies else None),
        "meta": {
            "spec": RunLayout(root).spec.read_text(),
            "versions": _versions(root),
            "timings": _timings(state),
            "time": status["time"],
            "cluster": read_json(RunLayout(root).cluster),
        },
    }


def finite(x: Any) -> float | None:
    """``x`` as a float, None when missing, non-numeric or not finite."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
