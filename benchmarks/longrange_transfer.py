"""Do long-range terms help more out of distribution than in it? NaCl clusters, GFN1-xTB.

The claim tested (issue 14, part 3) is that of M. Sanocki and J. Zavadlav, "Generalization of
long-range machine learning potentials in complex chemical spaces", arXiv:2512.10989 (2025;
Digital Discovery, 2026, doi:10.1039/D5DD00570A): on biased train/test splits, MLIPs with
long-range corrections (learned charges + electrostatics, dispersion) gain more out of
distribution (OOD) than in distribution (ID), most on size splits, and deeper message passing
recovers part of the gap for a short-range model. This script checks it at laptop scale.

Data (cached under ``--out``; a rerun with the same data settings does not relabel):
Na/Cl ion pairs (2.2-8 Å apart, many beyond the model cutoff), charged triatomics (Na2Cl⁺,
NaCl2⁻) and rock-salt cuboid clusters of 4, 8, 9 (±1), 12, 18, 27 (±1), 32 and 64 ions (ions on a
simple-cubic lattice of spacing a/2, a drawn in 5.3-5.9 Å, rattled by 0.1 Å), labelled with
GFN1-xTB (tblite; Grimme, Bannwarth & Shushkov, JCTC 13, 1989, 2017) at each structure's total
charge. The charged clusters are the second system where electrostatics matter.

Splits: chemgap's own (:func:`chemgap.agent.diagnostics.splits.run_splits`, i.e. ``make_split``
plus its ID hold-out): ``random`` (half at random), ``size`` (train on the structures up to the
median size, test on the larger ones) and ``cluster`` (KMeans on structure-averaged SOAP, half
the clusters held out), each drawn with the seed; ID errors are on ``id_fraction`` of the train
side held out from training, OOD errors on the test side.

Models: MACE members (float32) with ``long_range`` none / coulomb / coulomb+d3, the same
architecture, data, split, seed and epoch budget (no early stopping, no wall-time cap binding);
each ensemble has ``--members`` members (deep ensemble), scored by its mean. Plus a
``num_interactions`` sweep of the short-range model on the size split.

Statistics: over ``--seeds`` seeds (split draw, ID hold-out, weights), mean and 95 % Student-t
confidence interval (mean ± t₀.₉₇₅,ₙ₋₁ s/√n); long-range vs short-range as the per-seed paired
ratio of errors (same split and seed), with its t-interval.

Usage:  python benchmarks/longrange_transfer.py [--out DIR] [--seeds 3] [--epochs 30]
        [--members 2] [--jobs 2] [--models none,coulomb,coulomb+d3] [--depths 1,2,3]
Prints progress, then the tables last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")
log = logging.getLogger("longrange_transfer")

SPLITS = ("random", "size", "cluster")

# (dims of the cuboid, count): 4, 8, 9 (charged), 12 | 18, 27 (charged), 32, 64 ions
CUBOIDS: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((2, 2, 1), 12),
    ((2, 2, 2), 14),
    ((3, 3, 1), 10),
    ((2, 2, 3), 12),
    ((2, 3, 3), 24),
    ((3, 3, 3), 20),
    ((2, 4, 4), 20),
    ((4, 4, 4), 12),
)
N_PAIRS, N_TRIATOMICS = 24, 12


# --------------------------------------------------------------------------- data
def cuboid(dims: tuple[int, int, int], a: float, first: str) -> Any:
    """A rock-salt cuboid cluster: ions on a simple-cubic lattice of spacing ``a / 2`` Å,
    alternating Na and Cl, ``first`` at the origin; total charge n_Na − n_Cl in ``info``.
    """
    from ase import Atoms

    other = "Cl" if first == "Na" else "Na"
    grid = np.array(np.meshgrid(*[np.arange(n) for n in dims], indexing="ij")).reshape(3, -1).T
    symbols = [first if s % 2 == 0 else other for s in grid.sum(1)]
    atoms = Atoms(symbols, positions=grid * a / 2)
    atoms.info["charge"] = int((atoms.numbers == 11).sum() - (atoms.numbers == 17).sum())
    return atoms


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def ion_pair(rng: np.random.Generator) -> Any:
    """Na⁺Cl⁻ at 2.2-8 Å (the model cutoff is 4.5 Å), random orientation."""
    from ase import Atoms

    return Atoms("NaCl", positions=[np.zeros(3), rng.uniform(2.2, 8.0) * _unit(rng)])


def triatomic(rng: np.random.Generator, cation: bool) -> Any:
    """Na2Cl⁺ (``cation``) or NaCl2⁻: two ions of one kind bound to one of the other, 2.3-3 Å,
    at a random angle ≥ 90°.
    """
    from ase import Atoms

    a, b = rng.uniform(2.3, 3.0, size=2)
    angle = np.radians(rng.uniform(90.0, 180.0))
    centre, outer, charge = ("Cl", "Na", 1) if cation else ("Na", "Cl", -1)
    pos = [[0, 0, 0], [a, 0, 0], [b * np.cos(angle), b * np.sin(angle), 0]]
    atoms = Atoms(centre + outer + outer, positions=pos)
    atoms.info["charge"] = charge
    return atoms


def make_structures(seed: int) -> list[Any]:
    """The unlabelled data set (pairs, triatomics, cuboids), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = [ion_pair(rng) for _ in range(N_PAIRS)]
    out += [triatomic(rng, cation=k % 2 == 0) for k in range(N_TRIATOMICS)]
    for dims, count in CUBOIDS:
        for k in range(count):
            atoms = cuboid(dims, rng.uniform(5.3, 5.9), "Na" if k % 2 == 0 else "Cl")
            atoms.positions += rng.normal(0.0, 0.1, size=atoms.positions.shape)
            out.append(atoms)
    for atoms in out:
        atoms.info.setdefault("charge", 0)
        atoms.center(vacuum=8.0)
        atoms.cell, atoms.pbc = np.zeros((3, 3)), False
    return out


def data_key(seed: int) -> str:
    """Hash of everything the labels depend on (settings and this file's generator)."""
    text = json.dumps({"seed": seed, "pairs": N_PAIRS, "tri": N_TRIATOMICS, "cub": CUBOIDS})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def label(structures: list[Any]) -> list[Any]:
    """GFN1-xTB energy (``REF_energy``, eV) and forces (``REF_forces``, eV/Å) at each
    structure's total charge, through chemgap's oracle (:func:`chemgap.oracle.labelling.
    label_one`: tblite, retried at a raised electronic temperature when the SCF does not
    converge). Structures that still fail are dropped; both counts are printed.
    """
    from chemgap.oracle.config import OracleConfig
    from chemgap.oracle.labelling import label_one

    out, retried, failed = [], 0, 0
    for atoms in structures:
        params = {"method": "GFN1-xTB", "charge": int(atoms.info["charge"])}
        res = label_one(atoms, OracleConfig(name="xtb", params=params))
        if not res.ok:
            failed += 1
            continue
        retried += res.attempts > 1
        out.append(res.atoms)
    print(f"labels: {len(out)} ok, {retried} of them on an SCF retry, {failed} failed")
    return out


def load_or_label(out: Path, seed: int) -> list[Any]:
    """The labelled data set, from ``out/labels-<key>.extxyz`` if there, else labelled and
    written there (atomically).
    """
    from ase.io import read, write

    path = out / f"labels-{data_key(seed)}.extxyz"
    if path.exists():
        data = read(path, index=":")
        print(f"labels: {len(data)} structures from {path}")
        return data
    t0 = time.perf_counter()
    data = label(make_structures(seed))
    tmp = path.with_suffix(".tmp.extxyz")
    write(tmp, data, format="extxyz")
    os.replace(tmp, path)
    print(f"labels: {len(data)} structures, GFN1-xTB, {time.perf_counter() - t0:.0f} s -> {path}")
    return data


# --------------------------------------------------------------------------- one training job
@dataclass(frozen=True, kw_only=True)
class Job:
    """One ensemble: a split, a model variant and a seed."""

    split: str
    long_range: str
    depth: int
    seed: int

    @property
    def key(self) -> str:
        """A stable name, e.g. ``size/coulomb/ni2/s0``."""
        return f"{self.split}/{self.long_range}/ni{self.depth}/s{self.seed}"


def configs(args: argparse.Namespace, job: Job) -> tuple[Any, Any, Any]:
    """(DiagnosticsConfig, ModelConfig, EnsembleConfig) of ``job``."""
    from chemgap.campaigns.spec import DiagnosticsConfig
    from chemgap.models.config import EnsembleConfig, ModelConfig

    diag = DiagnosticsConfig(splits=[job.split], n_clusters=args.clusters, id_fraction=0.2)
    model = ModelConfig(
        r_max=args.r_max,
        num_channels=args.channels,
        max_L=1,
        num_interactions=job.depth,
        correlation=2,
        radial_mlp=[32, 32],
        dtype="float32",
        e0="average",  # as its recorded figures were measured (before isolated-atom E0s)
        long_range=job.long_range,
    )
    ens = EnsembleConfig(
        members=args.members,
        max_epochs=args.epochs,
        batch_size=8,
        lr=1e-2,
        patience=10 * args.epochs,  # no early stopping: the same epochs for every model
        wall_time_s=1e6,
    )
    return diag, model, ens


def run_job(job: Job, args: argparse.Namespace, data: list[Any], features: Any) -> dict:
    """Train and score one ensemble in this (worker) process on one torch thread."""
    import torch

    from chemgap.agent.diagnostics.splits import run_splits

    torch.set_num_threads(1)
    diag, model, ens = configs(args, job)
    t0 = time.perf_counter()
    (res,) = run_splits(
        data, diag, model, ens, Path(args.out) / "models" / job.key, job.seed, features=features
    )
    if res.skipped:
        raise RuntimeError(f"{job.key}: split skipped: {res.skipped}")
    return {
        "key": job.key,
        **vars(job),
        "n_train": res.n_train,
        "n_id": res.n_id,
        "n_test": res.n_test,
        "description": res.description,
        "id_force": 1e3 * res.id_force_mae,
        "ood_force": 1e3 * res.ood_force_mae,
        "id_energy": 1e3 * res.id_energy_mae,
        "ood_energy": 1e3 * res.ood_energy_mae,
        "wall_s": time.perf_counter() - t0,
    }


def plan(args: argparse.Namespace) -> list[Job]:
    """Every (split, model) at depth 2 and every depth of the short-range model on ``size``,
    for every seed; each ensemble once.
    """
    jobs = {}
    for seed in range(args.seeds):
        for split in SPLITS:
            for lr in args.models:
                jobs[Job(split=split, long_range=lr, depth=2, seed=seed)] = None
        for depth in args.depths:
            jobs[Job(split="size", long_range="none", depth=depth, seed=seed)] = None
    return list(jobs)


def run_all(args: argparse.Namespace, data: list[Any], features: Any) -> list[dict]:
    """Run the planned jobs on ``args.jobs`` processes; results already in
    ``out/results.jsonl`` (same settings) are reused, new ones appended as they finish.
    """
    path = Path(args.out) / "results.jsonl"
    stamp = settings_key(args)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("settings") == stamp:
                done[row["key"]] = row
    todo = [j for j in plan(args) if j.key not in done]
    print(f"jobs: {len(done)} cached, {len(todo)} to run on {args.jobs} process(es)")
    ctx = get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool, open(path, "a") as fh:
        futures = {pool.submit(run_job, job, args, data, features): job for job in todo}
        for fut in as_completed(futures):
            row = {**fut.result(), "settings": stamp}
            done[row["key"]] = row
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(
                f"  {row['key']:<28} ID {row['id_force']:6.1f} OOD {row['ood_force']:6.1f} "
                f"meV/Å  ({row['wall_s']:.0f} s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return [done[j.key] for j in plan(args)]


def settings_key(args: argparse.Namespace) -> str:
    """Hash of the settings a result depends on (not seeds, jobs or output paths)."""
    keys = ("epochs", "members", "channels", "r_max", "clusters", "data_seed")
    text = json.dumps({k: getattr(args, k) for k in keys}) + data_key(args.data_seed)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- statistics, tables
def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t confidence interval (NaN width for n < 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def fmt(values: list[float], digits: int = 1) -> str:
    """``mean ± half-width``."""
    m, h = t_interval(values)
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def rows_of(results: list[dict], **match: Any) -> list[dict]:
    """The results whose fields equal ``match``, ordered by seed."""
    out = [r for r in results if all(r[k] == v for k, v in match.items())]
    return sorted(out, key=lambda r: r["seed"])


def main_table(results: list[dict], models: list[str]) -> list[str]:
    """ID / OOD errors and OOD/ID ratio per split and model (depth 2)."""
    lines = [
        "| split | model | n | ID F MAE | OOD F MAE | OOD/ID (F) | ID E MAE | OOD E MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for lr in models:
            rows = rows_of(results, split=split, long_range=lr, depth=2)
            if not rows:
                continue
            col = {k: [r[k] for r in rows] for k in ("id_force", "ood_force")}
            col |= {k: [r[k] for r in rows] for k in ("id_energy", "ood_energy")}
            ratio = [r["ood_force"] / r["id_force"] for r in rows]
            lines.append(
                f"| {split} | {lr} | {len(rows)} | {fmt(col['id_force'])} | "
                f"{fmt(col['ood_force'])} | {fmt(ratio, 2)} | {fmt(col['id_energy'])} | "
                f"{fmt(col['ood_energy'])} |"
            )
    return lines


def paired_table(results: list[dict], models: list[str]) -> list[str]:
    """Long-range / short-range error ratio per seed (same split and seed), ID and OOD."""
    lines = [
        "| split | model | F ratio ID | F ratio OOD | E ratio ID | E ratio OOD |",
        "|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        base = {r["seed"]: r for r in rows_of(results, split=split, long_range="none", depth=2)}
        for lr in models:
            if lr == "none":
                continue
            rows = [r for r in rows_of(results, split=split, long_range=lr, depth=2)]
            pairs = [(r, base[r["seed"]]) for r in rows if r["seed"] in base]
            if not pairs:
                continue
            cells = [
                fmt([a[k] / b[k] for a, b in pairs], 2)
                for k in ("id_force", "ood_force", "id_energy", "ood_energy")
            ]
            lines.append(f"| {split} | {lr} | " + " | ".join(cells) + " |")
    return lines


def depth_table(results: list[dict], depths: list[int], r_max: float) -> list[str]:
    """The short-range model on the size split against its number of interactions."""
    lines = [
        "| num_interactions | receptive field | n | ID F MAE | OOD F MAE | OOD/ID (F) "
        "| ID E MAE | OOD E MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for depth in depths:
        rows = rows_of(results, split="size", long_range="none", depth=depth)
        if not rows:
            continue
        ratio = [r["ood_force"] / r["id_force"] for r in rows]
        cells = [fmt([r[k] for r in rows]) for k in ("id_force", "ood_force")]
        energies = [fmt([r[k] for r in rows]) for k in ("id_energy", "ood_energy")]
        lines.append(
            f"| {depth} | {depth * r_max:g} Å | {len(rows)} | {cells[0]} | {cells[1]} | "
            f"{fmt(ratio, 2)} | {energies[0]} | {energies[1]} |"
        )
    return lines


def describe_data(data: list[Any], results: list[dict]) -> list[str]:
    """Counts per size and the split sizes."""
    sizes, counts = np.unique([len(a) for a in data], return_counts=True)
    charged = sum(1 for a in data if a.info.get("charge", 0))
    out = [
        f"data: {len(data)} structures, {sum(len(a) for a in data)} atoms, {charged} charged; "
        "atoms x count: " + ", ".join(f"{s}x{c}" for s, c in zip(sizes, counts, strict=True))
    ]
    for split in SPLITS:
        rows = rows_of(results, split=split, long_range="none", depth=2)
        if rows:
            r = rows[0]
            out.append(
                f"split {split} (seed 0): {r['description']}; fit {r['n_train']}, "
                f"ID {r['n_id']}, OOD {r['n_test']} structures"
            )
    return out


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/longrange_transfer", help="labels, models, results")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--members", type=int, default=2, help="ensemble size K")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--r-max", dest="r_max", type=float, default=4.5)
    p.add_argument("--clusters", type=int, default=6, help="KMeans clusters of the cluster split")
    p.add_argument("--models", default="none,coulomb,coulomb+d3")
    p.add_argument("--depths", default="1,2,3", help="num_interactions of the sweep")
    p.add_argument("--jobs", type=int, default=2, help="ensembles trained at once")
    p.add_argument("--data-seed", dest="data_seed", type=int, default=0)
    args = p.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.depths = [int(d) for d in args.depths.split(",") if d.strip()]
    return args


def main() -> None:
    """Label (or load), train every planned ensemble, print the tables last."""
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()
    print(f"start {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load0[0]:.2f}")
    data = load_or_label(out, args.data_seed)

    from chemgap.agent.diagnostics.features import compute_features

    features = compute_features(data, families=[], soap=True)
    results = run_all(args, data, features)
    wall = time.perf_counter() - t0
    print()
    print(
        f"model: MACE {args.channels}x0e+{args.channels}x1o, max_L 1, correlation 2, "
        f"r_max {args.r_max} Å, float32; {args.members} members per ensemble, {args.epochs} "
        f"epochs each (no early stopping), batch 8, lr 0.01; {args.seeds} seeds"
    )
    print(
        f"wall {wall / 60:.1f} min on {os.cpu_count()} CPU cores, {args.jobs} jobs at once; "
        f"load average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end"
    )
    for line in describe_data(data, results):
        print(line)
    print("\nErrors (meV/Å, meV/atom), mean ± 95 % t-interval over seeds, num_interactions 2:")
    print("\n".join(main_table(results, args.models)))
    print("\nLong-range / none, paired by split and seed (< 1: the long-range model is better):")
    print("\n".join(paired_table(results, args.models)))
    print("\nShort-range (none) model on the size split against message-passing depth:")
    print("\n".join(depth_table(results, args.depths, args.r_max)))


if __name__ == "__main__":
    main()
