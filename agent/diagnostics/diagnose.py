"""Diagnosis of one ensemble on labelled data: errors, uncertainty, features, splits, regions.

:func:`diagnose` is what the campaign loop calls after every iteration (no training inside):

1. the ensemble predicts every labelled structure; the errors are those of
   :mod:`chemgap.common.metrics`: per-atom force error norm |F_pred - F_ref| (eV/Å), per-structure
   energy error per atom (eV/atom), the overall :class:`~chemgap.common.metrics.ErrorReport`,
   and the calibrated per-atom force std (eV/Å) for every structure;
2. chemical features (:mod:`chemgap.agent.diagnostics.features`);
3. the given ensemble scored on both sides of every configured split
   (:func:`chemgap.agent.diagnostics.splits.evaluate_splits`);
4. failure regions (:mod:`chemgap.agent.diagnostics.regions`) with their exemplar
   structures, and the iteration they were first and last seen (from ``previous``).

:func:`write_regions` stores the result as ``regions.json`` (an object whose ``"regions"`` list
``chemgap status`` counts) and ``regions/<id>.extxyz``; :func:`load_regions` reads it back.
:func:`run_diagnosis` is the library face of ``chemgap diagnose`` (a run directory, or a model
directory plus a labelled file), optionally with the split study
(:func:`~chemgap.agent.diagnostics.splits.run_splits`, which trains one ensemble per split).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics import REGIONS_DIR, REGIONS_FILE
from chemgap.agent.diagnostics.features import Features, compute_features
from chemgap.agent.diagnostics.regions import Region, find_regions, region_masks
from chemgap.agent.diagnostics.splits import SplitResult, evaluate_splits, run_splits
from chemgap.agent.errors import BadInput
from chemgap.agent.structio import read_structures
from chemgap.campaigns.spec import DiagnosticsConfig
from chemgap.common.keys import reference_energies, reference_forces
from chemgap.common.metrics import (
    ErrorReport,
    breakdown,
    energy_errors_per_atom,
    force_error_norms,
    score,
)

if TYPE_CHECKING:
    from chemgap.common.tasks import Executor
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.contract import EnsembleModel
    from chemgap.models.predict import Prediction

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1


@dataclass(kw_only=True)
class DiagnosisResult:
    """What a diagnosis found.

    Attributes:
        regions: significant failure regions, most severe first.
        splits: per-split errors (:class:`SplitResult`), side by side.
        baseline: overall numbers, each named after its :mod:`chemgap.common.metrics` metric:
            n_structures, n_atoms; force_mae (``force_mae``: mean over atoms and Cartesian
            components of |F_pred - F_ref|, eV/Å); force_error_mean (``force_error_norm_mean``:
            mean over atoms of the error norm, eV/Å; the regions' baseline);
            energy_mae_per_atom (``energy_mae_per_atom``, eV/atom); uncertainty_mean (mean
            calibrated per-atom force std, eV/Å); calibrated; spearman_uncertainty_error
            (Spearman rank correlation of uncertainty and error norm over atoms); per_element
            {symbol: {n_atoms, force_error_mean, force_mae, uncertainty_mean}}, the same metrics
            restricted to that element's atoms.
        iteration: the campaign iteration diagnosed (None outside a run).
        seed: the seed of every random choice.
        n_tested: candidate rules tested (the Benjamini-Hochberg family size).
        resolved: ids of ``previous`` regions not found any more.
        exemplars: region id -> annotated exemplar structures.
        features: the feature table.
        atom_error: (n_atoms,) force error norms |F_pred - F_ref|, eV/Å.
        atom_uncertainty: (n_atoms,) calibrated per-atom force std, eV/Å.
        energy_error: (n_struct,) signed (E_pred - E_ref) / n_atoms, eV/atom.
        wall_s: how long the diagnosis took, s.
    """

    regions: list[Region]
    splits: list[SplitResult]
    baseline: dict[str, Any]
    iteration: int | None = None
    seed: int = 0
    n_tested: int = 0
    resolved: list[str] = field(default_factory=list)
    exemplars: dict[str, list[Atoms]] = field(default_factory=dict)
    features: Features | None = None
    atom_error: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    energy_error: np.ndarray | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``regions.json`` payload (JSON-safe: NaN written as null)."""
        return _json_safe(
            {
                "format": PAYLOAD_VERSION,
                "created": time.time(),
                "iteration": self.iteration,
                "seed": self.seed,
                "baseline": self.baseline,
                "n_tested": self.n_tested,
                "resolved": self.resolved,
                "regions": [r.to_dict() for r in self.regions],
                "splits": [s.to_dict() for s in self.splits],
                "wall_s": self.wall_s,
            }
        )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def diagnose(
    structures_labelled: list[Atoms],
    ensemble: EnsembleModel,
    cfg: DiagnosticsConfig,
    *,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    iteration: int | None = None,
    previous: list[Region] | None = None,
    features: Features | None = None,
) -> DiagnosisResult:
    """Diagnose ``ensemble`` on labelled structures: errors, features, splits, failure regions.

    Args:
        structures_labelled: structures with labelled energies and forces; others (status not
            'ok', no labels) are skipped.
        ensemble: the model (:class:`chemgap.models.contract.EnsembleModel`).
        cfg: the ``diagnostics`` section of the spec.
        seed: seed of every random choice (bootstrap, tree halves, splits, KMeans).
        rng: overrides the generator derived from ``seed`` (regions only).
        iteration: the campaign iteration (sets first/last seen).
        previous: the regions of the last diagnosis (for first seen and ``resolved``).
        features: a precomputed feature table of the same structures (else computed).

    Returns:
        :class:`DiagnosisResult`.
    """
    from chemgap.models.data import usable

    t0 = time.perf_counter()
    structures = usable(list(structures_labelled))
    if len(structures) < 2:
        raise BadInput(
            f"diagnose: need at least 2 labelled structures (got {len(structures)} usable)"
        )
    rng = rng if rng is not None else np.random.default_rng(seed)
    pred = ensemble.predict(structures)
    atom_error = force_error_norms(pred.forces_mean, reference_forces(structures))
    energy_error = energy_errors_per_atom(
        pred.energy_mean, reference_energies(structures), np.array([len(a) for a in structures])
    )
    uncertainty = np.asarray(pred.force_std_atom_cal, dtype=float)

    if features is None:
        features = compute_features(
            structures, environment_classes=cfg.environment_classes, seed=seed
        )
    if features.n_atoms != len(atom_error):
        raise ValueError("features: table does not match the structures (atom count differs)")

    regions, n_tested = find_regions(features, atom_error, uncertainty, cfg, rng=rng)
    exemplars = _exemplars(regions, features, structures, pred, atom_error, cfg.exemplars)
    resolved = _track(regions, previous, iteration)
    splits = evaluate_splits(structures, features, cfg, prediction=pred, seed=seed)
    result = DiagnosisResult(
        regions=regions,
        splits=splits,
        baseline=_baseline(
            score(pred, structures), features, atom_error, uncertainty, pred.calibrated
        ),
        iteration=iteration,
        seed=seed,
        n_tested=n_tested,
        resolved=resolved,
        exemplars=exemplars,
        features=features,
        atom_error=atom_error,
        atom_uncertainty=uncertainty,
        energy_error=energy_error,
    )
    result.wall_s = time.perf_counter() - t0
    log.info(
        "diagnosis: %d structures, force MAE %.4g eV/Å, %d regions (%d rules tested) in %.1f s",
        len(structures),
        result.baseline["force_mae"],
        len(regions),
        n_tested,
        result.wall_s,
    )
    return result


def _track(
    regions: list[Region], previous: list[Region] | None, iteration: int | None
) -> list[str]:
    """Set first/last seen of ``regions`` from ``previous``; the ids of regions gone since."""
    if iteration is None and not previous:
        return []
    before = {r.id: r for r in previous or []}
    for r in regions:
        old = before.get(r.id)
        r.first_seen = old.first_seen if old and old.first_seen is not None else iteration
        r.last_seen = iteration
    now = {r.id for r in regions}
    return [rid for rid in before if rid not in now]


def _baseline(
    report: ErrorReport,
    features: Features,
    atom_error: np.ndarray,
    uncertainty: np.ndarray,
    calibrated: bool,
) -> dict[str, Any]:
    """The ``baseline`` of a :class:`DiagnosisResult`: overall and per-element figures.

    Args:
        report: :func:`chemgap.common.metrics.score` of the prediction on all structures.
        features: the feature table (its ``element`` column groups the atoms).
        atom_error: (n_atoms,) :func:`~chemgap.common.metrics.force_error_norms`, eV/Å.
        uncertainty: (n_atoms,) calibrated per-atom force std, eV/Å.
        calibrated: whether ``uncertainty`` comes from a stored calibration.

    Returns:
        The dict described under :class:`DiagnosisResult` ``baseline``.
    """
    from scipy.stats import spearmanr

    symbols = features.atom["element"].astype(str)
    elements, counts = np.unique(symbols, return_counts=True)
    error_norm = breakdown(atom_error, symbols)
    unc = breakdown(uncertainty, symbols)
    per_element = {
        str(el): {
            "n_atoms": int(n),
            "force_error_mean": error_norm[str(el)],
            "force_mae": report.force_mae_per_element[str(el)],
            "uncertainty_mean": unc[str(el)],
        }
        for el, n in zip(elements, counts, strict=True)
    }
    rho = spearmanr(uncertainty, atom_error).statistic if len(atom_error) > 2 else float("nan")
    return {
        "n_structures": report.n_structures,
        "n_atoms": report.n_atoms,
        "force_mae": report.force_mae,
        "force_error_mean": report.force_error_norm_mean,
        "energy_mae_per_atom": report.energy_mae_per_atom,
        "uncertainty_mean": float(uncertainty.mean()),
        "calibrated": bool(calibrated),
        "spearman_uncertainty_error": float(rho),
        "per_element": per_element,
    }


def _exemplars(
    regions: list[Region],
    features: Features,
    structures: list[Atoms],
    pred: Prediction,
    atom_error: np.ndarray,
    k: int,
) -> dict[str, list[Atoms]]:
    """Per region, the ``k`` structures whose region atoms have the highest mean error."""
    out: dict[str, list[Atoms]] = {}
    if k <= 0:
        return out
    masks = region_masks(regions, features)
    sidx = features.system_idx
    n = features.n_struct
    for r in regions:
        m = masks[r.id]
        sums = np.bincount(sidx[m], weights=atom_error[m], minlength=n)
        counts = np.bincount(sidx[m], minlength=n)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        top = [int(i) for i in np.argsort(-means)[:k] if counts[i] > 0]
        images, info = [], []
        for frame, i in enumerate(top):
            sl = sidx == i
            a = structures[i].copy()
            a.calc = None
            a.arrays["in_region"] = m[sl].astype(bool)
            a.arrays["force_error"] = atom_error[sl]
            a.arrays["force_std_cal"] = pred.force_std_atom_cal[sl]
            a.arrays["pred_forces"] = pred.forces_mean[sl]
            a.info["region"] = r.id
            a.info["region_rule"] = r.rule
            a.info["region_mean_error"] = float(means[i])
            a.info["structure_index"] = i
            images.append(a)
            info.append(
                {
                    "index": i,
                    "db_id": structures[i].info.get("db_id"),
                    "formula": structures[i].get_chemical_formula(),
                    "n_atoms": len(structures[i]),
                    "atoms_in_region": int(counts[i]),
                    "mean_error": float(means[i]),
                    "file": f"{REGIONS_DIR}/{r.id}.extxyz",
                    "frame": frame,
                }
            )
        r.exemplars = info
        out[r.id] = images
    return out


# --------------------------------------------------------------------------- storage
def write_regions(result: DiagnosisResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/regions.json`` and ``out_dir/regions/<id>.extxyz``; returns the json path.

    The regions folder is replaced as a whole, so stale exemplars of resolved regions go.
    """
    import ase.io

    from chemgap.agent.store import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / REGIONS_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for rid, images in result.exemplars.items():
        if images:
            ase.io.write(folder / f"{rid}.extxyz", images, format="extxyz")
    path = out / REGIONS_FILE
    atomic_write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
    return path


def load_regions(path: str | Path) -> tuple[list[Region], dict[str, Any]]:
    """Regions and the whole payload from ``regions.json`` (or a folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / REGIONS_FILE
    if not p.exists():
        raise BadInput(f"regions: {p} does not exist (run 'chemgap diagnose' first)")
    try:
        payload = json.loads(p.read_text())
        regions = [Region.from_dict(_restore_nan(d)) for d in payload["regions"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise BadInput(f"regions: {p} is not a chemgap regions file ({exc})") from None
    return regions, payload


def _restore_nan(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    for k in ("uncertainty_mean", "uncertainty_ratio", "error_to_uncertainty", "ratio"):
        if out.get(k) is None:
            out[k] = float("nan")
    for k in ("ci", "ratio_ci"):
        out[k] = [_nan(v) for v in out.get(k) or [None, None]]
    return out


def latest_models(run: str | Path) -> tuple[Path, int]:
    """The newest ``iterations/NNN/models`` holding an ``ensemble.json``, and NNN."""
    root = Path(run)
    found = sorted(
        (int(p.parent.parent.name), p.parent)
        for p in root.glob("iterations/*/models/ensemble.json")
        if p.parent.parent.name.isdigit()
    )
    if not found:
        raise BadInput(
            f"RUN: {root} has no trained ensemble (no iterations/*/models/ensemble.json); "
            "use --models MODEL_DIR --data LABELLED"
        )
    iteration, path = found[-1]
    return path, iteration


@dataclass(kw_only=True)
class DiagnosisRun:
    """What :func:`run_diagnosis` did: the result, where it was written, the models used."""

    result: DiagnosisResult
    regions_path: Path
    models: Path
    trained_splits: list[SplitResult] = field(default_factory=list)


@dataclass(kw_only=True)
class _Inputs:
    """What a diagnosis reads, from a run directory or from a model directory and a file."""

    structures: list[Atoms]
    model_dir: Path
    cfg: DiagnosticsConfig
    seed: int
    out_dir: Path
    model_cfg: ModelConfig | None = None
    ens_cfg: EnsembleConfig | None = None
    extra_out: Path | None = None
    iteration: int | None = None
    previous: list[Region] | None = None


def _run_inputs(
    run: str | Path,
    out: str | Path | None,
    cfg: DiagnosticsConfig | None,
    seed: int | None,
    model_cfg: ModelConfig | None,
    ens_cfg: EnsembleConfig | None,
) -> _Inputs:
    """Run mode: the labelled rows, newest models, spec settings and previous regions of RUN."""
    from chemgap.agent.store import RunStore

    store = RunStore.open(run)
    model_dir, iteration = latest_models(run)
    previous: list[Region] | None = None
    if (Path(run) / REGIONS_FILE).exists():
        try:
            previous, _ = load_regions(Path(run) / REGIONS_FILE)
        except BadInput:
            log.warning("ignoring unreadable %s", Path(run) / REGIONS_FILE)
    return _Inputs(
        structures=store.structures(status="ok"),
        model_dir=model_dir,
        cfg=cfg or store.spec.diagnostics,
        seed=store.spec.seed if seed is None else seed,
        out_dir=Path(out) if out is not None else Path(run),
        model_cfg=model_cfg or store.spec.model,
        ens_cfg=ens_cfg or store.spec.ensemble,
        extra_out=store.iteration_dir(iteration) if out is None else None,
        iteration=iteration,
        previous=previous,
    )


def _file_inputs(
    models: str | Path | None,
    data: str | Path | None,
    out: str | Path | None,
    cfg: DiagnosticsConfig | None,
    seed: int | None,
    model_cfg: ModelConfig | None,
    ens_cfg: EnsembleConfig | None,
) -> _Inputs:
    """File mode: a model directory and a labelled structure file."""
    if models is None or data is None:
        raise BadInput("diagnose: --models and --data go together")
    model_dir = Path(models)
    if not (model_dir / "ensemble.json").exists():
        raise BadInput(f"--models: {model_dir} is not a model directory (no ensemble.json)")
    return _Inputs(
        structures=read_structures(data, "--data"),
        model_dir=model_dir,
        cfg=cfg or DiagnosticsConfig(),
        seed=0 if seed is None else seed,
        out_dir=Path(out) if out is not None else Path("diagnosis"),
        model_cfg=model_cfg,
        ens_cfg=ens_cfg,
    )


def _check_elements(structures: list[Atoms], ensemble: EnsembleModel) -> None:
    """``BadInput`` when the data holds elements the ensemble does not know."""
    missing = sorted(
        {s for a in structures for s in a.get_chemical_symbols()} - set(ensemble.elements)
    )
    if missing:
        raise BadInput(
            f"data: element(s) {', '.join(missing)} unknown to the ensemble "
            f"(it knows {', '.join(ensemble.elements)})"
        )


def run_diagnosis(
    run: str | Path | None = None,
    *,
    models: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    cfg: DiagnosticsConfig | None = None,
    seed: int | None = None,
    train_splits: bool = False,
    model_cfg: ModelConfig | None = None,
    ens_cfg: EnsembleConfig | None = None,
    executor: Executor | None = None,
    on_split: Callable[[SplitResult], None] | None = None,
) -> DiagnosisRun:
    """``chemgap diagnose``: a run directory, or ``models`` + ``data``; writes regions.json.

    Run mode: labelled rows of ``RUN/data.db``, the newest ``iterations/NNN/models``, the spec's
    ``diagnostics`` (and ``model``/``ensemble`` for the split study), previous regions from
    ``RUN/regions.json``; writes to ``RUN`` and ``RUN/iterations/NNN``. File mode writes to
    ``out`` (default ``./diagnosis``).

    Args:
        run: the run directory (run mode), or None (file mode).
        models: file mode: the model directory (holding ``ensemble.json``).
        data: file mode: a labelled structure file ASE reads.
        out: where to write (default: RUN, or ``./diagnosis``).
        cfg: diagnostics settings (default: the run's spec, or the defaults).
        seed: seed of every random choice (default: the run's spec seed, or 0).
        train_splits: add the split study (trains one ensemble per split under
            ``<out>/splits/``; its table replaces the evaluate-only one).
        model_cfg: the split study's MACE architecture (default: the spec's, or the defaults).
        ens_cfg: the split study's ensemble training (default: the spec's, or the defaults).
        executor: where the split study trains (:mod:`chemgap.common.tasks`); None: in-process.
        on_split: receives each split study result as it is finished (progress).

    Returns:
        :class:`DiagnosisRun`.
    """
    from chemgap.models.ensemble import Ensemble

    if (run is None) == (models is None and data is None):
        raise BadInput("diagnose: give either RUN or both --models and --data")
    inp = (
        _run_inputs(run, out, cfg, seed, model_cfg, ens_cfg)
        if run is not None
        else _file_inputs(models, data, out, cfg, seed, model_cfg, ens_cfg)
    )
    ensemble = Ensemble.load(inp.model_dir)
    _check_elements(inp.structures, ensemble)
    result = diagnose(
        inp.structures,
        ensemble,
        inp.cfg,
        seed=inp.seed,
        iteration=inp.iteration,
        previous=inp.previous,
    )
    trained: list[SplitResult] = []
    if train_splits:
        from chemgap.models.config import EnsembleConfig, ModelConfig

        trained = run_splits(
            inp.structures,
            inp.cfg,
            inp.model_cfg or ModelConfig(),
            inp.ens_cfg or EnsembleConfig(),
            inp.out_dir / "splits",
            inp.seed,
            features=result.features,
            executor=executor,
            on_split=on_split,
        )
        result.splits = trained
    path = write_regions(result, inp.out_dir)
    if inp.extra_out is not None:
        write_regions(result, inp.extra_out)
    return DiagnosisRun(
        result=result, regions_path=path, models=inp.model_dir, trained_splits=trained
    )


def export_exemplars(source: str | Path, dest: str | Path, region: str | None = None) -> list[Path]:
    """Copy exemplar extxyz files (all, or one region's) from a diagnosis folder to ``dest``."""
    src = Path(source)
    folder = (src.parent if src.is_file() else src) / REGIONS_DIR
    if not folder.is_dir():
        raise BadInput(f"--export: {folder} has no exemplars")
    files = sorted(folder.glob("*.extxyz"))
    if region is not None:
        files = [f for f in files if f.stem == region]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        out.append(dest / f.name)
    return out
