"""What every probe is handed (:class:`ProbeContext`), and how per-row values become metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from chemgap.campaigns.spec import ProbeName, ProbesConfig

from .potentials import Potentials
from .relax import Lattice, relax_lattice
from .results import Judge, Metric
from .system import ProbeSystem

__all__ = ["ProbeContext"]


@dataclass(kw_only=True)
class ProbeContext:
    """The model and oracle (as rows), the system, the settings and the run's seed.

    Attributes:
        pot: members, mean and oracle as rows (:class:`~.potentials.Potentials`); None when
            only checking which probes apply.
        system: the structures to start from.
        cfg: the ``probes`` section (per-probe settings, bounds, pass score).
        seed: seeds every random choice (MD velocities and noise).
        temperatures_K: the campaign's temperatures (MD probes' default).
        oracle_cheap: whether oracle MD is affordable (EMT, SW, Tersoff, a bare calculator).

    Each row's relaxed lattice (:meth:`lattice`) is found once per context and shared by the
    probes that need it (EOS, elastic constants).
    """

    pot: Potentials | None
    system: ProbeSystem
    cfg: ProbesConfig
    seed: int = 0
    temperatures_K: list[float] = field(default_factory=lambda: [300.0])
    oracle_cheap: bool = True
    _lattice: Lattice | None = field(default=None, init=False, repr=False)

    def lattice(self) -> Lattice:
        """Every row's own equilibrium lattice of the crystal (:func:`~.relax.relax_lattice`),
        found on the first call and kept.
        """
        if self._lattice is None:
            if self.system.crystal is None:
                raise ValueError("the system has no crystal")
            self._lattice = relax_lattice(self.pot, self.system.crystal)
        return self._lattice

    def lattice_notes(self) -> list[str]:
        """One note per row whose lattice search failed (its reason)."""
        lat = self.lattice()
        return [f"{self.pot.row_name(r)}: {why}" for r, why in enumerate(lat.reasons) if why]

    def metric(
        self,
        probe: ProbeName,
        name: str,
        values: Sequence[float] | np.ndarray,
        *,
        unit: str,
        label: str | None = None,
        judge: Judge = Judge.ERROR,
        oracle: bool = True,
        members: bool = True,
        bounded: bool = True,
    ) -> Metric:
        """A :class:`Metric` from one value per row (members, mean, oracle).

        Args:
            probe: whose bounds apply.
            name: the metric's bound key.
            values: (K + 2,) per row; the oracle's entry is ignored when ``oracle`` is False.
            unit: of the values.
            label: the display label (default ``name``).
            judge: what the bound is applied to.
            oracle: whether the last value is the oracle's.
            members: whether the first K values are the members' (False: none ran).
            bounded: False for an informational metric (no bound, no verdict).
        """
        v = [float(x) for x in values]
        k = self.pot.k
        bound = self.cfg.bounds_for(probe).get(name) if bounded else None
        return Metric(
            name=name,
            label=label or name,
            unit=unit,
            model=v[k],
            members=v[:k] if members else [],
            oracle=v[k + 1] if oracle else None,
            judge=judge,
            bound=bound,
            pass_score=self.cfg.pass_score,
        )

    def energy_triple(
        self,
        probe: ProbeName,
        name: str,
        relaxed: np.ndarray,
        unrelaxed: np.ndarray,
        error: np.ndarray,
        *,
        unit: str,
        labels: tuple[str, str, str],
    ) -> list[Metric]:
        """A defect energy relaxed (judged by ``name``'s bound), unrelaxed (``name``
        + ``_unrelaxed``, informational) and each row's energy error on the unrelaxed cell
        (``E_error``, meV/atom, no oracle value), each (R,) per row; ``labels`` are the three
        display labels.
        """
        label, unrelaxed_label, error_label = labels
        return [
            self.metric(probe, name, relaxed, unit=unit, label=label),
            self.metric(
                probe,
                f"{name}_unrelaxed",
                unrelaxed,
                unit=unit,
                label=unrelaxed_label,
                bounded=False,
            ),
            self.metric(
                probe,
                "E_error",
                error,
                unit="meV/atom",
                label=error_label,
                oracle=False,
                bounded=False,
            ),
        ]

    def curve(
        self,
        label: str,
        x: Sequence[float] | np.ndarray,
        rows: np.ndarray | Sequence[Sequence[float]],
    ) -> dict:
        """A plot-ready curve: ``x`` and, per row, y values (members, model, oracle).

        ``x`` is (n,) shared by every row, or (R, n) per row (each row on its own grid, as the
        EOS around each row's own volume): then ``x`` is the model's, ``oracle_x`` the
        oracle's and ``members_x`` the members'.
        """
        y = np.asarray(rows, dtype=float)
        xs = np.asarray(x, dtype=float)
        k = self.pot.k
        out = {
            "label": label,
            "x": _round(xs[k] if xs.ndim == 2 else xs),
            "members": [_round(y[i]) for i in range(k)],
            "model": _round(y[k]),
            "oracle": _round(y[k + 1]) if len(y) > k + 1 else None,
        }
        if xs.ndim == 2:
            out["members_x"] = [_round(xs[i]) for i in range(k)]
            out["oracle_x"] = _round(xs[k + 1]) if len(xs) > k + 1 else None
        return out


def _round(values: Sequence[float] | np.ndarray) -> list[float | None]:
    """JSON-ready floats (8 significant digits; non-finite as None)."""
    out = []
    for x in np.asarray(values, dtype=float).ravel():
        out.append(float(f"{x:.8g}") if np.isfinite(x) else None)
    return out
