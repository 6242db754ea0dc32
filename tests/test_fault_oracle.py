"""The fault-injecting oracle: the rate it fails at, and each fault labelled with its category."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from chemgap.agent.store import structure_key
from chemgap.oracle import OracleConfig, label_batch
from chemgap.oracle.testing import FAULT_CATEGORY, FAULTS, FaultyCalculator, fault_draw


def cells(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def test_fault_rate_and_mix_follow_the_settings():
    """Over 2000 structures the failing fraction is 0.2 within a 99.9 % binomial band, every
    fault is drawn, and the draw is the same for a fresh instance (another process).
    """
    keys = [f"s{k:05d}" for k in range(2000)]
    calc, again = FaultyCalculator(rate=0.2, seed=3), FaultyCalculator(rate=0.2, seed=3)
    faults = [calc.fault_for(k) for k in keys]
    failed = sum(f is not None for f in faults)
    assert abs(failed / 2000 - 0.2) < 3.3 * np.sqrt(0.2 * 0.8 / 2000)
    assert {f for f in faults if f} == set(FAULTS)
    assert faults == [again.fault_for(k) for k in keys]
    drawn = [fault_draw(k, 3) < 0.2 for k in keys]
    assert drawn == [f is not None for f in faults]


@pytest.mark.parametrize("fault", ["raise", "scf", "hang", "nan", "inf", "crash"])
def test_each_fault_is_labelled_with_its_category(fault, tmp_path):
    """Every structure meets ``fault`` (rate 1) in the killable oracle child; the batch returns
    one result per structure with the fault's category, and the journal has every call.
    """
    journal = tmp_path / "calls.txt"
    kwargs = {"rate": 1.0, "faults": [fault], "journal": str(journal), "hang_s": 60}
    config = OracleConfig(
        name="ase",
        params={"calculator": "chemgap.oracle.testing:FaultyCalculator", "kwargs": kwargs},
        timeout_s=3.0,
        max_retries=0,
    )
    structures = cells(2)
    summary = label_batch(structures, config, isolate=True)
    assert summary.n_ok == 0 and summary.as_dict()["failures"] == {FAULT_CATEGORY[fault]: 2}
    started = [line.split()[1] for line in journal.read_text().splitlines() if "start" in line]
    assert started == [structure_key(a) for a in structures]


def test_answers_are_the_inner_calculators_and_once_makes_faults_transient(tmp_path):
    """A structure drawn to fail answers on its second call with ``once``, with EMT's values."""
    from ase.calculators.emt import EMT

    atoms = cells(1)[0]
    calc = FaultyCalculator(rate=1.0, faults=["raise"], once=str(tmp_path / "once"))
    atoms.calc = calc
    with pytest.raises(RuntimeError, match="injected"):
        atoms.get_potential_energy()
    calc.reset()
    energy = atoms.get_potential_energy()
    ref = atoms.copy()
    ref.calc = EMT()
    assert energy == pytest.approx(ref.get_potential_energy(), abs=1e-10)
