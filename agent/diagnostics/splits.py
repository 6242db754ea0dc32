"""Biased train/test splits that expose out-of-distribution (OOD) failure.

A random split measures interpolation; a split that holds out a part of chemical space measures
extrapolation, and MLIPs that look equally good on random splits differ widely on biased ones
(cluster and "maximum separation" splits on structure-averaged SOAP, size splits: the OOD
benchmarks of e.g. Kovács et al., "Evaluation of the MACE force field architecture", J. Chem. Phys.
159, 044118, 2023, and the leave-cluster-out cross-validation of Meredig et al., Mol. Syst. Des.
Eng. 3, 819, 2018). Strategies are the ``StrEnum`` :class:`~chemgap.campaigns.spec.SplitName`
plus the registry :data:`SPLITS` (docs/architecture.md, Conventions):

- ``random``: half the structures at random (the reference);
- ``cluster``: KMeans (k = ``n_clusters``) on structure-averaged SOAP, half the clusters held out;
- ``maxsep``: the half of the structures least similar (cosine similarity of averaged SOAP) to a
  random anchor structure held out;
- ``size``: train on the smaller structures, test on the larger;
- ``element``: leave out the structures containing one element;
- ``group``: leave out the molecules containing one functional group;
- ``temperature``: train on the colder sampling temperatures, test on the hotter.

Each split is a pure function of the structures, their features and a seed (the generator is
``default_rng([seed, crc32(name)])``), so it is reproducible and is stored with its indices.
:func:`evaluate_splits` scores a given ensemble on both sides (no training; for the campaign
loop); :func:`run_splits` trains one ensemble per split on its train side and reports the
in-distribution error (a held-out part of the train side) next to the OOD error. Both report
the ``force_mae`` and ``energy_mae_per_atom`` of :mod:`chemgap.common.metrics` of each side.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.features import Features, as_float
from chemgap.agent.errors import BadInput
from chemgap.agent.layout import MODELS_DIR
from chemgap.campaigns.spec import DiagnosticsConfig, SplitName
from chemgap.common.keys import reference_energies, reference_forces
from chemgap.common.metrics import ErrorReport, HasMeanPrediction, error_report, score

if TYPE_CHECKING:
    from chemgap.common.tasks import Executor
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.contract import EnsembleModel

log = logging.getLogger(__name__)


class SplitUnavailable(Exception):
    """The data cannot be split this way (one size, one element, no temperatures...)."""


@dataclass(kw_only=True)
class Split:
    """One train/test partition of a list of structures.

    Attributes:
        name: the strategy; seed: the seed it was drawn with.
        train / test: sorted structure indices (disjoint; together all structures).
        description: what was held out, in words (``"held out element N"``).
        params: what the strategy chose (anchor index, clusters held out, size threshold...).
    """

    name: str
    seed: int
    train: list[int]
    test: list[int]
    description: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(kw_only=True)
class SplitContext:
    """What a strategy may look at."""

    structures: list[Atoms]
    features: Features
    cfg: DiagnosticsConfig
    rng: np.random.Generator
    seed: int


SplitFn = Callable[[SplitContext], Split]


def _make(ctx: SplitContext, name: str, test_mask: np.ndarray, text: str, **params: Any) -> Split:
    test_mask = np.asarray(test_mask, dtype=bool)
    if test_mask.all() or not test_mask.any():
        raise SplitUnavailable(f"{name}: one side of the split would be empty")
    return Split(
        name=name,
        seed=ctx.seed,
        train=[int(i) for i in np.flatnonzero(~test_mask)],
        test=[int(i) for i in np.flatnonzero(test_mask)],
        description=text,
        params=params,
    )


def _random(ctx: SplitContext) -> Split:
    n = len(ctx.structures)
    test = np.zeros(n, dtype=bool)
    test[ctx.rng.permutation(n)[: n // 2]] = True
    return _make(ctx, SplitName.RANDOM, test, "half the structures at random")


def _soap(ctx: SplitContext) -> np.ndarray:
    if ctx.features.soap_structure is None:
        raise SplitUnavailable("no SOAP descriptors were computed")
    return ctx.features.soap_structure


def _cluster(ctx: SplitContext) -> Split:
    from sklearn.cluster import KMeans

    x = _soap(ctx)
    distinct = len(np.unique(np.round(x, 8), axis=0))
    k = min(ctx.cfg.n_clusters, len(x) // 2, distinct)
    if k < 2:
        raise SplitUnavailable("cluster: fewer than 2 distinct structures per cluster")
    labels = KMeans(n_clusters=k, n_init=4, random_state=ctx.seed).fit_predict(x)
    held = sorted(int(c) for c in ctx.rng.permutation(k)[: k // 2])
    test = np.isin(labels, held)
    return _make(
        ctx, SplitName.CLUSTER, test, f"{len(held)} of {k} SOAP clusters held out", clusters=held
    )


def _maxsep(ctx: SplitContext) -> Split:
    x = _soap(ctx)
    n = len(x)
    anchor = int(ctx.rng.integers(n))
    norm = np.linalg.norm(x, axis=1) * np.linalg.norm(x[anchor])
    sim = x @ x[anchor] / np.where(norm > 0, norm, 1.0)
    order = np.argsort(sim, kind="stable")
    test = np.zeros(n, dtype=bool)
    test[order[: n // 2]] = True
    test[anchor] = False
    return _make(
        ctx,
        SplitName.MAXSEP,
        test,
        f"the {int(test.sum())} structures least similar to structure {anchor}",
        anchor=anchor,
    )


def _threshold_split(values: np.ndarray) -> float:
    """The cut t (a value present) that puts closest to half the structures at ≤ t."""
    u = np.unique(values)
    if len(u) < 2:
        raise SplitUnavailable("all structures have the same value")
    below = np.array([(values <= t).sum() for t in u[:-1]])
    return float(u[:-1][np.argmin(np.abs(below - len(values) / 2))])


def _size(ctx: SplitContext) -> Split:
    sizes = np.array([len(a) for a in ctx.structures], dtype=float)
    try:
        cut = _threshold_split(sizes)
    except SplitUnavailable:
        raise SplitUnavailable("size: every structure has the same number of atoms") from None
    return _make(
        ctx, SplitName.SIZE, sizes > cut, f"train ≤ {cut:g} atoms, test > {cut:g}", max_train=cut
    )


def _temperature(ctx: SplitContext) -> Split:
    temps = np.array([as_float(a.info.get("temperature_K")) for a in ctx.structures])
    known = ~np.isnan(temps)
    if known.sum() < 2:
        raise SplitUnavailable("temperature: structures carry no temperature_K")
    try:
        cut = _threshold_split(temps[known])
    except SplitUnavailable:
        raise SplitUnavailable("temperature: one sampling temperature only") from None
    test = np.where(known, temps > cut, False)
    return _make(
        ctx,
        SplitName.TEMPERATURE,
        test,
        f"train ≤ {cut:g} K (and unknown), test > {cut:g} K",
        max_train_K=cut,
    )


def _pick(
    ctx: SplitContext, field_name: str, chosen: str | None, has: dict[str, np.ndarray]
) -> str:
    """The held-out element/group: the configured one, else a random one splitting 10-70%."""
    if chosen is not None:
        if chosen not in has:
            allowed = ", ".join(sorted(has)) or "none"
            raise BadInput(
                f"diagnostics.{field_name}: {chosen!r} is not in the data (present: {allowed})"
            )
        return chosen
    options = sorted(k for k, v in has.items() if 0 < v.sum() < len(v))
    if not options:
        raise SplitUnavailable(f"{field_name}: no choice leaves structures on both sides")
    balanced = [k for k in options if 0.1 <= has[k].mean() <= 0.7]
    pool = balanced or options
    return pool[int(ctx.rng.integers(len(pool)))]


def _element(ctx: SplitContext) -> Split:
    symbols = sorted({s for a in ctx.structures for s in a.get_chemical_symbols()})
    has = {s: np.array([s in a.get_chemical_symbols() for a in ctx.structures]) for s in symbols}
    el = _pick(ctx, "holdout_element", ctx.cfg.holdout_element, has)
    return _make(ctx, SplitName.ELEMENT, has[el], f"held out element {el}", element=el)


def _group(ctx: SplitContext) -> Split:
    f = ctx.features
    has = {g: f.structure_has(f"group:{g}") for g in f.groups_present}
    if not has and ctx.cfg.holdout_group is None:
        raise SplitUnavailable("group: no functional groups were perceived (no molecules?)")
    g = _pick(ctx, "holdout_group", ctx.cfg.holdout_group, has)
    return _make(ctx, SplitName.GROUP, has[g], f"held out functional group {g}", group=g)


SPLITS: dict[SplitName, SplitFn] = {
    SplitName.RANDOM: _random,
    SplitName.CLUSTER: _cluster,
    SplitName.MAXSEP: _maxsep,
    SplitName.SIZE: _size,
    SplitName.ELEMENT: _element,
    SplitName.GROUP: _group,
    SplitName.TEMPERATURE: _temperature,
}


def make_split(
    name: str | SplitName,
    structures: Sequence[Atoms],
    features: Features,
    cfg: DiagnosticsConfig,
    seed: int = 0,
) -> Split:
    """Draw split ``name`` of ``structures``.

    Args:
        name: a :class:`~chemgap.campaigns.spec.SplitName` (or its value).
        structures: the structures to split.
        features: their feature table (SOAP, functional groups).
        cfg: the ``diagnostics`` settings (``n_clusters``, ``holdout_element``, ...).
        seed: with the split's name, the seed of its generator.

    Returns:
        The :class:`Split`.

    Raises:
        SplitUnavailable: the data cannot be split that way.
        BadInput: an unknown name, or a held-out element/group not in the data.
    """
    try:
        key = SplitName(name)
    except ValueError:
        allowed = ", ".join(s.value for s in SplitName)
        raise BadInput(f"split: {name!r} is not one of {allowed}") from None
    rng = np.random.default_rng([seed, zlib.crc32(key.value.encode())])
    ctx = SplitContext(structures=list(structures), features=features, cfg=cfg, rng=rng, seed=seed)
    return SPLITS[key](ctx)


# --------------------------------------------------------------------------- scoring
@dataclass(kw_only=True)
class SplitResult:
    """Errors on the two sides of one split.

    Every figure is a :mod:`chemgap.common.metrics` one of the ensemble-mean prediction of a
    side's structures: ``*_force_mae`` is ``force_mae`` (mean over atoms and Cartesian components
    of |F_pred - F_ref|, eV/Å), ``*_energy_mae`` is ``energy_mae_per_atom`` (mean over
    structures of |E_pred - E_ref| / n_atoms, eV/atom).

    Attributes:
        name, description, seed: the split.
        trained: True when an ensemble was trained on the train side (:func:`run_splits`);
            False when a given ensemble was scored on both sides (:func:`evaluate_splits`).
        n_train / n_id / n_test: structures trained on, scored in distribution, scored OOD.
        id_force_mae / ood_force_mae, id_energy_mae / ood_energy_mae: errors in distribution
            (held-out part of the train side; or the whole train side when not trained) and OOD.
        ood_ratio: ood_force_mae / id_force_mae.
        vs_random: ood_force_mae / the random split's ood_force_mae (when both exist).
        skipped: why the split could not be made (then the errors are NaN).
        split: the split itself (indices), for storage.
    """

    name: str
    description: str = ""
    seed: int = 0
    trained: bool = False
    n_train: int = 0
    n_id: int = 0
    n_test: int = 0
    id_force_mae: float = float("nan")
    ood_force_mae: float = float("nan")
    id_energy_mae: float = float("nan")
    ood_energy_mae: float = float("nan")
    ood_ratio: float = float("nan")
    vs_random: float = float("nan")
    skipped: str | None = None
    wall_s: float = 0.0
    model_dir: str | None = None
    split: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitResult:
        """The result :meth:`to_dict` wrote; unknown keys are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def side_report(
    prediction: HasMeanPrediction,
    structures: Sequence[Atoms],
    system_idx: np.ndarray,
    which: Sequence[int],
) -> ErrorReport:
    """The metrics of a prediction of all ``structures``, restricted to the structures ``which``.

    Args:
        prediction: ensemble-mean prediction of every structure (atoms concatenated in order).
        structures: the labelled structures predicted.
        system_idx: (n_atoms,) the structure of each atom of ``prediction``.
        which: indices of the structures to score.

    Returns:
        :func:`chemgap.common.metrics.error_report` of those structures (NaN figures if none).
    """
    idx = np.sort(np.asarray(which, dtype=int))
    atoms = np.isin(system_idx, idx)
    sub = [structures[i] for i in idx]
    return error_report(
        pred_energy=np.asarray(prediction.energy_mean)[idx],
        ref_energy=reference_energies(sub),
        n_atoms=np.array([len(a) for a in sub], dtype=int),
        pred_forces=np.asarray(prediction.forces_mean)[atoms],
        ref_forces=reference_forces(sub),
        numbers=np.asarray(prediction.numbers)[atoms],
    )


def _relate_to_random(results: list[SplitResult]) -> list[SplitResult]:
    rnd = next((r for r in results if r.name == SplitName.RANDOM and not r.skipped), None)
    for r in results:
        if r.ood_force_mae == r.ood_force_mae and r.id_force_mae:
            r.ood_ratio = r.ood_force_mae / r.id_force_mae
        if rnd is not None and rnd.ood_force_mae:
            r.vs_random = r.ood_force_mae / rnd.ood_force_mae
    return results


def evaluate_splits(
    structures: Sequence[Atoms],
    features: Features,
    cfg: DiagnosticsConfig,
    *,
    prediction: HasMeanPrediction,
    seed: int = 0,
) -> list[SplitResult]:
    """Score one given ensemble on both sides of every split in ``cfg.splits`` (no training).

    Args:
        structures: the labelled structures (every one predicted by ``prediction``).
        features: their feature table.
        cfg: the ``diagnostics`` settings (``splits`` and what the strategies read).
        prediction: the ensemble's mean prediction of ``structures``; each side is scored with
            :func:`side_report` (``force_mae``, ``energy_mae_per_atom``).
        seed: the seed of the splits.

    Returns:
        One :class:`SplitResult` per configured split (skipped ones included), in order.
    """
    out = []
    for name in cfg.splits:
        try:
            split = make_split(name, structures, features, cfg, seed)
        except SplitUnavailable as exc:
            out.append(SplitResult(name=str(name), seed=seed, skipped=str(exc)))
            continue
        id_side = side_report(prediction, structures, features.system_idx, split.train)
        ood_side = side_report(prediction, structures, features.system_idx, split.test)
        out.append(
            SplitResult(
                name=split.name,
                description=split.description,
                seed=seed,
                n_train=len(split.train),
                n_id=len(split.train),
                n_test=len(split.test),
                id_force_mae=id_side.force_mae,
                ood_force_mae=ood_side.force_mae,
                id_energy_mae=id_side.energy_mae_per_atom,
                ood_energy_mae=ood_side.energy_mae_per_atom,
                split=split.to_dict(),
            )
        )
    return _relate_to_random(out)


def run_splits(
    structures: Sequence[Atoms],
    cfg: DiagnosticsConfig,
    model_cfg: ModelConfig,
    ens_cfg: EnsembleConfig,
    workdir: str | Path,
    seed: int = 0,
    *,
    features: Features | None = None,
    executor: Executor | None = None,
    on_split: Callable[[SplitResult], None] | None = None,
) -> list[SplitResult]:
    """Train one ensemble per split on its train side; ID vs OOD force and energy MAE.

    ``cfg.id_fraction`` of each train side (at least one structure) is held out as the
    in-distribution test set; the rest trains an ensemble with ``model_cfg`` / ``ens_cfg``,
    saved in ``workdir/<split>/models``. Splits that cannot be made are reported as skipped.

    Args:
        structures: labelled structures (unlabelled / failed ones are skipped); at least 4.
        cfg: the ``diagnostics`` settings (``splits``, ``id_fraction``, ...).
        model_cfg: the MACE architecture of every split's ensemble.
        ens_cfg: how each ensemble is trained (members, epochs, ...).
        workdir: where the ensembles are saved.
        seed: seed of the splits, the ID hold-out and the training.
        features: a precomputed feature table of the same structures (else computed).
        executor: where the members train (:mod:`chemgap.common.tasks`); None: in this process.
        on_split: receives each result as it is finished (progress).

    Returns:
        One :class:`SplitResult` per configured split, ``trained`` unless skipped.
    """
    from chemgap.agent.diagnostics.features import compute_features
    from chemgap.models.data import usable

    structures = usable(list(structures))
    if len(structures) < 4:
        raise BadInput(f"splits: need at least 4 labelled structures (got {len(structures)})")
    features = features or compute_features(
        structures, environment_classes=cfg.environment_classes, seed=seed
    )
    study = _SplitStudy(
        structures=structures,
        features=features,
        cfg=cfg,
        model_cfg=model_cfg,
        ens_cfg=ens_cfg,
        workdir=Path(workdir),
        seed=seed,
        executor=executor,
    )
    results = []
    for name in cfg.splits:
        res = study.run(name)
        results.append(res)
        if on_split:
            on_split(res)
    return _relate_to_random(results)


@dataclass(kw_only=True)
class _SplitStudy:
    """What every trained split shares: data, settings, where models go, how they train."""

    structures: list[Atoms]
    features: Features
    cfg: DiagnosticsConfig
    model_cfg: ModelConfig
    ens_cfg: EnsembleConfig
    workdir: Path
    seed: int
    executor: Executor | None

    def run(self, name: str | SplitName) -> SplitResult:
        """Make split ``name``, hold out ID data, train on the rest, score ID and OOD."""
        t0 = time.perf_counter()
        seed = self.seed
        try:
            split = make_split(name, self.structures, self.features, self.cfg, seed)
        except SplitUnavailable as exc:
            return SplitResult(name=str(name), seed=seed, skipped=str(exc))
        rng = np.random.default_rng([seed, zlib.crc32(b"id"), zlib.crc32(split.name.encode())])
        train_side = np.array(split.train)
        n_id = max(1, round(self.cfg.id_fraction * len(train_side)))
        if len(train_side) - n_id < 2:
            return SplitResult(
                name=split.name, seed=seed, skipped="train side too small to hold out ID data"
            )
        perm = rng.permutation(train_side)
        id_idx, fit_idx = sorted(perm[:n_id].tolist()), sorted(perm[n_id:].tolist())
        out_dir = self.workdir / split.name / MODELS_DIR
        ens = self._train(split.name, fit_idx, out_dir)
        id_side = _score(ens, [self.structures[i] for i in id_idx])
        ood_side = _score(ens, [self.structures[i] for i in split.test])
        return SplitResult(
            name=split.name,
            description=split.description,
            seed=seed,
            trained=True,
            n_train=len(fit_idx),
            n_id=len(id_idx),
            n_test=len(split.test),
            id_force_mae=id_side.force_mae,
            ood_force_mae=ood_side.force_mae,
            id_energy_mae=id_side.energy_mae_per_atom,
            ood_energy_mae=ood_side.energy_mae_per_atom,
            wall_s=time.perf_counter() - t0,
            model_dir=str(out_dir),
            split={**split.to_dict(), "id": id_idx, "fit": fit_idx},
        )

    def _train(self, name: str, fit_idx: list[int], out_dir: Path) -> EnsembleModel:
        from chemgap.models.data import element_list
        from chemgap.models.ensemble import train_ensemble

        log.info("split %s: training on %d structures", name, len(fit_idx))
        return train_ensemble(
            [self.structures[i] for i in fit_idx],
            self.model_cfg,
            self.ens_cfg,
            out_dir,
            seed=self.seed,
            executor=self.executor,
            task_tag=f"split {name}",
            # the test side may hold elements training lacks
            elements=element_list(self.structures),
        )


def _score(ens: EnsembleModel, structures: list[Atoms]) -> ErrorReport:
    """:func:`chemgap.common.metrics.score` of ``ens``'s mean (uncalibrated) prediction."""
    return score(ens.predict(structures, calibrated=False), structures)
