"""Pair-curve metrics (MLIP Arena / ML-PEG definitions) and the bound scoring, on analytic data;
the dimer probe judging a count against the oracle's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from scipy.signal import argrelextrema

from chemgap.agent.probes import ProbesConfig, run_probes
from chemgap.agent.probes.curves import diatomic_metrics, energy_jump
from chemgap.agent.probes.results import Judge, Metric, score
from chemgap.campaigns.spec import PROBE_BOUNDS, Bound, ProbeName
from chemgap.models.reference import ReferenceModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

D, A, R0 = 2.0, 1.5, 2.2  # Morse well depth (eV), width (1/Å), position (Å)
R = np.arange(0.5, 6.0, 0.02)


def morse(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy (eV) and projected force −dE/dr (eV/Å) of a Morse pair."""
    x = np.exp(-A * (r - R0))
    return D * (x**2 - 2 * x), 2 * A * D * (x**2 - x)


def wiggle(r: np.ndarray, h: float = 0.5, rb: float = 3.4, w: float = 0.12):
    """A Gaussian bump of height h (eV) at rb (Å) added to the Morse curve."""
    g = h * np.exp(-((r - rb) ** 2) / (2 * w**2))
    e, f = morse(r)
    return e + g, f + g * (r - rb) / w**2


def test_morse_curve_is_clean():
    e, f = morse(R)
    m = diatomic_metrics(R, e, f)
    # one sign change of the force, at the well: the bound curve ML-PEG scores as "good" (1)
    assert m["force_flips"] == 1
    assert m["tortuosity"] == pytest.approx(1.0, abs=1e-12)
    assert m["energy_minima"] == 1
    assert m["spearman_repulsion"] == pytest.approx(-1.0)
    assert m["spearman_attraction"] == pytest.approx(1.0)
    i = int(np.argmin(e))
    assert m["well_position"] == pytest.approx(R[i])
    assert abs(m["well_position"] - R0) <= 0.01
    assert m["well_depth"] == pytest.approx(e[-1] - e[i])
    # the only energy-jump contribution is the pair of steps around the well
    assert 0 < m["energy_jump"] < 0.01


def test_the_curve_order_does_not_matter():
    e, f = morse(R)
    perm = np.random.default_rng(0).permutation(len(R))
    a, b = diatomic_metrics(R, e, f), diatomic_metrics(R[perm], e[perm], f[perm])
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True)


def test_planted_wiggle_counts_what_the_definitions_demand():
    e, f = wiggle(R)
    m = diatomic_metrics(R, e, f)
    # the bump's two slopes reverse the (attractive) force twice more
    assert m["force_flips"] == 3
    assert m["energy_minima"] == 2
    # tortuosity: the bump adds twice its rise (local minimum -> local maximum) to the total
    # variation; the denominator (far field, well, short range) is unchanged
    order = np.argsort(R)[::-1]
    es = e[order] - e[order][0]
    lo = argrelextrema(es, np.less)[0]
    hi = argrelextrema(es, np.greater)[0]
    rise = es[hi[0]] - es[lo[0]]
    denominator = abs(es[0] - es.min()) + (es[-1] - es.min())
    assert m["tortuosity"] == pytest.approx(1 + 2 * rise / denominator, rel=1e-9)
    assert m["spearman_attraction"] < 1.0
    # two more flips of the energy steps: two more pairs of steps in the energy jump
    assert m["energy_jump"] > diatomic_metrics(R, *morse(R))["energy_jump"]


def test_energy_jump_by_hand():
    # far → near: down 1, down 1, up 1, up 1: one flip, |−1| + |1| = 2
    assert energy_jump(np.array([0.0, -1.0, -2.0, -1.0, 0.0])) == pytest.approx(2.0)
    # steps below 1 meV are dropped: the flip is between the steps −1 and +0.5005
    assert energy_jump(np.array([0.0, -1.0, -1.0005, -0.5])) == pytest.approx(1.5005)
    assert energy_jump(np.linspace(0, -3, 10)) == 0.0


def test_a_hole_in_the_repulsive_wall_is_seen():
    """Inside 1.6 Å the energy falls again (a hole shallower than the well), a classic MLIP
    failure: the repulsion Spearman leaves −1 and the metric fails against a Morse oracle.
    """
    e, f = morse(R)
    e_16 = morse(np.array([1.6]))[0][0]
    hole = np.where(R < 1.6, e_16 - 3.0 * (1.6 - R), e)
    m = diatomic_metrics(R, hole, -np.gradient(hole, R))
    assert m["force_flips"] == 2  # the force turns attractive again inside the hole
    assert m["spearman_repulsion"] > -0.5
    metric = Metric(
        name="spearman_repulsion",
        label="rho",
        unit="",
        model=m["spearman_repulsion"],
        members=[],
        oracle=diatomic_metrics(R, e, f)["spearman_repulsion"],
        judge=Judge.SHIFT,
        bound=Bound(good=-1.0, bad=0.0),
    )
    assert metric.passed is False


def test_score_is_ml_pegs_normalisation_both_ways():
    lower = Bound(good=1.0, bad=5.0)
    assert score(1.0, lower) == 1.0
    assert score(3.0, lower) == 0.5
    assert score(9.0, lower) == 0.0
    assert score(0.0, lower) == 1.0
    higher = Bound(good=1.0, bad=0.6)
    assert score(0.8, higher) == pytest.approx(0.5)
    assert score(math.nan, higher) == 0.0
    with pytest.raises(ValueError, match="differ"):
        Bound(good=1.0, bad=1.0)


def test_metric_judges_error_relative_error_shift_and_value():
    b = Bound(good=0.0, bad=2.0)
    err = Metric(name="x", label="x", unit="", model=3.0, members=[2.0, 4.0], oracle=2.5, bound=b)
    assert err.error == 0.5 and err.judged == 0.5 and err.score == 0.75 and err.passed
    assert err.band == pytest.approx(1.0)
    rel = Metric(name="x", label="x", unit="", model=3.0, members=[], oracle=2.0,
                 judge=Judge.RELATIVE_ERROR, bound=Bound(good=0.0, bad=1.0))  # fmt: skip
    assert rel.judged == pytest.approx(0.5)
    # shift: an oracle with a tortuosity of 3 and a model with 3 is as good as it gets
    tortuosity = Bound(good=1.0, bad=5.0)
    same = Metric(name="t", label="t", unit="", model=3.0, members=[], oracle=3.0,
                  judge=Judge.SHIFT, bound=tortuosity)  # fmt: skip
    worse = Metric(name="t", label="t", unit="", model=7.0, members=[], oracle=3.0,
                   judge=Judge.SHIFT, bound=tortuosity)  # fmt: skip
    assert same.score == 1.0 and worse.judged == 5.0 and worse.passed is False
    value = Metric(name="s", label="s", unit="", model=0.3, members=[], oracle=1.0,
                   judge=Judge.VALUE, bound=Bound(good=1.0, bad=0.0))  # fmt: skip
    assert value.judged == 0.3 and value.passed is False
    info = Metric(name="t", label="t", unit="ps", model=1.0, members=[], oracle=None)
    assert info.passed is None and info.to_dict()["score"] is None


@pytest.mark.parametrize("name", ["force_flips", "energy_minima"])
@pytest.mark.parametrize("pass_score", [0.01, 0.5, 1.0])
def test_a_count_passes_only_when_it_equals_the_oracles(name, pass_score):
    """``energy minima Cu-Cu 2 ± 0.5`` against the oracle's 1 (what passed under ``shift``)
    fails, at any pass score; so does a count below an odd oracle's; equal counts pass, an odd
    oracle's included.
    """
    bound = PROBE_BOUNDS[ProbeName.DIMER][name]

    def judged(model: float, oracle: float) -> Metric:
        return Metric(name=name, label=name, unit="", model=model, members=[2.0, 3.0],
                      oracle=oracle, judge=Judge.ERROR, bound=bound,
                      pass_score=pass_score)  # fmt: skip

    issue = judged(2.0, 1.0)
    assert issue.band == 0.5 and issue.score == 0.0 and issue.passed is False
    assert judged(1.0, 3.0).passed is False
    for count in (1.0, 3.0):
        assert judged(count, count).score == 1.0 and judged(count, count).passed is True


class PairCurve(Calculator):
    """A pair potential of non-periodic atoms given by an E(r), −dE/dr function (eV, eV/Å)."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, curve):
        super().__init__()
        self.curve = curve

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pos = self.atoms.positions
        energy, forces = 0.0, np.zeros_like(pos)
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                d = pos[j] - pos[i]
                r = float(np.linalg.norm(d))
                e, f = self.curve(np.array([r]))
                energy += float(e[0])
                forces[j] += f[0] * d / r
                forces[i] -= f[0] * d / r
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def test_the_dimer_probe_fails_a_second_minimum_the_oracle_lacks():
    """A model whose pair curve has a second well (the Morse curve with a bump) against the
    Morse oracle: energy minima 2 vs 1 and force flips 3 vs 1 fail; the same curve as the
    oracle passes.
    """
    cu = [Atoms("Cu")]

    def dimer(curve) -> dict[str, Metric]:
        model = ReferenceModel(PairCurve(curve), elements=["Cu"], n_members=2, r_max=5.0)
        report = run_probes(model, PairCurve(morse), cu, ProbesConfig(), names=["dimer"])
        return {m.name: m for m in report["dimer"].metrics}

    bumpy = dimer(wiggle)
    assert (bumpy["energy_minima"].model, bumpy["energy_minima"].oracle) == (2.0, 1.0)
    assert (bumpy["force_flips"].model, bumpy["force_flips"].oracle) == (3.0, 1.0)
    assert bumpy["energy_minima"].passed is False and bumpy["force_flips"].passed is False
    same = dimer(morse)
    assert same["energy_minima"].passed is True and same["force_flips"].passed is True
