"""Diagnosis of one ensemble on labelled data: errors, uncertainty, features, splits, regions.

:func:`diagnose` is what the campaign loop calls after every iteration (no training inside):

1. the ensemble predicts every labelled structure; per-atom force error norm |F_pred - F_ref|
   (eV/Å), per-component absolute error, per-structure energy error per atom (eV/atom), and the
   calibrated per-atom force std (eV/Å) for every structure;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.features import Features, compute_features
from chemgap.agent.diagnostics.regions import Region, find_regions, region_masks
from chemgap.agent.diagnostics.splits import SplitResult, evaluate_splits, run_splits
from chemgap.agent.errors import BadInput
from chemgap.agent.structio import read_structures
from chemgap.campaigns.spec import DiagnosticsConfig

log = logging.getLogger(__name__)

REGIONS_FILE = "regions.json"
REGIONS_DIR = "regions"
PAYLOAD_VERSION = 1


@dataclass(kw_only=True)
class DiagnosisResult:
    """What a diagnosis found.

    Attributes:
        regions: significant failure regions, most severe first.
        splits: per-split errors (:class:`SplitResult`), side by side.
        baseline: overall numbers: n_structures, n_atoms, force_mae (component MAE, eV/Å),
            force_error_mean (mean error norm, eV/Å; the regions' baseline),
            energy_mae_per_atom (eV/atom), uncertainty_mean (eV/Å), calibrated,
            spearman_uncertainty_error (atoms), per_element {symbol: {...}}.
        iteration: the campaign iteration diagnosed (None outside a run); seed.
        n_tested: candidate rules tested (the Benjamini-Hochberg family size).
        resolved: ids of ``previous`` regions not found any more.
        exemplars: region id -> annotated exemplar structures.
        features: the feature table; atom_error (n_atoms,) eV/Å error norms;
        atom_uncertainty (n_atoms,) eV/Å calibrated std; energy_error (n_struct,) eV/atom.
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
    ensemble: Any,
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
        structures_labelled: structures with ``REF_energy`` / ``REF_forces``; others (status not
            'ok', no labels) are skipped.
        ensemble: a :class:`chemgap.models.ensemble.Ensemble` (anything with ``predict``).
        cfg: the ``diagnostics`` section of the spec.
        seed / rng: seed of every random choice (bootstrap, tree halves, splits, KMeans);
            ``rng`` overrides the generator derived from ``seed``.
        iteration: the campaign iteration (sets first/last seen); previous: last regions.
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
    f_ref = np.concatenate([a.arrays["REF_forces"] for a in structures])
    e_ref = np.array([a.info["REF_energy"] for a in structures], dtype=float)
    n_atoms = np.array([len(a) for a in structures])
    diff = pred.forces_mean - f_ref
    atom_error = np.linalg.norm(diff, axis=1)
    atom_abs = np.abs(diff).mean(axis=1)
    energy_error = (pred.energy_mean - e_ref) / n_atoms
    uncertainty = np.asarray(pred.force_std_atom_cal, dtype=float)

    if features is None:
        features = compute_features(
            structures, environment_classes=cfg.environment_classes, seed=seed
        )
    if features.n_atoms != len(atom_error):
        raise ValueError("features: table does not match the structures (atom count differs)")

    regions, n_tested = find_regions(
        features,
        atom_error,
        uncertainty,
        alpha=cfg.alpha,
        min_atoms=cfg.min_region_atoms,
        min_ratio=cfg.min_ratio,
        tree_depth=cfg.tree_depth,
        n_boot=cfg.bootstrap,
        silent_factor=cfg.silent_factor,
        max_regions=cfg.max_regions,
        rng=rng,
    )
    exemplars = _exemplars(regions, features, structures, pred, atom_error, cfg.exemplars)
    resolved: list[str] = []
    if iteration is not None or previous:
        before = {r.id: r for r in previous or []}
        for r in regions:
            old = before.get(r.id)
            r.first_seen = old.first_seen if old and old.first_seen is not None else iteration
            r.last_seen = iteration
        now = {r.id for r in regions}
        resolved = [rid for rid in before if rid not in now]

    splits = evaluate_splits(
        structures,
        features,
        cfg,
        atom_abs_error=atom_abs,
        energy_error_per_atom=energy_error,
        seed=seed,
    )
    result = DiagnosisResult(
        regions=regions,
        splits=splits,
        baseline=_baseline(features, atom_error, atom_abs, energy_error, uncertainty, pred),
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


def _baseline(features, atom_error, atom_abs, energy_error, uncertainty, pred) -> dict[str, Any]:
    from scipy.stats import spearmanr

    per_element = {}
    symbols = features.atom["element"].astype(str)
    for el in sorted(set(symbols)):
        m = symbols == el
        per_element[el] = {
            "n_atoms": int(m.sum()),
            "force_error_mean": float(atom_error[m].mean()),
            "force_mae": float(atom_abs[m].mean()),
            "uncertainty_mean": float(uncertainty[m].mean()),
        }
    rho = spearmanr(uncertainty, atom_error).statistic if len(atom_error) > 2 else float("nan")
    return {
        "n_structures": features.n_struct,
        "n_atoms": features.n_atoms,
        "force_mae": float(atom_abs.mean()),
        "force_error_mean": float(atom_error.mean()),
        "energy_mae_per_atom": float(np.abs(energy_error).mean()),
        "uncertainty_mean": float(uncertainty.mean()),
        "calibrated": bool(pred.calibrated),
        "spearman_uncertainty_error": float(rho),
        "per_element": per_element,
    }


def _exemplars(
    regions: list[Region],
    features: Features,
    structures: list[Atoms],
    pred: Any,
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


def run_diagnosis(
    run: str | Path | None = None,
    *,
    models: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    cfg: DiagnosticsConfig | None = None,
    seed: int | None = None,
    train_splits: bool = False,
    model_cfg: Any = None,
    ens_cfg: Any = None,
    use_ray: bool | None = None,
    on_split: Any = None,
) -> DiagnosisRun:
    """``chemgap diagnose``: a run directory, or ``models`` + ``data``; writes regions.json.

    Run mode: labelled rows of ``RUN/data.db``, the newest ``iterations/NNN/models``, the spec's
    ``diagnostics`` (and ``model``/``ensemble`` for the split study), previous regions from
    ``RUN/regions.json``; writes to ``RUN`` and ``RUN/iterations/NNN``. File mode writes to
    ``out`` (default ``./diagnosis``). ``train_splits`` adds the split study (trains one
    ensemble per split under ``<out>/splits/``; its table replaces the evaluate-only one).
    """
    from chemgap.models.ensemble import Ensemble

    if (run is None) == (models is None and data is None):
        raise BadInput("diagnose: give either RUN or both --models and --data")
    previous: list[Region] | None = None
    iteration: int | None = None
    extra_out: Path | None = None
    if run is not None:
        from chemgap.agent.store import RunStore

        store = RunStore.open(run)
        model_dir, iteration = latest_models(run)
        structures = store.structures(status="ok")
        cfg = cfg or store.spec.diagnostics
        seed = store.spec.seed if seed is None else seed
        model_cfg = model_cfg or store.spec.model
        ens_cfg = ens_cfg or store.spec.ensemble
        out_dir = Path(out) if out is not None else Path(run)
        extra_out = store.iteration_dir(iteration) if out is None else None
        if (Path(run) / REGIONS_FILE).exists():
            try:
                previous, _ = load_regions(Path(run) / REGIONS_FILE)
            except BadInput:
                log.warning("ignoring unreadable %s", Path(run) / REGIONS_FILE)
    else:
        if models is None or data is None:
            raise BadInput("diagnose: --models and --data go together")
        model_dir = Path(models)
        if not (model_dir / "ensemble.json").exists():
            raise BadInput(f"--models: {model_dir} is not a model directory (no ensemble.json)")
        structures = read_structures(data, "--data")
        cfg = cfg or DiagnosticsConfig()
        seed = 0 if seed is None else seed
        out_dir = Path(out) if out is not None else Path("diagnosis")
    ensemble = Ensemble.load(model_dir)
    missing = sorted(
        {s for a in structures for s in a.get_chemical_symbols()} - set(ensemble.elements)
    )
    if missing:
        raise BadInput(
            f"data: element(s) {', '.join(missing)} unknown to the ensemble "
            f"(it knows {', '.join(ensemble.elements)})"
        )
    result = diagnose(structures, ensemble, cfg, seed=seed, iteration=iteration, previous=previous)
    trained: list[SplitResult] = []
    if train_splits:
        from chemgap.models.config import EnsembleConfig, ModelConfig

        trained = run_splits(
            structures,
            cfg,
            model_cfg or ModelConfig(),
            ens_cfg or EnsembleConfig(),
            out_dir / "splits",
            seed,
            features=result.features,
            use_ray=use_ray,
            on_split=on_split,
        )
        result.splits = trained
    path = write_regions(result, out_dir)
    if extra_out is not None:
        write_regions(result, extra_out)
    return DiagnosisRun(result=result, regions_path=path, models=model_dir, trained_splits=trained)


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
