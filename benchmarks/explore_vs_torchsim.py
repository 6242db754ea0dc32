"""Walker-steps per second: chemgap's batched explorer vs torch-sim's batched Langevin MD.

The same comparison as ``explore_vs_ase.py`` (its ensemble, walkers and settings are imported
from it): 16 ethanol walkers (9 atoms), the 4-member MACE ensemble trained there on GFN2-xTB
labels, the same number of BAOAB Langevin steps of 0.5 fs at 300 K with friction 0.01/fs, on
CPU with the same torch thread count, two ways:

- torch-sim (``torch-sim-atomistic`` 0.3.0): all walkers in one batched ``SimState``
  (``ts.initialize_state``), stepped by ``ts.nvt_langevin``'s init/update functions (what
  ``ts.integrate`` runs, without its reporter), driven by a committee model;
- chemgap: :func:`chemgap.agent.explore.explore`, all walkers in one graph, all members per
  step, neighbour list reused, sparse symmetric contractions, members on threads.

Committee design for torch-sim. torch-sim integrates one ``ModelInterface``, and its MACE wrapper
(``torch_sim.models.mace.MaceModel``) evaluates one MACE model per call. A torch-sim user who
wants a committee's mean forces and spread writes a small ``ModelInterface`` that holds one
``MaceModel`` per member, calls all of them on the state and returns the members' mean energy
and forces, keeping the per-atom force spread (sqrt of the summed per-component variance, the
definition chemgap uses) for the caller: ``MaceCommittee`` in :func:`mace_committee`. That is
4 MACE passes per step, each with its own neighbour list (``MaceModel`` builds one per walker
per call with vesin; it has no way to share or reuse it). The mean force drives the dynamics, as
in chemgap's explorer, so both integrate the same committee dynamics. The alternative of
integrating with member 0 and evaluating members 1-3 on the side costs the same 4 passes but
follows a different (single-member) trajectory, so it is not used.

Members: the same 4 trained members, the same module code on both sides. chemgap uses the
ensemble ``train_members`` returns (as ``explore_vs_ase.py`` does; its members come back
from their training tasks unpickled); torch-sim gets its own copies unpickled from the
``member_*.model`` files with ``torch.load``, as a torch-sim (or ``MACECalculator``) user loads
a MACE file. Loaded either way, e3nn's generated code is TorchScript; with e3nn's fx code instead
(chemgap's ``Ensemble.load``) torch-sim's steady step time was the same here.

Timing: both sides are timed from the walkers' ``Atoms`` to the last step (state set-up, the
initial evaluation and ``--steps`` steps; ``steps + 1`` committee evaluations each), after a
warm-up of 5 steps each that is not timed. torch-sim is timed first: chemgap's explorer runs
its members on a pool of Python threads, and ``explore_vs_ase.py`` found that torch work
started in the process after such threads exist can run slower, so torch-sim runs before
chemgap has started any thread in this process (training the members happens before both, as
in ``explore_vs_ase.py``). The load average before timing is printed: with 2 torch threads on
2 cores, another process taking a core makes steps of ~0.2 s take 1-20 s (seen on this
machine while other jobs ran), so take figures only on a quiet machine.

Correctness: the positions of every evaluation are kept (a reference per step; the checks run
after the clock stops) and both sides print the longest of ethanol's 8 bonds over all walkers
and steps (intact: < 2 Å) and the largest per-atom committee force spread, so the speed-up is
not that of a broken simulation. chemgap's positions and member forces are recorded by a thin
proxy of the ensemble that forwards everything and keeps references to what each evaluation
saw.

Install (not a chemgap dependency): ``pip install --no-deps torch-sim-atomistic==0.3.0``, then
``pip install -c constraints.txt vesin==0.6.2 vesin-torch==0.6.2 tables==3.11.1``.

Usage: python benchmarks/explore_vs_torchsim.py [--walkers 16] [--steps 100] [--threads 2]
       [--channels 16]
The last line is the headline figure: ``speedup: X`` (chemgap over torch-sim).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from explore_vs_ase import (
    ethanol_walkers,
    exploration_config,
    model_line,
    timed_explore,
    train_members,
    walker_arguments,
)

INSTALL_HINT = (
    "torch-sim is not installed: .venv/bin/python -m pip install --no-deps "
    "torch-sim-atomistic==0.3.0 && .venv/bin/python -m pip install -c constraints.txt "
    "vesin==0.6.2 vesin-torch==0.6.2 tables==3.11.1"
)
TEMPERATURE_K = 300.0
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
WARMUP_STEPS = 5
MAX_BOND_A = 2.0  # an ethanol bond longer than this means a broken molecule


def ethanol_bonds() -> np.ndarray:
    """(8, 2) atom pairs of ethanol's bonds: ASE's reference geometry, pairs closer than 1.2x
    the sum of their covalent radii (C-H 1.09 Å is just above the plain sum, 1.07 Å).
    """
    from ase.build import molecule
    from ase.neighborlist import natural_cutoffs, neighbor_list

    atoms = molecule("CH3CH2OH")
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    bonds = np.array([(a, b) for a, b in zip(i, j, strict=True) if a < b])
    if len(bonds) != 8:  # C-C, C-O, O-H, 5 C-H
        raise RuntimeError(f"ethanol: found {len(bonds)} bonds, not 8")
    return bonds


def max_bond_length(positions: list, walkers: int) -> float:
    """Longest ethanol bond, Å, over all walkers of all the (n_atoms, 3) ``positions``."""
    bonds = torch.as_tensor(ethanol_bonds())
    n = 9  # atoms per ethanol; walkers are stored one after another
    offsets = torch.arange(walkers)[:, None, None] * n
    pairs = (bonds[None] + offsets).reshape(-1, 2)
    pos = torch.stack([p.double() for p in positions])  # (frames, n_atoms, 3)
    d = (pos[:, pairs[:, 0]] - pos[:, pairs[:, 1]]).norm(dim=-1)
    return float(d.max())


def force_spread(member_forces: torch.Tensor) -> torch.Tensor:
    """Per-atom committee spread of (K, n_atoms, 3) forces: sqrt of the summed per-component
    variance over the members, eV/Å (chemgap's definition).
    """
    return member_forces.double().var(dim=0, unbiased=False).sum(-1).sqrt()


def mace_committee(model_dir: Path, device: str, dtype: str):
    """``MaceCommittee`` of one torch-sim ``MaceModel`` per ``member_*.model`` file of
    ``model_dir`` (unpickled with ``torch.load``).
    """
    from torch_sim.models.interface import ModelInterface
    from torch_sim.models.mace import MaceModel

    class MaceCommittee(ModelInterface):
        """A committee for torch-sim: every member on the state, the mean energy and forces
        returned (they drive the integrator), the per-atom force spread kept in
        ``force_std`` and in ``out["force_std"]``.
        """

        def __init__(self, members: list[MaceModel]):
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            self._device = members[0].device
            self._dtype = members[0].dtype
            self._compute_forces = True
            self._compute_stress = False
            self.force_std: torch.Tensor | None = None

        def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
            outs = [m(state) for m in self.members]
            energy = torch.stack([o["energy"] for o in outs])
            forces = torch.stack([o["forces"] for o in outs])
            self.force_std = forces.var(dim=0, unbiased=False).sum(-1).sqrt()
            return {
                "energy": energy.mean(0),
                "forces": forces.mean(0),
                "force_std": self.force_std,
            }

    torch_dtype = getattr(torch, dtype)
    members = [
        MaceModel(
            model=torch.load(p, map_location=device, weights_only=False),
            device=torch.device(device),
            dtype=torch_dtype,
            compute_forces=True,
            compute_stress=False,
        )
        for p in sorted(model_dir.glob("member_*.model"))
    ]
    return MaceCommittee(members)


def run_torchsim(committee, walkers: list, steps: int, seed: int) -> tuple[float, list, list]:
    """``steps`` Langevin steps of the ``walkers`` (ASE Atoms) in one torch-sim batch; returns
    the seconds taken, the positions of every evaluation and the force spread of every
    evaluation.
    """
    import torch_sim as ts
    from ase import units

    torch.manual_seed(seed)  # the O step's noise comes from torch's global generator
    t = time.perf_counter()
    state = ts.initialize_state(walkers, committee.device, committee.dtype)
    kw = dict(device=committee.device, dtype=committee.dtype)
    # torch-sim's metal units (eV, Å, amu, time sqrt(amu Å²/eV)) are ASE's internal units:
    # dt = 0.5 fs is 0.0005 ps x MetalUnits.time, as ts.integrate converts it
    init_fn, update_fn = ts.nvt_langevin(
        model=committee,
        dt=torch.tensor(TIMESTEP_FS * units.fs, **kw),
        kT=torch.tensor(TEMPERATURE_K * units.kB, **kw),
        gamma=torch.tensor(FRICTION_PER_FS / units.fs, **kw),
        seed=seed,
    )
    state = init_fn(state)
    positions = [state.positions.detach().clone()]
    spreads = [committee.force_std]
    for _ in range(steps):
        state = update_fn(state)
        positions.append(state.positions.detach().clone())
        spreads.append(committee.force_std)
    return time.perf_counter() - t, positions, spreads


class RecordingEnsemble:
    """The chemgap ensemble, forwarding everything, keeping the positions and the members'
    forces of each evaluation (a copy of the positions, a reference to the forces; the checks
    on them run after the clock stops).
    """

    def __init__(self, ensemble):
        self._ensemble = ensemble
        self.positions: list = []
        self.forces: list = []

    def __getattr__(self, name: str):
        return getattr(self._ensemble, name)

    def evaluate(self, batch, **kwargs):
        out = self._ensemble.evaluate(batch, **kwargs)
        self.positions.append(batch.data["positions"].detach().clone())
        self.forces.append(out.forces)
        return out


def main() -> None:
    args = walker_arguments(__doc__.splitlines()[0]).parse_args()
    device = "cpu"  # both sides on CPU, as the other benchmarks here

    try:
        from importlib.metadata import version

        import torch_sim  # noqa: F401
        from torch_sim.models.mace import MaceModel  # noqa: F401

        ts_version = version("torch-sim-atomistic")
    except ImportError as exc:
        print(f"{INSTALL_HINT} ({exc})")
        sys.exit(2)

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="chemgap-bench-"))
    ensemble = train_members(tmp / "ens", args.channels, "none", device)
    print(model_line(ensemble, args.channels, "none", args.threads, device))
    print(
        f"{args.walkers} ethanol walkers x {args.steps} steps of {TIMESTEP_FS} fs, "
        f"{TEMPERATURE_K:g} K, friction {FRICTION_PER_FS}/fs; torch {torch.__version__}, "
        f"torch-sim-atomistic {ts_version}"
    )

    print(
        "load average (1, 5, 15 min) before timing: "
        + ", ".join(map("{:.2f}".format, os.getloadavg()))
    )
    # torch-sim first, before chemgap starts its member threads in this process
    committee = mace_committee(tmp / "ens", device, ensemble.dtype)
    run_torchsim(committee, ethanol_walkers(args.walkers), WARMUP_STEPS, seed=0)  # warm-up
    walkers = ethanol_walkers(args.walkers)
    seconds, ts_pos, ts_spread = run_torchsim(committee, walkers, args.steps, seed=1)
    ts_rate = args.walkers * args.steps / seconds
    print(
        f"torch-sim nvt_langevin + {len(committee.members)}-member MaceModel committee "
        f"(one batch, {len(committee.members)} passes per step): {ts_rate:.1f} walker-steps/s"
    )

    # chemgap: batched explorer (trust levels wide open so both do the same dynamics work)
    cfg = exploration_config(args.walkers, args.steps)
    recorder = RecordingEnsemble(ensemble)
    result, chemgap_rate = timed_explore(ensemble, recorder, walkers, cfg, WARMUP_STEPS)

    # correctness, after the clocks stopped
    checks = {
        "torch-sim": (
            max_bond_length(ts_pos, args.walkers),
            max(float(s.max()) for s in ts_spread),
            0,
        ),
        "chemgap": (
            max_bond_length(recorder.positions, args.walkers),
            max(float(force_spread(f).max()) for f in recorder.forces),
            len(result.failures),
        ),
    }
    intact = True
    for name, (bond, spread, failures) in checks.items():
        ok = bond < MAX_BOND_A and failures == 0
        intact &= ok
        print(
            f"{name}: longest bond over all walkers and steps {bond:.3f} Å, largest committee "
            f"force spread {spread:.3f} eV/Å, md_failures {failures}: "
            f"{'ethanol intact' if ok else 'BROKEN'}"
        )
    if not intact:
        print("a simulation broke a molecule: the timing below is not a valid comparison")
    print(f"speedup: {chemgap_rate / ts_rate:.1f}")
    if not intact:
        sys.exit(1)


if __name__ == "__main__":
    main()
