"""MACE ensembles: train K members as parallel Ray tasks, load them, predict with uncertainty.

Ensemble modes (a ``StrEnum`` plus a registry of planners, see :data:`MODES`):

- ``deep``: K independent members, different seeds, same data (Lakshminarayanan et al. 2017);
- ``bagging``: each member on a bootstrap resample of the training set (Breiman 1996);
- ``snapshot``: one run with a cyclic cosine learning rate, one member per cycle
  (Huang et al., ICLR 2017).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from chemgap.common.tasks import Channel, Executor, Share, Task, resolve_executor, thread_share

from .build import DataStats, build_for_loading, compute_stats
from .calibration import Calibration, Residuals, calibration_quality, fit_calibration
from .config import EnsembleConfig, EnsembleMode, ModelConfig
from .data import (
    Batch,
    bootstrap,
    data_hash,
    element_list,
    make_batch,
    split_valid,
    symbols_to_z,
    usable,
)
from .e0 import AtomicEnergies, resolve_atomic_energies, split_isolated_atoms
from .io import (
    ENSEMBLE_FILE,
    FORMAT_VERSION,
    load_member,
    member_stem,
    model_from_bytes,
    model_to_bytes,
    read_json,
    save_member,
    versions,
    write_json,
)
from .predict import MemberOutputs, Prediction, evaluate_members, summarise
from .train import MemberResult, ProgressFn, train_member

log = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "Ensemble",
    "MemberJob",
    "TrainSetup",
    "plan_jobs",
    "task_resources",
    "train_ensemble",
    "train_job",
]


# --------------------------------------------------------------------------- the loaded ensemble


class Ensemble:
    """K trained MACE members sharing one architecture and element set.

    Attributes:
        members: the torch models (``ScaleShiftMACE``), in eval mode on ``device``.
        model_cfg / ens_cfg: the spec sections they were trained with.
        elements: chemical symbols, ordered by atomic number (the one-hot order).
        calibration: the stored :class:`Calibration` or None (then ``*_cal`` equals raw).
        path: the model directory, when loaded from / saved to one.
    """

    def __init__(
        self,
        members: Sequence[torch.nn.Module],
        *,
        model_cfg: ModelConfig,
        ens_cfg: EnsembleConfig | None = None,
        calibration: Calibration | None = None,
        path: str | Path | None = None,
        metadata: dict | None = None,
        device: str | torch.device | None = None,
    ):
        if not members:
            raise ValueError("ensemble: needs at least one member")
        self.device = torch.device(device) if device else next(members[0].parameters()).device
        self.members = [m.to(self.device).eval() for m in members]
        self.model_cfg = model_cfg
        self.ens_cfg = ens_cfg or EnsembleConfig(members=len(members))
        self.calibration = calibration
        self.path = Path(path) if path is not None else None
        self.metadata = dict(metadata or {})
        zs = [int(z) for z in self.members[0].atomic_numbers.tolist()]
        for m in self.members[1:]:
            if [int(z) for z in m.atomic_numbers.tolist()] != zs:
                raise ValueError("ensemble: members have different element sets")
        self.z_table = zs

    # -- properties
    @property
    def n_members(self) -> int:
        """K, the number of members."""
        return len(self.members)

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the ensemble knows, in its one-hot order."""
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.z_table]

    @property
    def r_max(self) -> float:
        """Cutoff radius of the members' graphs, Å."""
        return float(self.members[0].r_max)

    @property
    def dtype(self) -> str:
        """``float32`` or ``float64``."""
        return str(next(self.members[0].parameters()).dtype).removeprefix("torch.")

    def to(self, device: str | torch.device) -> Ensemble:
        """Move every member to ``device``; returns self."""
        self.device = torch.device(device)
        self.members = [m.to(self.device) for m in self.members]
        return self

    # -- graph construction and evaluation (reusable by the explorer)
    def make_batch(self, structures: Sequence[Atoms], *, labels: bool = False) -> Batch:
        """One batched graph of ``structures`` for this ensemble (cutoff, elements, dtype)."""
        return make_batch(
            structures, self.z_table, self.r_max, self.dtype, self.device, labels=labels
        )

    def evaluate(
        self, batch: Batch, *, compute_stress: bool = False, node_features: bool = False
    ) -> MemberOutputs:
        """All members on one prepared batch: energies (K, n_struct), forces (K, n_atoms, 3)."""
        return evaluate_members(
            self.members, batch, compute_stress=compute_stress, node_features=node_features
        )

    # -- predictions
    def predict(
        self,
        structures: Sequence[Atoms],
        *,
        compute_stress: bool = False,
        calibrated: bool = True,
        max_atoms_per_batch: int = 20000,
    ) -> Prediction:
        """Ensemble mean and std for ``structures`` (one batched graph per member per chunk).

        The stored calibration (if any, and ``calibrated``) fills the ``*_cal`` fields.
        Structures are grouped into chunks of at most ``max_atoms_per_batch`` atoms.
        """
        structures = list(structures)
        if not structures:
            raise ValueError("predict: got no structures")
        parts = []
        for chunk in chunk_by_atoms(structures, max_atoms_per_batch):
            batch = self.make_batch(chunk)
            outputs = self.evaluate(batch, compute_stress=compute_stress)
            cal = self.calibration if calibrated else None
            parts.append(
                summarise(
                    outputs,
                    batch,
                    energy_scale=cal.energy_scale if cal else 1.0,
                    force_scale_per_atom=cal.force_scales_for(batch.numbers) if cal else None,
                    calibrated=cal is not None,
                )
            )
        return parts[0] if len(parts) == 1 else _concat(parts)

    def descriptors(
        self, structures: Sequence[Atoms], *, members: Sequence[int] | None = None
    ) -> np.ndarray:
        """Per-structure descriptors: members' invariant node features averaged per structure.

        Member feature spaces are not aligned, so the chosen members' averages are concatenated:
        shape (n_struct, d · n_chosen), d = invariant channels summed over interaction layers.
        """
        chosen = [self.members[i] for i in (members if members is not None else range(1))]
        out = []
        for chunk in chunk_by_atoms(list(structures), 20000):
            batch = self.make_batch(chunk)
            res = evaluate_members(chosen, batch, node_features=True)
            idx = torch.as_tensor(batch.system_idx, device=self.device)
            per = []
            for feats in res.node_feats or []:
                sums = torch.zeros(batch.n_struct, feats.shape[1], dtype=feats.dtype)
                sums = sums.to(self.device).index_add_(0, idx, feats)
                counts = torch.as_tensor(batch.n_atoms, dtype=feats.dtype, device=self.device)
                per.append((sums / counts[:, None]).double().cpu().numpy())
            out.append(np.concatenate(per, axis=1))
        return np.concatenate(out, axis=0)

    # -- uncertainty calibration
    def calibrate(
        self,
        labelled: Sequence[Atoms],
        *,
        per_element: bool = True,
        min_atoms: int = 10,
        save: bool = True,
    ) -> Calibration:
        """Fit the uncertainty scales on held-out ``labelled`` data and keep them.

        The fit is :func:`chemgap.models.calibration.fit_calibration` on the
        :class:`~chemgap.models.calibration.Residuals` of this ensemble's raw prediction; every
        later :meth:`predict` applies it and, with ``save`` and a model directory, it is written
        into ``ensemble.json``. ``metrics`` = ``{"raw": ..., "calibrated": ...}``
        (:func:`chemgap.models.calibration.calibration_quality`) is measured on the *fitting*
        data, so it describes the fit, not its transfer (there the calibrated RMS spread equals
        the RMS error by construction): the campaign scores the calibration on other data (a
        test set, its out-of-distribution part). A scale that could not be fitted is 1.0 and
        ``Calibration.uncalibrated`` says why. Needs ≥ 2 members.
        """
        if self.n_members < 2:
            raise ValueError("calibrate: needs an ensemble of at least 2 members")
        structures = usable(labelled)
        if not structures:
            raise ValueError("calibrate: no labelled structures (energy, forces, status ok)")
        res = Residuals.from_prediction(self.predict(structures, calibrated=False), structures)
        cal = fit_calibration(res, per_element=per_element, min_atoms=min_atoms)
        cal.metrics = {
            "raw": calibration_quality(res, None),
            "calibrated": calibration_quality(res, cal),
        }
        self.calibration = cal
        log.info(
            "calibration: energy x%.3g, forces x%.3g; miscalibration area %.3f -> %.3f",
            cal.energy_scale,
            cal.force_scale,
            cal.metrics["raw"]["miscalibration_area_forces"],
            cal.metrics["calibrated"]["miscalibration_area_forces"],
        )
        if save and self.path is not None:
            self.save_metadata()
        return cal

    def member_metrics(self) -> list[dict]:
        """Each member's training metrics (epochs, stop reason, validation RMSEs) as saved in
        its ``member_KK.json``; an empty dict for a member saved without one.
        """
        out = []
        for k in range(self.n_members):
            path = self.path / f"{member_stem(k)}.json" if self.path is not None else None
            out.append(read_json(path).get("metrics", {}) if path and path.exists() else {})
        return out

    # -- persistence
    def save(self, path: str | Path, *, member_metadata: Sequence[dict] | None = None) -> Path:
        """Write every member (``.model``, ``.pt``, ``.json``) and ``ensemble.json``."""
        path = Path(path)
        for k, model in enumerate(self.members):
            meta = dict(member_metadata[k]) if member_metadata else {}
            meta.setdefault("member", k)
            meta.setdefault("model", self.model_cfg.model_dump(mode="json"))
            meta.setdefault("ensemble", self.ens_cfg.model_dump(mode="json"))
            meta.setdefault("stats", _stats_of(model).to_dict())
            meta.setdefault("versions", versions())
            save_member(model, path, k, meta)
        self.path = path
        self.save_metadata()
        return path

    def save_metadata(self) -> None:
        """(Re)write ``ensemble.json`` (configs, elements, calibration) in ``self.path``."""
        if self.path is None:
            raise ValueError("ensemble: no model directory to save metadata in")
        meta = {
            **self.metadata,
            "format": FORMAT_VERSION,
            "elements": self.elements,
            "n_members": self.n_members,
            "members": [f"{member_stem(k)}.model" for k in range(self.n_members)],
            "model": self.model_cfg.model_dump(mode="json"),
            "ensemble": self.ens_cfg.model_dump(mode="json"),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "versions": versions(),
        }
        write_json(self.path / ENSEMBLE_FILE, meta)
        self.metadata = meta

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> Ensemble:
        """Load a model directory written by :meth:`save` / :func:`train_ensemble`."""
        path = Path(path)
        meta_file = path / ENSEMBLE_FILE
        if not meta_file.exists():
            raise FileNotFoundError(2, "not a model directory (no ensemble.json)", str(path))
        meta = read_json(meta_file)
        model_cfg = ModelConfig.from_saved(meta["model"])
        ens_cfg = EnsembleConfig(**meta["ensemble"])
        dev = torch.device(device) if device else torch.device("cpu")
        members = []
        for k in range(int(meta["n_members"])):
            mfile = path / f"{member_stem(k)}.json"
            stats = DataStats(**read_json(mfile)["stats"]) if mfile.exists() else None

            def rebuild(stats=stats):
                return build_for_loading(model_cfg, stats)

            members.append(load_member(path, k, rebuild if stats else None, dev))
        cal = meta.get("calibration")
        return cls(
            members,
            model_cfg=model_cfg,
            ens_cfg=ens_cfg,
            calibration=Calibration.from_dict(cal) if cal else None,
            path=path,
            metadata=meta,
            device=dev,
        )


def _stats_of(model: torch.nn.Module) -> DataStats:
    """The build constants of a member, read back from the model."""
    e0 = torch.atleast_2d(model.atomic_energies_fn.atomic_energies).detach().cpu()
    return DataStats(
        z_table=[int(z) for z in model.atomic_numbers.tolist()],
        atomic_energies=[float(x) for x in e0[0]],
        avg_num_neighbors=float(model.interactions[0].avg_num_neighbors),
        shift=float(torch.atleast_1d(model.scale_shift.shift)[0]),
        scale=float(torch.atleast_1d(model.scale_shift.scale)[0]),
    )


def chunk_by_atoms(structures: list[Atoms], max_atoms: int) -> list[list[Atoms]]:
    """``structures`` in order, cut into consecutive batches of at most ``max_atoms`` atoms
    (a structure larger than that is a batch of its own).
    """
    out, cur, n = [], [], 0
    for a in structures:
        if cur and n + len(a) > max_atoms:
            out.append(cur)
            cur, n = [], 0
        cur.append(a)
        n += len(a)
    if cur:
        out.append(cur)
    return out


def _concat(parts: list[Prediction]) -> Prediction:
    offsets = np.cumsum([0] + [p.n_struct for p in parts[:-1]])
    fields = {}
    for name in Prediction.__dataclass_fields__:
        vals = [getattr(p, name) for p in parts]
        if name == "calibrated":
            fields[name] = vals[0]
        elif name == "system_idx":
            fields[name] = np.concatenate([v + o for v, o in zip(vals, offsets, strict=True)])
        elif vals[0] is None:
            fields[name] = None
        elif name in ("energy_members", "forces_members"):
            fields[name] = np.concatenate(vals, axis=1)
        else:
            fields[name] = np.concatenate(vals, axis=0)
    return Prediction(**fields)


# --------------------------------------------------------------------------- planning the members


@dataclass(kw_only=True)
class MemberJob:
    """One training task: which members it produces and on which data.

    Attributes:
        members: indices of the members this task produces (K for a snapshot run, else one).
        seed: the task's seed.
        train: its training structures (a bootstrap resample for bagging).
        snapshots: 1, or K for a snapshot run.
        init_source: index of the source member to initialise from (transfer), or None.
    """

    members: list[int]
    seed: int
    train: list[Atoms]
    snapshots: int = 1
    init_source: int | None = None


Planner = Callable[[list[Atoms], int, int], list[MemberJob]]


def _plan_deep(train: list[Atoms], k: int, seed: int) -> list[MemberJob]:
    return [MemberJob(members=[i], seed=seed + 1000 * i, train=train) for i in range(k)]


def _plan_bagging(train: list[Atoms], k: int, seed: int) -> list[MemberJob]:
    jobs = []
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        jobs.append(MemberJob(members=[i], seed=seed + 1000 * i, train=bootstrap(train, rng)))
    return jobs


def _plan_snapshot(train: list[Atoms], k: int, seed: int) -> list[MemberJob]:
    return [MemberJob(members=list(range(k)), seed=seed, train=train, snapshots=k)]


MODES: dict[EnsembleMode, Planner] = {
    EnsembleMode.DEEP: _plan_deep,
    EnsembleMode.BAGGING: _plan_bagging,
    EnsembleMode.SNAPSHOT: _plan_snapshot,
}


def plan_jobs(train: list[Atoms], ens_cfg: EnsembleConfig, seed: int) -> list[MemberJob]:
    """The training tasks of ``ens_cfg.mode`` (see :data:`MODES`)."""
    try:
        planner = MODES[EnsembleMode(ens_cfg.mode)]
    except ValueError:
        allowed = ", ".join(m.value for m in EnsembleMode)
        raise ValueError(f"ensemble.mode: {ens_cfg.mode!r} is not one of {allowed}") from None
    return planner(train, ens_cfg.members, seed)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True, kw_only=True)
class TrainSetup:
    """What every member task of one ensemble shares (shipped once per task).

    Attributes:
        valid: validation structures (early stopping), the same for every member.
        model_cfg / ens_cfg: architecture and training settings.
        stats: data constants (element table, E0s, scale, shift), one for every member.
        freeze: parameter-name prefixes kept fixed while fine-tuning.
        threads: torch intra-op threads per task (None: leave torch's setting).
        share: the CPUs the tasks share (:class:`~chemgap.common.tasks.Share`): each task's
            threads follow it epoch by epoch, so members still running take the cores of
            those that finished (None: ``threads`` throughout).
    """

    valid: list[Atoms]
    model_cfg: ModelConfig
    ens_cfg: EnsembleConfig
    stats: DataStats
    freeze: tuple[str, ...] = ()
    threads: int | None = None
    share: Share | None = None


def train_job(
    job: MemberJob,
    setup: TrainSetup,
    init_bytes: bytes | None = None,
    channel: Channel | None = None,
) -> tuple[list[bytes], list[dict]]:
    """Body of one training task: train ``job``, return its models as bytes and their metrics.

    Models travel as bytes so that a task's result needs no torch pickling by Ray; progress
    events go through ``channel`` (:mod:`chemgap.common.tasks`).
    """
    init = model_from_bytes(init_bytes) if init_bytes is not None else None
    share, key = setup.share, job.members[0]
    if share is not None:
        share.join(key)
    try:
        result = _train_job_member(job, setup, init, channel)
    finally:
        if share is not None:
            share.leave(key)
    return [model_to_bytes(m) for m in result.models], result.metrics


def _train_job_member(
    job: MemberJob, setup: TrainSetup, init: torch.nn.Module | None, channel: Channel | None
) -> MemberResult:
    return train_member(
        job.train,
        setup.model_cfg,
        setup.ens_cfg,
        seed=job.seed,
        valid=setup.valid,
        member=job.members[0],
        snapshots=job.snapshots,
        init_model=init,
        stats=setup.stats,
        elements=[chemical_symbols[z] for z in setup.stats.z_table],  # one table for all
        freeze=setup.freeze,
        threads=setup.share.threads if setup.share is not None else setup.threads,
        progress=channel.put if channel is not None else None,
    )


def task_resources(
    n_tasks: int, ens_cfg: EnsembleConfig, available: dict[str, float]
) -> tuple[float, float, int]:
    """(num_cpus, num_gpus, torch threads at the start) per training task from ``available``.

    With GPUs each task gets ``ens_cfg.gpus_per_member`` (default an equal share, at most one)
    and one CPU. Without, when the members divide evenly over the CPUs (K = 4 on 2 cores)
    they run C at a time, one core each; otherwise every task runs at once (up to twice as
    many as there are CPUs, to bound memory), each asking Ray for its fraction of the CPUs:
    K = 3 on 2 cores run side by side on a thread each rather than two, then one alone with a
    core idle. Either way, as members finish, the :class:`~chemgap.common.tasks.Share` gives
    their cores to those still running (measured: benchmarks/bench_members.py).
    """
    cpus = max(1, int(available.get("CPU", os.cpu_count() or 1)))
    gpus = float(available.get("GPU", 0.0))
    if gpus > 0:
        share = ens_cfg.gpus_per_member or min(1.0, gpus / max(n_tasks, 1))
        return 1.0, share, max(1, cpus // max(n_tasks, 1))
    even = n_tasks >= cpus and n_tasks % cpus == 0  # rounds of C fill every core
    concurrent = cpus if even else max(1, min(n_tasks, 2 * cpus))
    return cpus / concurrent, 0.0, thread_share(cpus, concurrent)


def scaled_budget(
    train: Sequence[Atoms],
    ens_cfg: EnsembleConfig,
    valid: Sequence[Atoms] | None = None,
    seed: int = 0,
) -> EnsembleConfig:
    """``ens_cfg`` with its unset budget fields scaled to the training part of ``train`` as
    :func:`train_ensemble` with the same ``valid`` and ``seed`` scales them (see
    :meth:`~chemgap.models.config.EnsembleConfig.scaled_to`).
    """
    data, _ = _train_valid(split_isolated_atoms(train)[0], valid, ens_cfg, seed)
    return ens_cfg.scaled_to(len(data), sum(len(a) for a in data))


def _train_valid(
    train: Sequence[Atoms], valid: Sequence[Atoms] | None, ens_cfg: EnsembleConfig, seed: int
) -> tuple[list[Atoms], list[Atoms]]:
    """The usable training structures and the validation set: ``valid``, or a seeded random
    ``ens_cfg.valid_fraction`` of ``train`` (the same split for all members).
    """
    data = usable(train)
    if valid is None:
        return split_valid(data, ens_cfg.valid_fraction, np.random.default_rng(seed))
    if not data:
        raise ValueError("training data: no labelled structures (label_status 'ok' with labels)")
    valid_set = usable(valid)
    if not valid_set:
        raise ValueError("valid: no labelled structures in the validation set")
    return data, valid_set


def budget_text(ens_cfg: EnsembleConfig) -> str:
    """``≤ 80 epochs, patience 16, ≤ 346 s per member`` for a scaled config (a snapshot
    ensemble: ``≤ 320 epochs in 4 cycles, ≤ 1382 s in all``; it has no patience).
    """
    if ens_cfg.mode == EnsembleMode.SNAPSHOT:
        return (
            f"≤ {ens_cfg.max_epochs} epochs in {ens_cfg.members} cycles, "
            f"≤ {ens_cfg.wall_time_s:g} s in all"
        )
    return (
        f"≤ {ens_cfg.max_epochs} epochs, patience {ens_cfg.patience}, "
        f"≤ {ens_cfg.wall_time_s:g} s per member"
    )


@dataclass(kw_only=True)
class _Source:
    """Transfer initialisation: the source ensemble and its members mapped to the target."""

    ensemble: Ensemble
    models: list[torch.nn.Module]


def _transfer_source(
    init_from: str | Path | Ensemble,
    element_map: dict[str, str] | str | None,
    data: list[Atoms],
    valid: list[Atoms],
    refit_e0: bool,
    elements: Sequence[str] | None = None,
) -> _Source:
    from .transfer import refit_atomic_energies, transfer_model

    source = init_from if isinstance(init_from, Ensemble) else Ensemble.load(init_from)
    target_elements = list(elements) if elements else element_list([*data, *valid])
    models = []
    for m in source.members:
        tm = transfer_model(m, source.model_cfg, element_map or {}, target_elements=target_elements)
        if refit_e0:
            refit_atomic_energies(tm, data)
        models.append(tm)
    return _Source(ensemble=source, models=models)


def _run_jobs(
    jobs: list[MemberJob],
    setup: TrainSetup,
    init_bytes: dict[int, bytes],
    executor: Executor,
    progress: ProgressFn | None,
    tag: str,
) -> dict[int, tuple[list[torch.nn.Module], list[dict]]]:
    """Run the member tasks on ``executor``; results keyed by each job's first member."""
    available = executor.resources()
    num_cpus, num_gpus, threads = task_resources(len(jobs), setup.ens_cfg, available)
    if executor.parallel:
        setup = replace(setup, threads=threads)
        if num_gpus == 0 and len(jobs) > 1:  # threads follow the members still running
            cpus = int(available.get("CPU", 1))
            share = executor.share(cpus, running=max(1, round(cpus / num_cpus)))
            setup = replace(setup, share=share)
    channel = executor.channel(progress) if progress else None
    k_total = setup.ens_cfg.members
    tasks = []
    for job in jobs:
        label = f"{job.members[0] + 1}/{k_total}" if job.snapshots == 1 else f"snapshots ×{k_total}"
        init = init_bytes.get(job.init_source) if job.init_source is not None else None
        tasks.append(
            Task(
                fn=train_job,
                args=(job, setup, init, channel),
                name=f"train member {label}" + (f" · {tag}" if tag else ""),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )
        )
    log.info("training %d task(s): %s CPU, %s GPU each", len(jobs), num_cpus, num_gpus)
    results = {}
    for done in executor.run(tasks):
        blobs, metrics = done.result()
        results[jobs[done.index].members[0]] = ([model_from_bytes(b) for b in blobs], metrics)
    return results


def _member_metadata(
    jobs: list[MemberJob],
    results: dict[int, tuple[list[torch.nn.Module], list[dict]]],
    ens_cfg: EnsembleConfig,
    provenance: dict,
) -> tuple[list[torch.nn.Module], list[dict]]:
    members, meta = [], []
    for job in jobs:
        models, metrics = results[job.members[0]]
        for k, model, met in zip(job.members, models, metrics, strict=True):
            members.append(model)
            meta.append(
                {
                    "member": k,
                    "seed": job.seed,
                    "mode": str(ens_cfg.mode),
                    "data_hash": data_hash(job.train),
                    "metrics": met,
                    **provenance,
                }
            )
    return members, meta


def train_ensemble(
    train: Sequence[Atoms],
    model_cfg: ModelConfig,
    ens_cfg: EnsembleConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    valid: Sequence[Atoms] | None = None,
    init_from: str | Path | Ensemble | None = None,
    element_map: dict[str, str] | str | None = None,
    freeze: Sequence[str] = (),
    refit_e0: bool = True,
    progress: ProgressFn | None = None,
    task_tag: str = "",
    executor: Executor | None = None,
    elements: Sequence[str] | None = None,
    isolated_atom_energies: Mapping[str, float] | None = None,
    isolated_source: str = "oracle",
    e0_note: str = "",
) -> Ensemble:
    """Train ``ens_cfg.members`` MACE members and save them in ``out_dir``.

    Members are tasks named ``train member k/K · <task_tag>`` on ``executor``
    (:mod:`chemgap.common.tasks`; None runs them one after another in this process). On a Ray
    executor each task gets one GPU share when the cluster has GPUs, else the cluster's CPUs
    split between the members that run at once.

    Args:
        train: labelled structures (unlabelled / failed ones are skipped).
        model_cfg: architecture.
        ens_cfg: ensemble size, mode and training settings.
        out_dir: the model directory to write.
        seed: seeds the validation split and every member.
        valid: validation structures for early stopping; default a random
            ``ens_cfg.valid_fraction`` of ``train`` (the same split for all members).
        init_from: a model directory or Ensemble to initialise every member from (member k
            from source member k mod K_source), mapped through ``element_map`` (e.g.
            ``"Si=Ge"``); ``refit_e0`` then shifts E0s by least squares on the target data.
        element_map: source -> target element mapping for ``init_from``.
        freeze: parameter prefixes kept fixed while fine-tuning (see ``freeze_blocks``).
        refit_e0: refit the transferred atomic energies on the target data.
        progress: receives a :class:`ProgressEvent` per member epoch (driver process).
        task_tag: appended to task names (``iter 3``).
        executor: where the member tasks run (default in-process).
        elements: the model's element set (default: the elements of train + valid); name
            elements the data lack to score structures holding them later (an element split).
        isolated_atom_energies: element -> the isolated atom's energy (eV), computed by the
            caller with the oracle, for ``model_cfg.e0 == "isolated"``; ``IsolatedAtom``
            frames in ``train`` win over them (:mod:`chemgap.models.e0`).
        isolated_source: what those energies came from, for the record (``oracle emt``).
        e0_note: why the E0 method differs from the one the user asked for, for the record.

    Returns:
        The trained :class:`Ensemble`, saved in ``out_dir``.
    """
    t0 = time.perf_counter()
    train, frames = split_isolated_atoms(train)
    data, valid_set = _train_valid(train, valid, ens_cfg, seed)
    if ens_cfg.unscaled:
        ens_cfg = ens_cfg.scaled_to(len(data), sum(len(a) for a in data))
        log.info("budget scaled to %d training structures: %s", len(data), budget_text(ens_cfg))
    source = None
    if init_from is not None:
        source = _transfer_source(init_from, element_map, data, valid_set, refit_e0, elements)
        model_cfg = source.ensemble.model_cfg
        stats = _stats_of(source.models[0])
        symbols = [chemical_symbols[z] for z in stats.z_table]
        e0 = AtomicEnergies(
            method="transfer",
            values=dict(zip(symbols, stats.atomic_energies, strict=True)),
            sources=dict.fromkeys(
                symbols, "source model, shifted by least squares" if refit_e0 else "source model"
            ),
        )
    else:
        z_table = symbols_to_z(elements or element_list([*data, *valid_set]))
        e0 = resolve_atomic_energies(
            model_cfg.e0,
            data,
            z_table,
            frames=frames,
            isolated=isolated_atom_energies,
            isolated_source=isolated_source,
        )
        e0.note = e0_note
        stats = compute_stats(data, z_table, model_cfg.r_max, e0)
    jobs = plan_jobs(data, ens_cfg, seed)
    if source is not None:
        for job in jobs:
            job.init_source = job.members[0] % len(source.models)
    init_bytes = {i: model_to_bytes(m) for i, m in enumerate(source.models if source else [])}
    setup = TrainSetup(
        valid=valid_set, model_cfg=model_cfg, ens_cfg=ens_cfg, stats=stats, freeze=tuple(freeze)
    )
    results = _run_jobs(jobs, setup, init_bytes, resolve_executor(executor), progress, task_tag)
    provenance = {
        "init_from": str(source.ensemble.path) if source and source.ensemble.path else None,
        "element_map": element_map if isinstance(element_map, str | None) else dict(element_map),
    }
    members, member_meta = _member_metadata(jobs, results, ens_cfg, provenance)
    ens = Ensemble(
        members,
        model_cfg=model_cfg,
        ens_cfg=ens_cfg,
        metadata={
            "data_hash": data_hash(data),
            "n_train": len(data),
            "n_valid": len(valid_set),
            "seed": seed,
            "mode": str(ens_cfg.mode),
            **provenance,
            "freeze": list(freeze),
            "e0": e0.to_dict(),
            "wall_s": time.perf_counter() - t0,
        },
    )
    ens.save(out_dir, member_metadata=member_meta)
    return ens
