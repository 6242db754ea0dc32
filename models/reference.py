"""A reference calculator behind the model contract: the oracle as an ensemble of identical members.

:class:`ReferenceModel` wraps any ASE calculator (EMT, an oracle built by
:func:`chemgap.oracle.make_calculator`, ...) as an :class:`~chemgap.models.contract.EnsembleModel`
of K identical members, so that anything the agent does with a model — predictions, batched MD,
relaxations, the physical-behaviour probes — can be done with the reference itself. Every
member returns the calculator's numbers, so the spread is exactly zero and a probe that compares
the model with the oracle must find zero error: the adapter is the probes' null test (torch-sim
validates its model interface the same way, against an analytic reference).

``models`` does not import ``oracle``: the caller hands in the calculator (or a factory of
calculators). Units: eV, Å, eV/Å, eV/Å³ (ASE's stress sign).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.data import chemical_symbols

from chemgap.common.files import atomic_write

from .calibration import Calibration, Residuals, fit_calibration
from .data import Batch, symbols_to_z, usable
from .predict import MemberOutputs, Prediction, summarise

__all__ = ["REFERENCE_FILE", "ReferenceModel"]

REFERENCE_FILE = "reference.json"
_HIST_BINS = 8  # radial histogram bins of the descriptors


class ReferenceModel:
    """An ASE calculator presented as an ensemble of ``n_members`` identical members.

    Args:
        calculator: a calculator, or a zero-argument factory returning one (called once).
        elements: chemical symbols the model accepts (its "one-hot" order is by atomic number).
        n_members: K; every member returns the same numbers.
        r_max: the cutoff reported to callers that build graphs (descriptors use it too), Å.
        name: a label saved with the model.

    Attributes:
        calculator: the wrapped calculator (evaluated one structure at a time).
        calls: structures evaluated so far (each evaluation serves all K members).
        graph_free: batches need no neighbour graph (MD callers may rebuild them every step).
    """

    graph_free = True

    def __init__(
        self,
        calculator: BaseCalculator | Callable[[], BaseCalculator],
        *,
        elements: Sequence[str],
        n_members: int = 2,
        r_max: float = 5.0,
        name: str = "reference",
    ):
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1 (got {n_members})")
        self.calculator = calculator if isinstance(calculator, BaseCalculator) else calculator()
        self.z_table = symbols_to_z(elements)
        self.n_members = int(n_members)
        self.r_max = float(r_max)
        self.dtype = "float64"
        self.device = torch.device("cpu")
        self.calibration: Calibration | None = None
        self.path: Path | None = None
        self.name = name
        self.calls = 0

    @property
    def elements(self) -> list[str]:
        """Chemical symbols, ordered by atomic number."""
        return [chemical_symbols[z] for z in self.z_table]

    # -- batches and evaluation
    def make_batch(self, structures: Sequence[Atoms], *, labels: bool = False) -> Batch:
        """A graph-free :class:`~chemgap.models.data.Batch`: positions (n_atoms, 3) Å, ``cell``
        (3 n_struct, 3) Å and ``pbc`` (n_struct, 3) in ``data`` (``labels`` is ignored).
        """
        if not structures:
            raise ValueError("structures: got an empty list, expected at least one structure")
        known = set(self.z_table)
        for i, atoms in enumerate(structures):
            extra = sorted({int(z) for z in atoms.numbers} - known)
            if extra:
                names = ", ".join(chemical_symbols[z] for z in extra)
                raise ValueError(
                    f"structure {i}: element(s) {names} not in the model's elements "
                    f"({', '.join(self.elements)})"
                )
        n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
        data = {
            "positions": torch.tensor(
                np.concatenate([a.positions for a in structures]), dtype=torch.float64
            ),
            "cell": torch.tensor(
                np.concatenate([np.asarray(a.cell[:]) for a in structures]), dtype=torch.float64
            ),
            "pbc": torch.tensor(np.stack([a.pbc for a in structures])),
        }
        return Batch(
            data=data,
            system_idx=np.repeat(np.arange(len(structures)), n_atoms),
            n_atoms=n_atoms,
            numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
        )

    def structures_of(self, batch: Batch) -> list[Atoms]:
        """The structures a batch holds, at the positions now in ``batch.data`` (callers such as
        the explorer move ``data['positions']`` between evaluations). Works on this model's
        batches and on MACE graphs alike (both carry positions, cell and pbc).
        """
        pos = batch.data["positions"].detach().double().cpu().numpy()
        cells = batch.data["cell"].detach().double().cpu().numpy().reshape(-1, 3, 3)
        pbc = batch.data["pbc"].detach().cpu().numpy().reshape(-1, 3).astype(bool)
        bounds = np.concatenate([[0], np.cumsum(batch.n_atoms)])
        return [
            Atoms(batch.numbers[a:b], pos[a:b], cell=cells[i], pbc=pbc[i])
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]

    def _single(self, atoms: Atoms, stress: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
        atoms.calc = self.calculator
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces(), dtype=float)
            sigma = None
            if stress:
                sigma = np.asarray(atoms.get_stress(voigt=False), dtype=float)
        finally:
            atoms.calc = None
        self.calls += 1
        return energy, forces, sigma

    def evaluate(
        self, batch: Batch, *, compute_stress: bool = False, node_features: bool = False
    ) -> MemberOutputs:
        """All (identical) members on ``batch``: energy (K, n_struct) eV, forces (K, n_atoms, 3)
        eV/Å, stress (K, n_struct, 3, 3) eV/Å³ (periodic structures only; zeros otherwise),
        node features (n_atoms, bins) radial histograms when asked for.
        """
        structures = self.structures_of(batch)
        results = [self._single(a, compute_stress and bool(a.pbc.all())) for a in structures]
        k = self.n_members
        energy = torch.tensor([r[0] for r in results], dtype=torch.float64)
        forces = torch.tensor(np.concatenate([r[1] for r in results]), dtype=torch.float64)
        stress = None
        if compute_stress:
            zero = np.zeros((3, 3))
            s = np.stack([r[2] if r[2] is not None else zero for r in results])
            stress = torch.tensor(s, dtype=torch.float64).expand(k, -1, -1, -1).clone()
        feats = None
        if node_features:
            per_atom = torch.tensor(
                np.concatenate([self._atom_features(a) for a in structures]), dtype=torch.float64
            )
            feats = [per_atom.clone() for _ in range(k)]
        return MemberOutputs(
            energy=energy.expand(k, -1).clone(),
            forces=forces.expand(k, -1, -1).clone(),
            stress=stress,
            node_feats=feats,
        )

    def _atom_features(self, atoms: Atoms) -> np.ndarray:
        """(n_atoms, 8) per-atom histogram of neighbour distances within ``r_max`` (invariant)."""
        from ase.neighborlist import neighbor_list

        i, d = neighbor_list("id", atoms, self.r_max)
        edges = np.linspace(0.0, self.r_max, _HIST_BINS + 1)
        out = np.zeros((len(atoms), _HIST_BINS))
        np.add.at(out, (i, np.clip(np.digitize(d, edges) - 1, 0, _HIST_BINS - 1)), 1.0)
        return out

    # -- predictions
    def predict(
        self,
        structures: Sequence[Atoms],
        *,
        compute_stress: bool = False,
        calibrated: bool = True,
    ) -> Prediction:
        """The calculator's energies and forces as an ensemble prediction (every std is 0)."""
        structures = list(structures)
        if not structures:
            raise ValueError("predict: got no structures")
        batch = self.make_batch(structures)
        outputs = self.evaluate(batch, compute_stress=compute_stress)
        cal = self.calibration if calibrated else None
        return summarise(
            outputs,
            batch,
            energy_scale=cal.energy_scale if cal else 1.0,
            force_scale_per_atom=cal.force_scales_for(batch.numbers) if cal else None,
            calibrated=cal is not None,
        )

    def descriptors(self, structures: Sequence[Atoms]) -> np.ndarray:
        """(n_struct, 8) per-structure mean radial histograms."""
        return np.stack([self._atom_features(a).mean(axis=0) for a in structures])

    def calibrate(self, labelled: Sequence[Atoms], **options: Any) -> Calibration:
        """Fit the calibration scales like an ensemble would: every std is zero, so every scale
        stays 1 and ``uncalibrated`` says why.
        """
        structures = usable(labelled)
        if not structures:
            raise ValueError("calibrate: no labelled structures (energy, forces, status ok)")
        res = Residuals.from_prediction(self.predict(structures, calibrated=False), structures)
        self.calibration = fit_calibration(res, per_element=options.get("per_element", True))
        return self.calibration

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``reference.json`` (elements, K, cutoff, the calculator's class and parameters,
        calibration); the calculator itself is not stored: :meth:`load` is handed one.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        calc = self.calculator
        meta = {
            "kind": "reference",
            "name": self.name,
            "elements": self.elements,
            "n_members": self.n_members,
            "r_max": self.r_max,
            "calculator": f"{type(calc).__module__}:{type(calc).__name__}",
            "parameters": _jsonable(getattr(calc, "parameters", {})),
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }
        atomic_write(path / REFERENCE_FILE, lambda fh: fh.write(json.dumps(meta, indent=2)))
        self.path = path
        return path

    @classmethod
    def load(
        cls, path: str | Path, calculator: BaseCalculator | Callable[[], BaseCalculator]
    ) -> ReferenceModel:
        """The model :meth:`save` wrote in ``path``, around ``calculator``."""
        path = Path(path)
        meta = json.loads((path / REFERENCE_FILE).read_text())
        model = cls(
            calculator,
            elements=meta["elements"],
            n_members=int(meta["n_members"]),
            r_max=float(meta["r_max"]),
            name=str(meta.get("name", "reference")),
        )
        cal = meta.get("calibration")
        model.calibration = Calibration.from_dict(cal) if cal else None
        model.path = path
        return model


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold replaced by its repr."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
