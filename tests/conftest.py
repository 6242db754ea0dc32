"""Shared fixtures: one local Ray instance for the whole session, seeded RNGs, a spy on the
region search's final judgement.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance (2 CPUs, no dashboard) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            namespace="chemgap-tests",
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def ray_ships_this_module(ray_session, request):
    """Ray workers cannot import a test module (tests/ is not on their path): ship the
    requesting module's functions by value while the test runs.
    """
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(request.module)
    yield
    cloudpickle.unregister_pickle_by_value(request.module)


def _spy_on_judge(monkeypatch, snapshot: Callable[[list[Any]], list[Any]]) -> list[list[Any]]:
    """Record ``snapshot(regions)`` each time the region search judges its hypotheses
    (``search._judge``, which runs last: silent, severity, level).
    """
    from chemgap.agent.diagnostics import search

    calls: list[list[Any]] = []
    judge = search._judge

    def spy(regions: list[Any], cfg: Any) -> None:
        judge(regions, cfg)
        calls.append(snapshot(regions))

    monkeypatch.setattr(search, "_judge", spy)
    return calls


@pytest.fixture
def judged(monkeypatch) -> list[list[Any]]:
    """Every hypothesis each region search tested, once judged: the live objects (the folding
    that follows shows on them).
    """
    return _spy_on_judge(monkeypatch, list)


@pytest.fixture
def judged_copies(monkeypatch) -> list[list[Any]]:
    """The same as :func:`judged`, as deep copies taken when judged (before any folding)."""
    return _spy_on_judge(monkeypatch, copy.deepcopy)
