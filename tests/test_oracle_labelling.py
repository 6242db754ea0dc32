"""Labelling: stored keys, triage before the call, retries, hard time limits, Ray batches."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from test_oracle_helpers import HERE, SPEC

from chemgap.oracle import FailureCategory, OracleConfig, label_batch, label_one
from chemgap.oracle.labelling import task_name
from chemgap.oracle.results import LabelResult
from chemgap.oracle.sandbox import OracleProcess, calculator_key


def programmable(tmp_path: Path | None = None, **update) -> OracleConfig:
    """The ``ase`` backend pointing at the test calculator (EMT unless told to misbehave)."""
    kwargs = {"marker": str(tmp_path / "calls.txt")} if tmp_path is not None else {}
    params = {"calculator": SPEC, "python_path": [HERE], "kwargs": kwargs}
    return OracleConfig(name="ase", params=params, **update)


def calls(tmp_path: Path) -> int:
    marker = tmp_path / "calls.txt"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def with_behaviour(atoms: Atoms, behaviour: str) -> Atoms:
    atoms = atoms.copy()
    atoms.info["behaviour"] = behaviour
    return atoms


def test_label_stores_ref_keys_and_no_calculator():
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.info["REF_energy"] = 123.0  # a stale label must not survive
    result = label_one(atoms, OracleConfig(name="emt"))
    out = result.atoms
    assert result.ok and result.status == "ok" and result.attempts == 1
    assert out.calc is None
    assert out.info["REF_energy"] != 123.0
    assert out.info["label_status"] == "ok" and out.info["oracle"] == "emt"
    assert out.arrays["REF_forces"].shape == (4, 3)
    assert out.info["REF_stress"].shape == (6,)
    # Same numbers as calling EMT directly, in ASE's stress sign convention.
    from ase.calculators.emt import EMT

    ref = atoms.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(out.info["REF_energy"], ref.get_potential_energy())
    np.testing.assert_allclose(out.arrays["REF_forces"], ref.get_forces())
    np.testing.assert_allclose(out.info["REF_stress"], ref.get_stress(voigt=True))
    assert atoms.info["REF_energy"] == 123.0  # the input is untouched


def test_molecule_has_no_stress():
    result = label_one(molecule("H2O"), OracleConfig(name="xtb"))
    assert result.ok and result.stress is None
    assert "REF_stress" not in result.atoms.info


def test_close_atoms_rejected_without_calling_the_oracle(tmp_path):
    pair = Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 0.1)])
    result = label_one(pair, programmable(tmp_path))
    assert result.failure == FailureCategory.UNPHYSICAL_GEOMETRY
    assert result.attempts == 0 and "0.100 Å" in result.message
    assert calls(tmp_path) == 0
    assert "REF_energy" not in result.atoms.info
    # A sane dimer does call it.
    assert label_one(Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 2.5)]), programmable(tmp_path)).ok
    assert calls(tmp_path) == 1


def test_nan_positions_and_periodic_images_are_unphysical():
    nan = molecule("H2O")
    nan.positions[1, 0] = np.nan
    assert label_one(nan, OracleConfig(name="xtb")).failure == "unphysical_geometry"
    # One Cu atom in a 1 Å periodic cell overlaps its own images.
    tiny = Atoms("Cu", cell=np.eye(3), pbc=True)
    assert label_one(tiny, OracleConfig(name="emt")).failure == "unphysical_geometry"


def test_unsupported_elements():
    silicon = label_one(bulk("Si", "diamond", 5.431), OracleConfig(name="emt"))
    assert silicon.failure == FailureCategory.UNSUPPORTED_ELEMENT and silicon.attempts == 0
    assert "Si" in silicon.message and "Cu" in silicon.message
    # SW has Si and Ge but no cross terms: the calculator refuses a SiGe cell.
    sige = bulk("Si", "diamond", 5.5, cubic=True)
    sige.symbols[:4] = "Ge"
    mixed = label_one(sige, OracleConfig(name="sw"))
    assert mixed.failure == FailureCategory.UNSUPPORTED_ELEMENT and mixed.attempts == 1


@pytest.mark.parametrize(
    ("behaviour", "category"),
    [("raise", "crashed"), ("nan", "non_finite_result"), ("scf", "scf_not_converged")],
)
def test_calculator_failures_are_categorised(behaviour, category):
    result = label_one(with_behaviour(bulk("Cu"), behaviour), programmable(max_retries=2))
    assert result.status == category
    assert result.atoms.info["label_status"] == category
    assert "REF_energy" not in result.atoms.info
    # The generic ase backend has no softer settings to retry with.
    assert result.attempts == 1


def test_xtb_scf_failure_retried_with_softer_settings():
    water = molecule("H2O")
    strict = {"max_iterations": 3}
    failed = label_one(water, OracleConfig(name="xtb", params=strict, max_retries=0))
    assert failed.failure == FailureCategory.SCF_NOT_CONVERGED and failed.attempts == 1
    retried = label_one(water, OracleConfig(name="xtb", params=strict, max_retries=3))
    assert retried.ok and retried.attempts > 1
    assert "electronic_temperature" in retried.message
    reference = label_one(water, OracleConfig(name="xtb"))
    assert retried.energy == pytest.approx(reference.energy, abs=1e-4)


def test_isolated_call_killed_at_time_limit_and_child_restarted():
    process = OracleProcess(threads=1)
    try:
        config = programmable(timeout_s=1.0)
        key = calculator_key(config)
        start = time.monotonic()
        slow = process.evaluate(with_behaviour(bulk("Cu"), "sleep"), key, config.timeout_s)
        assert slow.failure == FailureCategory.TIMEOUT
        assert time.monotonic() - start < 20  # the 60 s sleep was killed
        crashed = process.evaluate(with_behaviour(bulk("Cu"), "segfault"), key, 30.0)
        assert crashed.failure == FailureCategory.CRASHED and "SIGSEGV" in crashed.message
        fine = process.evaluate(bulk("Cu"), key, 30.0)
        assert fine.failure is None and np.isfinite(fine.energy)
    finally:
        process.close()


def test_label_one_isolated_matches_in_process():
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=4)
    config = OracleConfig(name="emt")
    isolated = label_one(atoms, config, isolate=True)
    local = label_one(atoms, config)
    assert isolated.energy == local.energy
    np.testing.assert_array_equal(isolated.forces, local.forces)


def test_task_names_read_like_the_campaign():
    assert task_name(16, 40, "xtb") == "label 17/40 · xtb"
    assert task_name(0, 5, "emt", iteration=3) == "label 1/5 · emt · iter 3"


def test_batch_as_ray_tasks_survives_every_failure(ray_session, tmp_path):
    good = bulk("Cu", cubic=True)
    good.rattle(0.02, seed=5)
    batch = [
        good,
        with_behaviour(bulk("Cu"), "raise"),
        Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 0.1)]),
        with_behaviour(bulk("Cu"), "sleep"),
        with_behaviour(bulk("Cu"), "segfault"),
        with_behaviour(bulk("Cu"), "scf"),
        bulk("Si", "diamond", 5.431),
        bulk("Cu", "fcc", 3.7),
    ]
    seen: dict[int, LabelResult] = {}

    def store(index: int, result: LabelResult) -> None:
        assert index not in seen
        seen[index] = result

    from chemgap.agent.runtime import RayExecutor

    summary = label_batch(
        batch,
        programmable(tmp_path, timeout_s=3.0),
        on_result=store,
        iteration=1,
        executor=RayExecutor(),
    )
    assert sorted(seen) == list(range(len(batch)))
    statuses = [seen[i].status for i in range(len(batch))]
    assert statuses == [
        "ok",
        "crashed",
        "unphysical_geometry",
        "timeout",
        "crashed",
        "scf_not_converged",
        "unsupported_element",  # EMT inside raised "No EMT-potential for Si"
        "ok",
    ]
    assert summary.n_ok == 2 and summary.n_total == len(batch)
    assert summary.failures == {
        FailureCategory.CRASHED: 2,
        FailureCategory.UNPHYSICAL_GEOMETRY: 1,
        FailureCategory.TIMEOUT: 1,
        FailureCategory.SCF_NOT_CONVERGED: 1,
        FailureCategory.UNSUPPORTED_ELEMENT: 1,
    }
    np.testing.assert_allclose(
        seen[0].energy, label_one(good, OracleConfig(name="emt")).energy, atol=1e-12
    )
    assert calls(tmp_path) == 7  # the close pair never reached the calculator
    assert seen[0].seconds > 0 and seen[2].seconds == 0


def test_batch_runs_in_process_without_an_executor(monkeypatch):
    """The fan-out policy: no executor means in-process, never Ray (even if Ray is up)."""
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("label_batch without an executor must not use Ray")

    monkeypatch.setattr(ray, "remote", no_ray)
    monkeypatch.setattr(ray, "wait", no_ray)
    cells = [bulk("Cu", cubic=True), bulk("Cu", "fcc", 3.7)]
    order = []
    summary = label_batch(cells, OracleConfig(name="emt"), on_result=lambda i, r: order.append(i))
    assert summary.n_ok == 2 and order == [0, 1]
