"""Diagnosis of one ensemble on labelled data: errors, uncertainty, features, splits, regions.

:func:`diagnose` is what the campaign loop calls after every iteration (no training inside), on
the campaign's fixed test set, so that a region's figures form a history across iterations:

1. the ensemble predicts every labelled structure; the errors are those of
   :mod:`chemgap.common.metrics`: per-atom force error norm |F_pred - F_ref| (eV/Å), per-structure
   energy error per atom (eV/atom), the overall :class:`~chemgap.common.metrics.ErrorReport`,
   and the calibrated per-atom force std (eV/Å) for every structure;
2. chemical features (:mod:`chemgap.agent.diagnostics.features`); the environment classes are
   named after the previous diagnosis' matching classes
   (:func:`~chemgap.agent.diagnostics.features.match_environment_classes`), so an environment
   region keeps its id;
3. the given ensemble scored on both sides of every configured split
   (:func:`chemgap.agent.diagnostics.splits.evaluate_splits`);
4. the sampling check (:func:`~chemgap.agent.diagnostics.provenance.check_provenance`): does
   the error follow the walker, iteration, seed index or temperature? a warning, never a region;
5. failure regions (:func:`~chemgap.agent.diagnostics.regions.search_regions`) with their
   exemplar structures, the iterations they were first and last seen and their history (from
   ``previous``), the previous regions not found any more (``resolved``), and what the search
   could have found (``diagnosed``: why a result is empty, :func:`explain_empty`).

:func:`write_regions` stores the result as ``regions.json`` (an object whose ``"regions"`` list
``chemgap status`` counts) and ``regions/<id>.extxyz``, atomically and without replacing files
it did not write (:func:`check_regions_target`); :func:`load_regions` and :func:`load_previous`
read it back. :func:`run_diagnosis` is the library face of ``chemgap diagnose`` (a run's test
set, or a model directory plus a labelled file), optionally with the split study
(:func:`~chemgap.agent.diagnostics.splits.run_splits`, which trains one ensemble per split).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics import REGIONS_DIR, REGIONS_FILE
from chemgap.agent.diagnostics.features import (
    EnvironmentClasses,
    Features,
    compute_features,
    match_environment_classes,
    with_model_charges,
)
from chemgap.agent.diagnostics.provenance import check_provenance
from chemgap.agent.diagnostics.regions import (
    Region,
    UnknownFeature,
    region_masks,
    search_regions,
)
from chemgap.agent.diagnostics.splits import SplitResult, evaluate_splits, run_splits
from chemgap.agent.errors import BadInput, RunDirError
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
    from chemgap.agent.store import RunStore
    from chemgap.common.tasks import Executor
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.contract import EnsembleModel
    from chemgap.models.predict import Prediction

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 2  # 2: readable rules beside machine_rule, also_ids, folded, provenance
DIAGNOSIS_DIR = "diagnosis"  # where ``chemgap diagnose RUN`` writes unless --update / -o
TEST_SPLIT = "test"  # data.db rows of a campaign's fixed test set carry split=TEST_SPLIT
# the only names write_regions puts into (and so may replace in) a regions/ folder
EXEMPLAR_NAME = re.compile(r"^R[0-9a-f]{8}\.extxyz$")
_NEW_PREFIX, _OLD_PREFIX = ".regions.new-", ".regions.old-"


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
        diagnosed: what the region search could have found
            (:func:`~chemgap.agent.diagnostics.regions.search_summary`: n_structures, n_atoms,
            n_rules_tested, n_two_sided, alpha, min_ratio, min_region_atoms, min_q_achievable,
            min_q_lone, best_sizes, best_two_sided, structures_needed, n_below_min_ratio,
            max_ratio_seen, min_q_seen).
        source: what was diagnosed, in words (``test set of RUN``, a file's name).
        resolved: ids of ``previous`` regions not found any more.
        resolved_regions: per resolved region: id, rule, first_seen, last_seen, ratio_before
            (its ratio when last found) and, its rule applied to this diagnosis' data,
            n_atoms_now and ratio_now (mean error of those atoms over the baseline; NaN when
            the rule selects no atom now). When the rule names a feature this data does not
            have (group flags exist only where a group was perceived; environment classes
            differ), n_atoms_now is 0, ratio_now NaN and ``note`` says which feature is absent.
        provenance: the sampling check
            (:func:`~chemgap.agent.diagnostics.provenance.check_provenance`): per provenance
            column (walker, iteration, seed index, temperature), whether the error follows it;
            flagged ones carry a warning ``message``. Never failure regions; shown apart.
        perception: RDKit bond perception of the molecules
            (:attr:`~chemgap.agent.diagnostics.features.Features.perception`: tried,
            perceived, failed, failed_formulas); empty when no molecular features were made.
        environment: the environment classes (SOAP centroids) the region ids of environment
            regions refer to; the next diagnosis matches its classes to them.
        exemplars: region id -> annotated exemplar structures.
        features: the feature table.
        atom_error: (n_atoms,) force error norms |F_pred - F_ref|, eV/Å.
        atom_uncertainty: (n_atoms,) calibrated per-atom force std, eV/Å.
        energy_error: (n_struct,) signed (E_pred - E_ref) / n_atoms, eV/atom.
        wall_s: how long the diagnosis took, s.
        quality: the model's in-distribution quality against its target
            (:func:`chemgap.agent.evaluation.model_quality`; a campaign sets it), or None;
            when it misses the target the regions are tentative.
    """

    regions: list[Region]
    splits: list[SplitResult]
    baseline: dict[str, Any]
    iteration: int | None = None
    seed: int = 0
    n_tested: int = 0
    diagnosed: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    resolved: list[str] = field(default_factory=list)
    resolved_regions: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    perception: dict[str, Any] = field(default_factory=dict)
    environment: EnvironmentClasses | None = None
    exemplars: dict[str, list[Atoms]] = field(default_factory=dict)
    features: Features | None = None
    atom_error: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    energy_error: np.ndarray | None = None
    wall_s: float = 0.0
    quality: dict[str, Any] | None = None

    @property
    def tentative(self) -> bool:
        """Whether the model misses its in-distribution target (regions are not findings)."""
        return self.quality is not None and not self.quality["ready"]

    def to_dict(self) -> dict[str, Any]:
        """The ``regions.json`` payload (JSON-safe: NaN written as null)."""
        return _json_safe(
            {
                "format": PAYLOAD_VERSION,
                "created": time.time(),
                "iteration": self.iteration,
                "seed": self.seed,
                "source": self.source,
                "baseline": self.baseline,
                "n_tested": self.n_tested,
                "diagnosed": self.diagnosed,
                "resolved": self.resolved,
                "resolved_regions": self.resolved_regions,
                "provenance": self.provenance,
                "perception": self.perception,
                "regions": [r.to_dict() for r in self.regions],
                "splits": [s.to_dict() for s in self.splits],
                "environment": None if self.environment is None else self.environment.to_dict(),
                "wall_s": self.wall_s,
                "quality": self.quality,
                "tentative": self.tentative,
            }
        )


@dataclass(kw_only=True)
class PreviousDiagnosis:
    """What a diagnosis needs of the one before it (:func:`load_previous`).

    Attributes:
        regions: its regions (first seen, history, and which are resolved now).
        environment: its environment classes (so the classes keep their names); None if unknown.
        iteration: its iteration (None outside a run).
    """

    regions: list[Region]
    environment: EnvironmentClasses | None = None
    iteration: int | None = None


def load_previous(path: str | Path) -> PreviousDiagnosis | None:
    """The diagnosis stored at ``path`` (``regions.json`` or its folder) for :func:`diagnose`.

    Returns None (logged) when there is none or it cannot be read: a diagnosis without a
    previous one starts the history afresh.
    """
    p = Path(path)
    if not (p / REGIONS_FILE if p.is_dir() else p).exists():
        return None
    try:
        regions, payload = load_regions(p)
        env = payload.get("environment")
        classes = EnvironmentClasses.from_dict(env) if env else None
    except (BadInput, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the previous diagnosis %s: %s", p, exc)
        return None
    return PreviousDiagnosis(
        regions=regions, environment=classes, iteration=payload.get("iteration")
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
    previous: PreviousDiagnosis | list[Region] | None = None,
    features: Features | None = None,
    source: str | None = None,
) -> DiagnosisResult:
    """Diagnose ``ensemble`` on labelled structures: errors, features, splits, failure regions.

    Args:
        structures_labelled: structures with labelled energies and forces; others (status not
            'ok', no labels) are skipped. In a campaign: its fixed test set, every iteration.
        ensemble: the model (:class:`chemgap.models.contract.EnsembleModel`).
        cfg: the ``diagnostics`` section of the spec.
        seed: seed of every random choice (bootstrap, tree halves, splits, KMeans).
        rng: overrides the generator derived from ``seed`` (regions only).
        iteration: the campaign iteration (sets first/last seen and the history).
        previous: the last diagnosis (:func:`load_previous`), or just its regions: first seen,
            history, ``resolved``; with its environment classes, the classes here are named
            after the matching ones there.
        features: a precomputed feature table of the same structures (else computed).
        source: what the structures are, in words (stored with the result).

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
    if previous is not None and not isinstance(previous, PreviousDiagnosis):
        previous = PreviousDiagnosis(regions=list(previous))
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
    features = with_model_charges(
        features, getattr(pred, "charges_mean", None), getattr(pred, "charges_std", None)
    )
    if previous is not None:
        features = match_environment_classes(features, previous.environment)

    search = search_regions(features, atom_error, uncertainty, cfg, rng=rng)
    regions = search.regions
    exemplars = _exemplars(regions, features, structures, pred, atom_error, cfg.exemplars)
    resolved = _track(regions, previous, iteration, features, atom_error)
    splits = evaluate_splits(structures, features, cfg, prediction=pred, seed=seed)
    result = DiagnosisResult(
        regions=regions,
        splits=splits,
        baseline=_baseline(
            score(pred, structures), features, atom_error, uncertainty, pred.calibrated
        ),
        iteration=iteration,
        seed=seed,
        n_tested=search.n_tested,
        diagnosed=search.summary,
        source=source,
        resolved=[d["id"] for d in resolved],
        resolved_regions=resolved,
        provenance=check_provenance(features, atom_error, cfg.alpha),
        perception=dict(features.perception),
        environment=features.environment,
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
        search.n_tested,
        result.wall_s,
    )
    return result


def _track(
    regions: list[Region],
    previous: PreviousDiagnosis | None,
    iteration: int | None,
    features: Features,
    atom_error: np.ndarray,
) -> list[dict[str, Any]]:
    """Set first/last seen and history of ``regions`` from ``previous``; describe the resolved.

    A region continues a previous one with its id, or with one of its ``also_ids`` (a finding
    folded under a more readable rule, or an earlier machine form of its own rule). A previous
    region that no region continues is resolved; its rule is applied to this data to say how
    its atoms do now (:func:`_resolved_entry`).
    """
    if iteration is None and previous is None:
        return []
    before = {r.id: r for r in previous.regions} if previous else {}
    continued: set[str] = set()
    for r in regions:
        ids = [r.id, *r.also_ids]
        old = next((before[i] for i in ids if i in before), None)
        continued.update(i for i in ids if i in before)
        r.first_seen = old.first_seen if old and old.first_seen is not None else iteration
        r.last_seen = iteration
        past = [h for h in (old.history if old else []) if h.get("iteration") != iteration]
        r.history = [
            *past,
            {
                "iteration": iteration,
                "ratio": r.ratio,
                "ratio_ci": list(r.ratio_ci),
                "q_value": r.q_value,
            },
        ]
    gone = [r for rid, r in before.items() if rid not in continued]
    return [_resolved_entry(r, features, atom_error) for r in gone]


def _resolved_entry(r: Region, features: Features, atom_error: np.ndarray) -> dict[str, Any]:
    """A resolved region, with its rule applied to this diagnosis' data.

    The rule of an earlier diagnosis may name a feature this data lacks (a group flag exists
    only where that group was perceived; environment classes differ); that is recorded
    (``n_atoms_now`` 0, ``ratio_now`` NaN, ``note``), not mistaken for a rule matching no atom.

    Args:
        r: the previous diagnosis' region.
        features: this diagnosis' feature table.
        atom_error: (n_atoms,) force error norms of this diagnosis, eV/Å.

    Returns:
        ``{"id", "rule", "machine_rule", "first_seen", "last_seen", "ratio_before",
        "n_atoms_now", "ratio_now"}``, plus ``"note"`` when a feature of the rule is absent.
    """
    entry: dict[str, Any] = {
        "id": r.id,
        "rule": r.rule,
        "machine_rule": r.machine_rule,
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "ratio_before": r.ratio,
    }
    try:
        m = region_masks([r], features)[r.id]
    except UnknownFeature as exc:
        log.info("resolved region %s (%s): %s", r.id, r.rule, exc)
        note = f"feature {exc.feature!r} absent from this data"
        return {**entry, "n_atoms_now": 0, "ratio_now": float("nan"), "note": note}
    ratio = float(atom_error[m].mean() / atom_error.mean()) if m.any() else float("nan")
    return {**entry, "n_atoms_now": int(m.sum()), "ratio_now": ratio}


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
    """Per region, the ``k`` structures whose region atoms have the highest mean error.

    Raises:
        UnknownFeature: a region's rule names a column ``features`` lacks (the regions are this
            table's own findings, so that is a bug, never an empty region).
    """
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
            a.info["region_machine_rule"] = r.machine_rule
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
def check_regions_target(out_dir: str | Path) -> None:
    """Refuse (``BadInput``) a folder whose ``regions.json`` / ``regions/`` chemgap did not write.

    :func:`write_regions` replaces ``regions/`` as a whole, so it may only replace one holding
    nothing but files named like its exemplars (``R`` + 8 hex digits + ``.extxyz``; chemgap
    owns that pattern); anything else there (``notes.txt``, a folder, a link) is a user's and
    is refused, naming the path. ``regions.json`` is replaced only when it is a chemgap
    regions file (a JSON object with ``format`` and ``regions``).
    """
    out = Path(out_dir)
    folder = out / REGIONS_DIR
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BadInput(
            f"{folder}: is not a folder chemgap wrote; refusing to replace it with failure "
            "regions (move it away or write elsewhere with -o DIR)"
        )
    foreign = _foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise BadInput(
            f"{folder}: holds files chemgap did not write ({shown}); refusing to replace it "
            "with failure regions (move them away or write elsewhere with -o DIR)"
        )
    path = out / REGIONS_FILE
    if path.exists() and not _is_regions_payload(path):
        raise BadInput(
            f"{path}: is not a chemgap regions file; refusing to overwrite it "
            "(move it away or write elsewhere with -o DIR)"
        )


def _foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that :func:`write_regions` would not have written (sorted)."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_symlink() or not p.is_file() or not EXEMPLAR_NAME.match(p.name)
    )


def _is_regions_payload(path: Path) -> bool:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and "format" in payload and "regions" in payload


def write_exemplars(folder: Path, exemplars: dict[str, list[Atoms]]) -> None:
    """Write ``folder/<id>.extxyz`` per region with exemplars, each file fsynced."""
    import ase.io

    for rid, images in exemplars.items():
        if not images:
            continue
        with open(folder / f"{rid}.extxyz", "w") as f:
            ase.io.write(f, images, format="extxyz")
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tidy(out: Path) -> None:
    """Undo what an interrupted :func:`write_regions` left in ``out``.

    A crash between its two renames leaves no ``regions/`` but a ``.regions.old-*``: that is
    the folder the (old) ``regions.json`` describes, so it goes back. Leftover temporary
    folders holding only exemplar names are removed; others are left alone.
    """
    folder = out / REGIONS_DIR
    olds = sorted(out.glob(f"{_OLD_PREFIX}*"), key=lambda p: p.stat().st_mtime)
    if not folder.exists() and olds and not _foreign_files(olds[-1]):
        os.replace(olds.pop(), folder)
    for stale in [*olds, *out.glob(f"{_NEW_PREFIX}*")]:
        if stale.is_dir() and not stale.is_symlink() and not _foreign_files(stale):
            shutil.rmtree(stale, ignore_errors=True)


def write_regions(result: DiagnosisResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/regions.json`` and ``out_dir/regions/<id>.extxyz``; returns the json path.

    Safe against a crash and against replacing a user's files:

    - :func:`check_regions_target` first: a ``regions/`` holding anything but exemplar files,
      or a ``regions.json`` that is not a chemgap one, is refused (``BadInput``), changing
      nothing;
    - the payload is serialised and the exemplars are written (fsynced) into a temporary
      folder next to ``regions/`` before anything is replaced: a failure there leaves the old
      ``regions.json`` and ``regions/`` as they were;
    - the new folder is swapped in by two renames (old -> ``.regions.old-*``, new ->
      ``regions/``), then ``regions.json`` is replaced atomically (temp file, fsync, rename),
      then the old folder is deleted. A crash between the renames is undone by the next call
      (:func:`_tidy`); a crash between the swap and the json leaves the new exemplars next to
      the old json until the next write.

    Stale exemplars of resolved regions go with the old folder.
    """
    from chemgap.common.files import atomic_write_text, current_umask

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_regions_target(out)
    _tidy(out)
    text = json.dumps(result.to_dict(), indent=1) + "\n"
    new = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=out))
    os.chmod(new, 0o777 & ~current_umask())  # mkdtemp makes it 0700: readable like the rest
    try:
        write_exemplars(new, result.exemplars)
        _fsync_dir(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    folder = out / REGIONS_DIR
    old = out / (_OLD_PREFIX + new.name.removeprefix(_NEW_PREFIX))
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    _fsync_dir(out)
    path = out / REGIONS_FILE
    atomic_write_text(path, text)
    shutil.rmtree(old, ignore_errors=True)
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
    splits_dir: Path
    source: str
    model_cfg: ModelConfig | None = None
    ens_cfg: EnsembleConfig | None = None
    extra_out: Path | None = None
    iteration: int | None = None
    previous: PreviousDiagnosis | None = None


def run_test_set(store: RunStore) -> list[Atoms]:
    """The run's fixed test set: the labelled ``data.db`` rows with ``split="test"``.

    Raises:
        BadInput: the run has none (runs made before campaigns kept a test set).
    """
    structures = store.structures(split=TEST_SPLIT, status="ok")
    if not structures:
        raise BadInput(
            f"RUN: {store.root} has no test set (no labelled data.db rows with "
            f"split={TEST_SPLIT}; runs made before chemgap kept one have none), so there is "
            "nothing its models were not trained on to diagnose them with; use "
            "--models MODEL_DIR --data LABELLED with data of your own"
        )
    return structures


def _run_inputs(
    store: RunStore,
    out: str | Path | None,
    update: bool,
    cfg: DiagnosticsConfig | None,
    seed: int | None,
    model_cfg: ModelConfig | None,
    ens_cfg: EnsembleConfig | None,
) -> _Inputs:
    """Run mode: the test set, newest models, spec settings and previous diagnosis of RUN.

    The previous diagnosis is the one of the iteration before the models' (as in the loop),
    so re-diagnosing an iteration gives the same first seen and history as the loop did.
    """
    root = store.root
    model_dir, iteration = latest_models(root)
    structures = run_test_set(store)
    own = Path(out) if out is not None else root / DIAGNOSIS_DIR
    return _Inputs(
        structures=structures,
        model_dir=model_dir,
        cfg=cfg or store.spec.diagnostics,
        seed=store.spec.seed if seed is None else seed,
        out_dir=root if update else own,
        splits_dir=own / "splits",
        source=f"test set of {root} ({len(structures)} structures, split={TEST_SPLIT})",
        model_cfg=model_cfg or store.spec.model,
        ens_cfg=ens_cfg or store.spec.ensemble,
        extra_out=store.iteration_dir(iteration) if update else None,
        iteration=iteration,
        previous=load_previous(store.iteration_dir(iteration - 1, create=False) / REGIONS_FILE),
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
    out_dir = Path(out) if out is not None else Path(DIAGNOSIS_DIR)
    return _Inputs(
        structures=read_structures(data, "--data"),
        model_dir=model_dir,
        cfg=cfg or DiagnosticsConfig(),
        seed=0 if seed is None else seed,
        out_dir=out_dir,
        splits_dir=out_dir / "splits",
        source=f"{data}",
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


@contextlib.contextmanager
def _holding(store: RunStore):
    """Hold RUN's lock; a run being driven right now is a ``BadInput`` naming its pid."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store.lock())
        except RunDirError:
            raise BadInput(
                f"RUN: {store.root} is running (pid {store.state.pid}); diagnose it when it stops"
            ) from None
        yield


def run_diagnosis(
    run: str | Path | None = None,
    *,
    models: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    update: bool = False,
    cfg: DiagnosticsConfig | None = None,
    seed: int | None = None,
    train_splits: bool = False,
    model_cfg: ModelConfig | None = None,
    ens_cfg: EnsembleConfig | None = None,
    executor: Executor | None = None,
    on_split: Callable[[SplitResult], None] | None = None,
) -> DiagnosisRun:
    """``chemgap diagnose``: a run's test set, or ``models`` + ``data``; writes regions.json.

    Run mode holds the run's lock throughout (a run being driven is refused) and diagnoses the
    newest ``iterations/NNN/models`` on the run's fixed test set (:func:`run_test_set`; a run
    without one is refused: its other labels are training data or were chosen by the models'
    own uncertainty, so errors on them say little), with the spec's ``diagnostics`` (and
    ``model``/``ensemble`` for the split study) and the previous iteration's diagnosis. It
    writes to ``RUN/diagnosis`` (or ``out``), leaving the loop's files alone; ``update``
    writes into ``RUN`` and ``RUN/iterations/NNN`` instead, as the loop does. File mode writes
    to ``out`` (default ``./diagnosis``). Where the output would replace files chemgap did not
    write, nothing is diagnosed (:func:`check_regions_target`).

    Args:
        run: the run directory (run mode), or None (file mode).
        models: file mode: the model directory (holding ``ensemble.json``).
        data: file mode: a labelled structure file ASE reads.
        out: where to write (default: ``RUN/diagnosis``, or ``./diagnosis``).
        update: run mode: replace the run's own diagnosis (not with ``out``).
        cfg: diagnostics settings (default: the run's spec, or the defaults).
        seed: seed of every random choice (default: the run's spec seed, or 0).
        train_splits: add the split study (trains one ensemble per split under
            ``<out>/splits/``, ``RUN/diagnosis/splits`` with ``update``; its table replaces the
            evaluate-only one).
        model_cfg: the split study's MACE architecture (default: the spec's, or the defaults).
        ens_cfg: the split study's ensemble training (default: the spec's, or the defaults).
        executor: where the split study trains (:mod:`chemgap.common.tasks`); None: in-process.
        on_split: receives each split study result as it is finished (progress).

    Returns:
        :class:`DiagnosisRun`.
    """
    from chemgap.agent.store import RunStore

    if (run is None) == (models is None and data is None):
        raise BadInput("diagnose: give either RUN or both --models and --data")
    if update and (run is None or out is not None):
        raise BadInput("--update: writes into RUN's own diagnosis; give RUN and leave out -o")
    settings = {
        "train_splits": train_splits,
        "executor": executor,
        "on_split": on_split,
    }
    if run is None:
        inp = _file_inputs(models, data, out, cfg, seed, model_cfg, ens_cfg)
        return _diagnose_and_write(inp, **settings)
    store = RunStore.open(run)
    with _holding(store):
        inp = _run_inputs(store, out, update, cfg, seed, model_cfg, ens_cfg)
        return _diagnose_and_write(inp, **settings)


def _diagnose_and_write(
    inp: _Inputs,
    *,
    train_splits: bool,
    executor: Executor | None,
    on_split: Callable[[SplitResult], None] | None,
) -> DiagnosisRun:
    """Check the targets, load the ensemble, diagnose, optionally train the splits, write."""
    from chemgap.models.ensemble import Ensemble

    for target in (inp.out_dir, inp.extra_out):
        if target is not None:
            check_regions_target(target)
    ensemble = Ensemble.load(inp.model_dir)
    _check_elements(inp.structures, ensemble)
    result = diagnose(
        inp.structures,
        ensemble,
        inp.cfg,
        seed=inp.seed,
        iteration=inp.iteration,
        previous=inp.previous,
        source=inp.source,
    )
    trained: list[SplitResult] = []
    if train_splits:
        from chemgap.models.config import EnsembleConfig, ModelConfig
        from chemgap.models.e0 import saved_atomic_energies

        # the split study's models are built like the diagnosed one: its E0s
        e0 = saved_atomic_energies(inp.model_dir)
        model_cfg = (inp.model_cfg or ModelConfig()).model_copy(update={"e0": e0})
        trained = run_splits(
            inp.structures,
            inp.cfg,
            model_cfg,
            inp.ens_cfg or EnsembleConfig(),
            inp.splits_dir,
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


def explain_empty(diagnosed: dict[str, Any] | None) -> list[str]:
    """Why a diagnosis found no failure region, as sentences (from ``diagnosed``).

    Built on :func:`~chemgap.agent.diagnostics.regions.search_summary`, whose docstring has the
    reasoning: what was tested, whether any rule could have reached q ≤ alpha at this size (and
    otherwise how many structures that takes at least), the smallest reportable ratio, and the
    strongest rules actually seen.
    """
    d = diagnosed or {}
    if "n_rules_tested" not in d:
        return ["No failure region (this diagnosis predates the explanation; diagnose again)."]
    m, alpha = d["n_rules_tested"], d["alpha"]
    two = d.get("n_two_sided") or 0
    sides = f"; {two} two-sided, both sides of a cut as one" if two else ""
    tested = (
        f"{d['n_structures']} structures ({d['n_atoms']} atoms) tested, {m} rules tried "
        f"(each of ≥ {d['min_region_atoms']} atoms{sides}), Benjamini-Hochberg FDR {alpha:g}."
    )
    if not m:
        return [
            f"No failure region: {tested}",
            f"No rule was tried: every candidate held fewer than {d['min_region_atoms']} atoms "
            "or all of them.",
        ]
    return [f"No failure region: {tested}", *_reachability(d), *_strongest(d)]


def _reachability(d: dict[str, Any]) -> list[str]:
    """Whether any rule could have reached q ≤ alpha here, and the smallest reportable ratio.

    Three cases, from ``min_q_achievable`` (p at complete separation of the best-placed rule,
    doubled when that rule was tested two-sided; q ≥ p) and ``min_q_lone`` (m p; BH gives
    q ≤ m p whatever the other rules do): reachable by that rule on its own, reachable only
    together with other strong rules, or not at all.
    """
    alpha, p_min, lone, m = d["alpha"], d["min_q_achievable"], d["min_q_lone"], d["n_rules_tested"]
    n_in, n_out = d["best_sizes"]
    sided = ", two-sided: both sides of its cut were tried" if d.get("best_two_sided") else ""
    best = f"the best-placed rule ({n_in} structures against {n_out}{sided})"
    ratio = (
        "The test ranks structures rather than measuring ratios, so the smallest reportable "
        f"error ratio is the threshold itself: {d['min_ratio']:g} (diagnostics.min_ratio)."
    )
    if lone <= alpha:
        return [
            f"Significance was within reach: {best} gets q ≤ {lone:.2g} if its structures all "
            f"rank above the rest, whatever the other {m - 1} rules do. " + ratio
        ]
    if p_min <= alpha:
        return [
            f"Significance was barely within reach: with its structures all ranking above the "
            f"rest, {best} gets p = {p_min:.2g}, which Benjamini-Hochberg over {m} rules keeps "
            f"at q ≤ {alpha:g} only if other rules are about as strong (alone: q = {lone:.2g}). "
            + ratio
        ]
    need = d.get("structures_needed")
    more = (
        f" It takes at least {need} structures for any rule to get there."
        if need is not None and need > d["n_structures"]
        else " Only rules that split the structures more evenly could get there."
    )
    return [
        f"No rule could have reached q ≤ {alpha:g} at this size: even with its structures all "
        f"ranking above the rest, {best} gets p = {p_min:.2g}, and q is never below p." + more
    ]


def _strongest(d: dict[str, Any]) -> list[str]:
    """The largest ratio and the smallest q actually seen."""
    out = []
    top, best = d.get("max_ratio_seen"), d.get("min_q_seen")
    if top and top.get("ratio") is not None:
        out.append(
            f"Largest ratio seen: {top['ratio']:.2f}× for '{top['rule']}' "
            f"(q = {top['q_value']:.2g})."
        )
    if best and best.get("ratio") is not None and best["rule"] != (top or {}).get("rule"):
        out.append(
            f"Smallest q seen: {best['q_value']:.2g} for '{best['rule']}' "
            f"(ratio {best['ratio']:.2f}×)."
        )
    k = d.get("n_below_min_ratio", 0)
    if k:
        out.append(f"{k} rule(s) reached q ≤ {d['alpha']:g} with ratios below {d['min_ratio']:g}.")
    return out


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
