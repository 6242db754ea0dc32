"""Train one ensemble member (or one snapshot run) of a MACE potential.

Loss (as in mace-torch's weighted loss): ``w_E·mean((ΔE/N)²) + w_F·mean(ΔF²) + w_S·mean(Δσ²)``
with energies per atom (eV/atom), forces (eV/Å) and stress (eV/Å³, periodic structures that
carry one). Adam, or AdamW when ``weight_decay > 0`` (Loshchilov & Hutter 2019); an exponential
moving average of the weights (the model that is validated and kept); early stopping on the
validation loss, an epoch cap and a wall-time cap.

Two stages, as mace-torch trains (Batatia et al., NeurIPS 2022; its ``--stage_two``): the
first with forces weighted over energies, the last ``stage_two_fraction`` of the epochs and of
the wall cap with the energy weighted up (mace's 1000 : 100) at a lower learning rate, so the
energies — what formation, surface and binding energies are differences of — are fitted once the
forces have shaped the potential. Stage one ending early (patience, its share of the wall cap)
starts stage two at once, as in mace. Stage two starts from stage one's best (EMA) weights,
keeps the optimiser state, and keeps its own best weights by its own validation loss; mace
averages stage-two weights with SWA instead, which chemgap's EMA already does.

Learning-rate schedules: ``deep`` and ``bagging`` members use reduce-on-plateau on the validation
loss; ``snapshot`` runs a cosine schedule with warm restarts and keeps the weights at the end of
each of K cycles (Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms

from chemgap.common.metrics import energy_errors_per_atom, rmse

from .build import DataStats, build_model, compute_stats
from .config import EnsembleConfig, ModelConfig
from .contraction import sparse_contractions
from .data import element_list, split_valid, symbols_to_z, to_graphs, usable
from .e0 import resolve_atomic_energies, split_isolated_atoms

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ProgressEvent:
    """One epoch of one member, for progress bars (a callback receives these)."""

    member: int
    epoch: int
    max_epochs: int
    train_loss: float
    valid_loss: float
    lr: float
    done: bool = False
    wall_time_s: float = math.inf  # the member's wall-time cap, s
    elapsed_s: float = 0.0  # since the member's task started (what the cap counts), s
    stopped: str = ""  # on the last event: "patience", "epochs", "wall_time" or "cycles"
    stage: int = 1  # training stage (2: energy-weighted)


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(kw_only=True)
class MemberResult:
    """What a training run returns.

    Attributes:
        models: trained members on CPU (one, or K for a snapshot run).
        metrics: per model: epochs, best_valid_loss, valid energy RMSE (eV/atom), valid force
            RMSE (eV/Å), wall_s, train_s, structures_per_s, stopped ("patience", "epochs",
            "wall_time", "cycles").
        stats: the data constants the model was built with.
    """

    models: list[torch.nn.Module]
    metrics: list[dict]
    stats: DataStats
    history: list[dict] = field(default_factory=list)


def pick_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def freeze_blocks(model: torch.nn.Module, blocks: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name starts with one of ``blocks``.

    Block names are module prefixes of ``ScaleShiftMACE``: ``node_embedding``,
    ``radial_embedding``, ``interactions``, ``interactions.0``, ``products``, ``products.1``,
    ``readouts``, ... Returns the frozen parameter names; an unknown prefix is a ValueError.
    """
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for block in blocks:
        hit = [n for n in names if n == block or n.startswith(block + ".")]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze: {block!r} names no parameters; allowed prefixes: {tops}")
        frozen.extend(hit)
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen


def _loss_terms(out: dict, batch, weights: tuple[float, float, float]) -> torch.Tensor:
    """The weighted loss of one batch; ``weights`` (energy, forces, stress)."""
    w_e, w_f, w_s = weights
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    loss = w_e * torch.mean(((out["energy"] - batch.energy) / n_atoms) ** 2)
    loss = loss + w_f * torch.mean((out["forces"] - batch.forces) ** 2)
    if w_s > 0 and out.get("stress") is not None:
        w = batch.stress_weight.view(-1, 1, 1)
        if float(w.sum()) > 0:
            diff = torch.where(w > 0, out["stress"] - batch.stress, 0.0)
            loss = loss + w_s * (w * diff**2).sum() / (9.0 * w.sum())
    return loss


def _forward(model, batch, cfg: EnsembleConfig, training: bool) -> dict:
    """Energy, forces (and stress when weighted) with the sparse symmetric contraction
    (:mod:`chemgap.models.contraction`; mace's class is back in place when this returns, so
    copies and saved files are plain mace models).
    """
    want_stress = cfg.stress_weight > 0 and float(batch.stress_weight.sum()) > 0
    with sparse_contractions([model]):
        return model(
            batch.to_dict(), training=training, compute_force=True, compute_stress=want_stress
        )


def evaluate_loader(model, loader, cfg: EnsembleConfig, stage: int = 1) -> dict:
    """Loss (with ``stage``'s weights) and errors of ``model`` on a loader: ``loss``,
    ``rmse_e_per_atom`` (eV/atom) and ``rmse_f`` (per force component, eV/Å), as
    :mod:`chemgap.common.metrics` defines them.
    """
    model.eval()
    weights = cfg.loss_weights(stage)
    losses, de, df = [], [], []
    for batch in loader:
        out = _forward(model, batch, cfg, training=False)
        losses.append(float(_loss_terms(out, batch, weights).detach()))
        n_atoms = batch.ptr[1:] - batch.ptr[:-1]
        de.append(
            energy_errors_per_atom(
                out["energy"].detach().cpu().numpy(),
                batch.energy.detach().cpu().numpy(),
                n_atoms.cpu().numpy(),
            )
        )
        df.append((out["forces"] - batch.forces).detach().cpu().numpy())
    return {
        "loss": float(np.mean(losses)) if losses else 0.0,
        "rmse_e_per_atom": rmse(np.concatenate(de)) if de else float("nan"),
        "rmse_f": rmse(np.concatenate(df)) if df else float("nan"),
    }


class _EMA:
    """Exponential moving average of parameters with the usual warm-up min(d, (1+t)/(10+t))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.steps = 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for pe, p in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)


def _loaders(train_graphs, valid_graphs, batch_size: int, seed: int):
    from mace.tools.torch_geometric.dataloader import DataLoader

    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_graphs,
        batch_size=min(batch_size, len(train_graphs)),
        shuffle=True,
        drop_last=False,
        generator=gen,
    )
    valid_loader = DataLoader(valid_graphs, batch_size=batch_size, shuffle=False)
    return train_loader, valid_loader


def _prepare(
    train: Sequence[Atoms],
    valid: Sequence[Atoms] | None,
    ens_cfg: EnsembleConfig,
    seed: int,
    elements: Sequence[str] | None,
) -> tuple[list[Atoms], list[Atoms], list[int]]:
    train = usable(train)
    if valid is None:
        train, valid = split_valid(train, ens_cfg.valid_fraction, np.random.default_rng(seed))
    else:
        valid = usable(valid)
        if not valid:
            raise ValueError("valid: no labelled structures in the validation set")
    if not train:
        raise ValueError("train: no labelled structures (label_status 'ok' with energy, forces)")
    z = symbols_to_z(elements) if elements else symbols_to_z(element_list([*train, *valid]))
    return list(train), list(valid), z


@dataclass(kw_only=True)
class _Run:
    """Everything one training run holds while it runs (see :func:`train_member`)."""

    model: torch.nn.Module
    ens_cfg: EnsembleConfig
    member: int
    snapshots: int
    device: torch.device
    train_loader: Any
    valid_loader: Any
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    plateau: Any
    ema: _EMA | None
    progress: ProgressFn | None
    t_start: float
    threads: Callable[[], int] | None = None  # the member's share of the cores, per epoch
    history: list[dict] = field(default_factory=list)
    kept: list[torch.nn.Module] = field(default_factory=list)
    kept_epochs: list[int] = field(default_factory=list)
    best: float = math.inf
    best_state: dict | None = None
    best_epoch: int = 0
    since_best: int = 0
    n_seen: int = 0
    cycle_epoch: int = 0
    cycle_start: float = 0.0
    stage: int = 1
    stage_two_from: int | None = None  # the first epoch of stage two
    stage_one_stopped: str = ""  # what ended stage one ("patience", "epochs", "wall_time")

    @property
    def snapshot_mode(self) -> bool:
        return self.snapshots > 1

    @property
    def cycle_epochs(self) -> int:
        cfg = self.ens_cfg
        return max(1, cfg.max_epochs // self.snapshots) if self.snapshot_mode else cfg.max_epochs

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model that is validated and kept: the EMA copy when there is one."""
        return self.ema.model if self.ema else self.model


def _start_run(
    model: torch.nn.Module,
    ens_cfg: EnsembleConfig,
    loaders: tuple[Any, Any],
    *,
    member: int,
    snapshots: int,
    device: torch.device,
    progress: ProgressFn | None,
    t_start: float,
    threads: Callable[[], int] | None = None,
) -> _Run:
    """Optimiser (Adam, AdamW with weight decay; AMSGrad), schedule and EMA for one run."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if ens_cfg.weight_decay > 0 else torch.optim.Adam
    opt = opt_cls(params, lr=ens_cfg.lr, weight_decay=ens_cfg.weight_decay, amsgrad=True)
    plateau = None
    if snapshots == 1:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            factor=0.5,
            patience=max(2, ens_cfg.patience // 4),
            min_lr=ens_cfg.lr * ens_cfg.min_lr_factor,
        )
    ema = _EMA(model, ens_cfg.ema_decay) if ens_cfg.ema_decay > 0 and snapshots == 1 else None
    run = _Run(
        model=model,
        ens_cfg=ens_cfg,
        member=member,
        snapshots=snapshots,
        device=device,
        train_loader=loaders[0],
        valid_loader=loaders[1],
        params=params,
        opt=opt,
        plateau=plateau,
        ema=ema,
        progress=progress,
        t_start=t_start,
        threads=threads if callable(threads) else None,
    )
    run.best_state = copy.deepcopy(run.evaluated.state_dict())
    run.cycle_start = time.perf_counter()
    return run


def _train_epoch(run: _Run) -> float:
    """One pass over the training data; returns the mean training loss."""
    cfg, min_lr = run.ens_cfg, run.ens_cfg.lr * run.ens_cfg.min_lr_factor
    run.model.train()
    losses = []
    steps_per_epoch = len(run.train_loader)
    for step, batch in enumerate(run.train_loader):
        batch = batch.to(run.device)
        if run.snapshot_mode:  # cosine annealing within the cycle (SGDR)
            t = (run.cycle_epoch + step / steps_per_epoch) / run.cycle_epochs
            for g in run.opt.param_groups:
                g["lr"] = min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * t))
        run.opt.zero_grad(set_to_none=True)
        out = _forward(run.model, batch, cfg, training=True)
        loss = _loss_terms(out, batch, cfg.loss_weights(run.stage))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.params, 10.0)
        run.opt.step()
        if run.ema:
            run.ema.update(run.model)
        losses.append(float(loss.detach()))
        run.n_seen += int(batch.num_graphs)
    return float(np.mean(losses))


def _after_snapshot_epoch(run: _Run, epoch: int) -> str | None:
    """Close the cycle when it has run its epochs or its wall-time share; "cycles" when all
    K snapshots are kept.
    """
    run.cycle_epoch += 1
    cycle_over = run.cycle_epoch >= run.cycle_epochs
    if not cycle_over and time.perf_counter() - run.cycle_start > (
        run.ens_cfg.wall_time_s / run.snapshots
    ):
        cycle_over = True
        log.info("snapshot %d: cycle cut by its wall-time share", len(run.kept))
    if cycle_over:
        run.kept.append(copy.deepcopy(run.model).cpu())
        run.kept_epochs.append(epoch)
        run.cycle_start, run.cycle_epoch = time.perf_counter(), 0  # warm restart
        if len(run.kept) == run.snapshots:
            return "cycles"
    return None


def _after_epoch(run: _Run, epoch: int, valid_loss: float, wall_s: float) -> str | None:
    """Plateau schedule, best-weights bookkeeping, early stopping; the stop reason or None
    (``wall_s``: the stage's deadline, s since the task started).
    """
    if run.plateau:
        run.plateau.step(valid_loss)
    if valid_loss < run.best:
        run.best, run.best_epoch, run.since_best = valid_loss, epoch, 0
        run.best_state = copy.deepcopy(run.evaluated.state_dict())
    else:
        run.since_best += 1
    if run.since_best >= run.ens_cfg.patience:
        return "patience"
    if time.perf_counter() - run.t_start > wall_s:
        return "wall_time"
    return None


def stage_two_epochs(ens_cfg: EnsembleConfig, snapshots: int = 1) -> int:
    """Epochs of stage two within ``ens_cfg.max_epochs`` (0 when off): the last
    ``stage_two_fraction`` of them, rounded up, leaving stage one at least one.
    """
    if not ens_cfg.stage_two or snapshots > 1:
        return 0
    return min(math.ceil(ens_cfg.stage_two_fraction * ens_cfg.max_epochs), ens_cfg.max_epochs - 1)


def _start_stage_two(run: _Run, epoch: int) -> None:
    """Switch ``run`` to stage two after ``epoch``: stage one's best weights (model and EMA),
    the stage-two learning rate and a fresh plateau schedule; best weights tracked afresh, by
    the stage-two loss.
    """
    cfg = run.ens_cfg
    run.model.load_state_dict(run.best_state)
    if run.ema:
        run.ema.model.load_state_dict(run.best_state)
    for group in run.opt.param_groups:
        group["lr"] = cfg.stage_two_lr
    run.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        run.opt,
        factor=0.5,
        patience=max(2, cfg.patience // 4),
        min_lr=cfg.stage_two_lr * cfg.min_lr_factor,
    )
    run.stage, run.stage_two_from = 2, epoch + 1
    run.best, run.since_best = math.inf, 0
    log.info("member %d: stage two from epoch %d", run.member, epoch + 1)


def _report(
    run: _Run, epoch: int, max_epochs: int, row: dict, done: bool = False, stopped: str = ""
) -> None:
    if run.progress:
        run.progress(
            ProgressEvent(
                member=run.member,
                epoch=epoch,
                max_epochs=max_epochs,
                train_loss=row["train_loss"],
                valid_loss=row["loss"],
                lr=row["lr"],
                done=done,
                wall_time_s=float(run.ens_cfg.wall_time_s),
                elapsed_s=time.perf_counter() - run.t_start,
                stopped=stopped,
                stage=run.stage,
            )
        )


def _loop(run: _Run) -> tuple[int, str]:
    """Epochs until a stop criterion; returns (last epoch, stop reason).

    With stage two, stage one runs until its last epoch, its share of the wall cap or its
    patience, then stage two runs its epochs (:func:`stage_two_epochs`) until the epoch cap,
    the wall cap or its own patience.
    """
    cfg = run.ens_cfg
    two = stage_two_epochs(cfg, run.snapshots)
    wall_one = cfg.wall_time_s * (1 - cfg.stage_two_fraction) if two else cfg.wall_time_s
    last, epoch = cfg.max_epochs - two, 0
    while True:
        epoch += 1
        if run.threads is not None and (n := int(run.threads())) != torch.get_num_threads():
            torch.set_num_threads(n)
        train_loss = _train_epoch(run)
        val = evaluate_loader(run.evaluated, run.valid_loader, cfg, run.stage)
        row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": run.opt.param_groups[0]["lr"]}
        row["threads"] = torch.get_num_threads()
        row["stage"] = run.stage
        run.history.append(row)
        _report(run, epoch, cfg.max_epochs if run.stage == 1 else last, row)
        if run.snapshot_mode:
            reason = _after_snapshot_epoch(run, epoch)
        else:
            reason = _after_epoch(run, epoch, val["loss"], wall_one if run.stage == 1 else math.inf)
            if run.stage == 2 and time.perf_counter() - run.t_start > cfg.wall_time_s:
                reason = reason or "wall_time"
        reason = reason or ("epochs" if epoch >= last else None)
        if reason is None:
            continue
        if run.stage == 1 and two:
            run.stage_one_stopped = reason
            _start_stage_two(run, epoch)
            last = epoch + two
            continue
        return epoch, reason


def _valid_metrics(model: torch.nn.Module, run: _Run) -> dict:
    v = evaluate_loader(model.to(run.device), run.valid_loader, run.ens_cfg, run.stage)
    return {
        "best_valid_loss": v["loss"],
        "valid_rmse_e_per_atom": v["rmse_e_per_atom"],
        "valid_rmse_f": v["rmse_f"],
    }


def _kept_models(run: _Run, epoch: int) -> tuple[list[torch.nn.Module], list[dict]]:
    """The run's models (best EMA weights, or the K snapshots) on CPU, with validation metrics."""
    if run.snapshot_mode:
        while len(run.kept) < run.snapshots:  # wall time ran out for the last cycles
            log.warning("snapshot run ended early: duplicating the last weights")
            run.kept.append(copy.deepcopy(run.model).cpu())
            run.kept_epochs.append(epoch)
        metrics = []
        for m, ep in zip(run.kept, run.kept_epochs, strict=True):
            metrics.append({"epochs": ep, **_valid_metrics(m, run)})
            m.cpu()
        return run.kept, metrics
    final = run.evaluated
    final.load_state_dict(run.best_state)
    for p in final.parameters():
        p.requires_grad_(True)
    metrics = [{"epochs": run.best_epoch, **_valid_metrics(final, run)}]
    return [final.cpu()], metrics


def train_member(
    train: Sequence[Atoms],
    model_cfg: ModelConfig,
    ens_cfg: EnsembleConfig,
    *,
    seed: int = 0,
    valid: Sequence[Atoms] | None = None,
    member: int = 0,
    snapshots: int = 1,
    init_model: torch.nn.Module | None = None,
    stats: DataStats | None = None,
    elements: Sequence[str] | None = None,
    freeze: Sequence[str] = (),
    device: str | torch.device | None = None,
    threads: int | Callable[[], int] | None = None,
    progress: ProgressFn | None = None,
) -> MemberResult:
    """Train one member on labelled ``train`` (validated on ``valid`` or a random split).

    Args:
        train: labelled structures (energy, forces, optionally stress under
            :mod:`chemgap.common.keys`); unlabelled or failed ones are skipped.
        model_cfg: architecture.
        ens_cfg: optimiser, schedule, stopping.
        seed: seeds the split, the weight initialisation and the batch order.
        valid: validation structures (default: a random ``ens_cfg.valid_fraction`` of train).
        member: index reported in progress events.
        snapshots: 1 for a plain member; K > 1 runs one cyclic-LR run and returns K snapshots.
        init_model: start from these weights (transfer initialisation) instead of a fresh model.
        stats: data constants; computed from ``train`` when not given (E0s by
            ``model_cfg.e0``: ``isolated`` then needs ``IsolatedAtom`` frames in ``train``).
        elements: element set of the model (default: the elements of train + valid).
        freeze: parameter-name prefixes kept fixed (see :func:`freeze_blocks`).
        device: torch device (default: CUDA when present).
        threads: torch intra-op threads for this member (None leaves torch's setting), or a
            callable asked before every epoch (a share of the cores that grows as other
            members finish; each epoch's count is in the history as ``threads``).
        progress: called once per epoch with a :class:`ProgressEvent`.

    Returns:
        The trained model(s) on CPU in eval mode, their metrics and the training history.
    """
    t_start = time.perf_counter()
    if threads and not callable(threads):
        torch.set_num_threads(int(threads))
    dev = torch.device(device) if device is not None else pick_device()
    train, frames = split_isolated_atoms(train)
    train, valid, z_table = _prepare(train, valid, ens_cfg, seed, elements)
    ens_cfg = ens_cfg.scaled_to(len(train), sum(len(a) for a in train))
    if init_model is not None:
        z_table = [int(z) for z in init_model.atomic_numbers.tolist()]
    if stats is None:
        e0 = resolve_atomic_energies(model_cfg.e0, train, z_table, frames=frames)
        stats = compute_stats(train, z_table, model_cfg.r_max, e0)
    model = (
        copy.deepcopy(init_model)
        if init_model is not None
        else build_model(model_cfg, stats, seed=seed)
    )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    model = model.to(dev)
    frozen = freeze_blocks(model, freeze) if freeze else []
    if frozen:
        log.info("member %d: %d parameter tensors frozen", member, len(frozen))
    loaders = _loaders(
        to_graphs(train, z_table, model_cfg.r_max, dtype),
        to_graphs(valid, z_table, model_cfg.r_max, dtype),
        ens_cfg.batch_size,
        seed,
    )
    run = _start_run(
        model,
        ens_cfg,
        loaders,
        member=member,
        snapshots=snapshots,
        device=dev,
        progress=progress,
        t_start=t_start,
        threads=threads if callable(threads) else None,
    )
    t_train = time.perf_counter()
    epoch, stopped = _loop(run)
    train_s = time.perf_counter() - t_train
    models, metrics = _kept_models(run, epoch)
    shared = {
        "stopped": stopped,
        "wall_s": time.perf_counter() - t_start,
        "ended_at": time.time(),  # Unix time, s: when members ran side by side
        "threads_by_epoch": [row.get("threads") for row in run.history],
        "train_s": train_s,
        "structures_per_s": run.n_seen / train_s if train_s > 0 else 0.0,
        "n_train": len(train),
        "n_valid": len(valid),
        "epochs_run": epoch,
        "device": str(dev),
        "frozen": frozen,
        "stage_two_from": run.stage_two_from,  # the first epoch of stage two (None: none ran)
        "stage_one_stopped": run.stage_one_stopped or None,
    }
    metrics = [{**shared, **m} for m in metrics]
    last = run.history[-1] if run.history else {"train_loss": math.nan, "loss": math.nan, "lr": 0.0}
    _report(run, epoch, epoch, last, done=True, stopped=stopped)
    log.info("member %d done: %s", member, {k: metrics[0][k] for k in ("epochs", "stopped")})
    for m in models:
        m.eval()
    return MemberResult(models=models, metrics=metrics, stats=stats, history=run.history)
