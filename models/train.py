"""Train one ensemble member (or one snapshot run) of a MACE potential.

Loss (as in mace-torch's weighted loss): ``w_E·mean((ΔE/N)²) + w_F·mean(ΔF²) + w_S·mean(Δσ²)``
with energies per atom (eV/atom), forces (eV/Å) and stress (eV/Å³, periodic structures that
carry one). Adam, or AdamW when ``weight_decay > 0`` (Loshchilov & Hutter 2019); an exponential
moving average of the weights (the model that is validated and kept); early stopping on the
validation loss, an epoch cap and a wall-time cap.

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

import numpy as np
import torch
from ase import Atoms

from .build import DataStats, build_model, compute_stats
from .config import EnsembleConfig, ModelConfig
from .contraction import sparse_contractions
from .data import element_list, split_valid, symbols_to_z, to_graphs, usable

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


def _loss_terms(out: dict, batch, cfg: EnsembleConfig) -> torch.Tensor:
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    loss = cfg.energy_weight * torch.mean(((out["energy"] - batch.energy) / n_atoms) ** 2)
    loss = loss + cfg.forces_weight * torch.mean((out["forces"] - batch.forces) ** 2)
    if cfg.stress_weight > 0 and out.get("stress") is not None:
        w = batch.stress_weight.view(-1, 1, 1)
        if float(w.sum()) > 0:
            diff = torch.where(w > 0, out["stress"] - batch.stress, 0.0)
            loss = loss + cfg.stress_weight * (w * diff**2).sum() / (9.0 * w.sum())
    return loss


def _forward(model, batch, cfg: EnsembleConfig, training: bool) -> dict:
    """Energy, forces (and stress when weighted) with the sparse symmetric contraction
    (:mod:`chemgap.models.contraction`; mace's class is back in place when this returns, so
    copies and saved files are plain mace models)."""
    want_stress = cfg.stress_weight > 0 and float(batch.stress_weight.sum()) > 0
    with sparse_contractions([model]):
        return model(
            batch.to_dict(), training=training, compute_force=True, compute_stress=want_stress
        )


def evaluate_loader(model, loader, cfg: EnsembleConfig) -> dict:
    """Loss and RMSEs of ``model`` on a loader: loss, rmse_e (eV/atom), rmse_f (eV/Å)."""
    model.eval()
    tot, n_batches, se_e, n_s, se_f, n_f = 0.0, 0, 0.0, 0, 0.0, 0
    for batch in loader:
        out = _forward(model, batch, cfg, training=False)
        tot += float(_loss_terms(out, batch, cfg).detach())
        n_batches += 1
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
        se_e += float((((out["energy"] - batch.energy) / n_atoms) ** 2).sum().detach())
        n_s += int(n_atoms.numel())
        se_f += float(((out["forces"] - batch.forces) ** 2).sum().detach())
        n_f += int(batch.forces.numel())
    return {
        "loss": tot / max(n_batches, 1),
        "rmse_e_per_atom": math.sqrt(se_e / max(n_s, 1)),
        "rmse_f": math.sqrt(se_f / max(n_f, 1)),
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
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> MemberResult:
    """Train one member on labelled ``train`` (validated on ``valid`` or a random split).

    Args:
        train, valid: labelled structures (REF_energy/REF_forces[/REF_stress]); unlabelled or
            failed ones are skipped.
        seed: seeds the split, the weight initialisation and the batch order.
        snapshots: 1 for a plain member; K > 1 runs one cyclic-LR run and returns K snapshots.
        init_model: start from these weights (transfer initialisation) instead of a fresh model.
        stats: data constants; computed from ``train`` when not given.
        elements: element set of the model (default: the elements of train + valid).
        freeze: parameter-name prefixes kept fixed (see :func:`freeze_blocks`).
        threads: torch intra-op threads for this member (None leaves torch's setting).
        progress: called once per epoch with a :class:`ProgressEvent`.
    """
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device) if device is not None else pick_device()
    train, valid, z_table = _prepare(train, valid, ens_cfg, seed, elements)
    if init_model is not None:
        z_table = [int(z) for z in init_model.atomic_numbers.tolist()]
    if stats is None:
        stats = compute_stats(train, z_table, model_cfg.r_max)
    if init_model is not None:
        model = copy.deepcopy(init_model)
    else:
        model = build_model(model_cfg, stats, seed=seed)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    model = model.to(dev)
    frozen = freeze_blocks(model, freeze) if freeze else []
    if frozen:
        log.info("member %d: %d parameter tensors frozen", member, len(frozen))

    train_graphs = to_graphs(train, z_table, model_cfg.r_max, dtype)
    valid_graphs = to_graphs(valid, z_table, model_cfg.r_max, dtype)
    train_loader, valid_loader = _loaders(train_graphs, valid_graphs, ens_cfg.batch_size, seed)

    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if ens_cfg.weight_decay > 0 else torch.optim.Adam
    opt = opt_cls(params, lr=ens_cfg.lr, weight_decay=ens_cfg.weight_decay, amsgrad=True)
    min_lr = ens_cfg.lr * ens_cfg.min_lr_factor
    snapshot_mode = snapshots > 1
    plateau = None
    if not snapshot_mode:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=max(2, ens_cfg.patience // 4), min_lr=min_lr
        )
    use_ema = ens_cfg.ema_decay > 0 and not snapshot_mode
    ema = _EMA(model, ens_cfg.ema_decay) if use_ema else None
    cycle_epochs = max(1, ens_cfg.max_epochs // snapshots) if snapshot_mode else ens_cfg.max_epochs
    steps_per_epoch = len(train_loader)

    best = math.inf
    best_state = copy.deepcopy((ema.model if ema else model).state_dict())
    best_epoch, since_best, stopped = 0, 0, "epochs"
    kept: list[torch.nn.Module] = []
    kept_metrics: list[dict] = []
    history: list[dict] = []
    t_train = time.perf_counter()
    cycle_start = t_train
    n_seen, epoch, cycle_epoch = 0, 0, 0
    for epoch in range(1, ens_cfg.max_epochs + 1):
        model.train()
        ep_loss, nb = 0.0, 0
        for step, batch in enumerate(train_loader):
            batch = batch.to(dev)
            if snapshot_mode:
                t = (cycle_epoch + step / steps_per_epoch) / cycle_epochs
                for g in opt.param_groups:
                    g["lr"] = min_lr + 0.5 * (ens_cfg.lr - min_lr) * (1 + math.cos(math.pi * t))
            opt.zero_grad(set_to_none=True)
            out = _forward(model, batch, ens_cfg, training=True)
            loss = _loss_terms(out, batch, ens_cfg)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            if ema:
                ema.update(model)
            ep_loss += float(loss.detach())
            nb += 1
            n_seen += int(batch.num_graphs)
        evaluated = ema.model if ema else model
        val = evaluate_loader(evaluated, valid_loader, ens_cfg)
        lr_now = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": ep_loss / nb, **val, "lr": lr_now})
        if progress:
            progress(
                ProgressEvent(
                    member=member,
                    epoch=epoch,
                    max_epochs=ens_cfg.max_epochs,
                    train_loss=ep_loss / nb,
                    valid_loss=val["loss"],
                    lr=lr_now,
                )
            )
        elapsed = time.perf_counter() - t_start
        if snapshot_mode:
            cycle_epoch += 1
            cycle_over = cycle_epoch >= cycle_epochs
            wall_share = ens_cfg.wall_time_s / snapshots
            if not cycle_over and time.perf_counter() - cycle_start > wall_share:
                cycle_over = True
                log.info("snapshot %d: cycle cut by its wall-time share", len(kept))
            if cycle_over:
                kept.append(copy.deepcopy(model).cpu())
                kept_metrics.append({"epochs": epoch, "valid": val})
                cycle_start, cycle_epoch = time.perf_counter(), 0  # warm restart
                if len(kept) == snapshots:
                    stopped = "cycles"
                    break
            continue
        if plateau:
            plateau.step(val["loss"])
        if val["loss"] < best:
            best, best_epoch, since_best = val["loss"], epoch, 0
            best_state = copy.deepcopy(evaluated.state_dict())
        else:
            since_best += 1
        if since_best >= ens_cfg.patience:
            stopped = "patience"
            break
        if elapsed > ens_cfg.wall_time_s:
            stopped = "wall_time"
            break
    train_s = time.perf_counter() - t_train
    common = {
        "stopped": stopped,
        "wall_s": time.perf_counter() - t_start,
        "train_s": train_s,
        "structures_per_s": n_seen / train_s if train_s > 0 else 0.0,
        "n_train": len(train),
        "n_valid": len(valid),
        "epochs_run": epoch,
        "device": str(dev),
        "frozen": frozen,
    }
    if snapshot_mode:
        while len(kept) < snapshots:  # wall time ran out for the last cycles
            log.warning("snapshot run ended early: duplicating the last weights")
            kept.append(copy.deepcopy(model).cpu())
            kept_metrics.append({"epochs": epoch, "valid": history[-1] if history else {}})
        metrics = []
        for m, km in zip(kept, kept_metrics, strict=True):
            v = evaluate_loader(m.to(dev), valid_loader, ens_cfg)
            m.cpu()
            metrics.append({**common, "epochs": km["epochs"], "best_valid_loss": v["loss"],
                            "valid_rmse_e_per_atom": v["rmse_e_per_atom"],
                            "valid_rmse_f": v["rmse_f"]})  # fmt: skip
        models = kept
    else:
        final = ema.model if ema else model
        final.load_state_dict(best_state)
        for p in final.parameters():
            p.requires_grad_(True)
        v = evaluate_loader(final, valid_loader, ens_cfg)
        final = final.cpu()
        models = [final]
        metrics = [
            {
                **common,
                "epochs": best_epoch,
                "best_valid_loss": v["loss"],
                "valid_rmse_e_per_atom": v["rmse_e_per_atom"],
                "valid_rmse_f": v["rmse_f"],
            }
        ]
    if progress:
        last = history[-1] if history else {"train_loss": math.nan, "loss": math.nan, "lr": 0.0}
        progress(
            ProgressEvent(
                member=member,
                epoch=epoch,
                max_epochs=epoch,
                train_loss=last["train_loss"],
                valid_loss=last["loss"],
                lr=last["lr"],
                done=True,
            )
        )
    log.info("member %d done: %s", member, {k: metrics[0][k] for k in ("epochs", "stopped")})
    for m in models:
        m.eval()
    return MemberResult(models=models, metrics=metrics, stats=stats, history=history)
