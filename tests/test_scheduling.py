"""How an ensemble's members share the machine: every member runs at once, and the threads of
those still running grow as the others finish; the scheduling never changes what is learned.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from test_models import SMALL, cu_cells

from chemgap.common.tasks import LocalShare, Task, thread_share
from chemgap.models.config import EnsembleConfig
from chemgap.models.ensemble import task_resources, train_ensemble

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _settled(share) -> tuple[int, int]:
    """(running, threads) once the task's view has caught up (threads follows one call late)."""
    for _ in range(10):
        share.threads()
        time.sleep(0.05)
    return share.running(), share.threads()


def _member(share, key: int, leave_early: bool) -> list[tuple[int, int]]:
    """A task of a share: (running, threads) seen from inside it at each stage."""
    share.join(key)
    seen = []
    try:
        deadline = time.monotonic() + 60
        while share.running() < 3 and time.monotonic() < deadline:  # all three started
            time.sleep(0.05)
        seen.append(_settled(share))
        if leave_early:
            time.sleep(2.0)  # until the others have looked too
            return seen
        while share.running() > 1 and time.monotonic() < deadline:  # the others have left
            time.sleep(0.05)
        seen.append(_settled(share))
        return seen
    finally:
        share.leave(key)


def test_running_members_get_their_share_of_the_cores(ray_ships_this_module):
    """Three members on 2 CPUs, seen from inside their Ray tasks: one thread each while all
    three run; the one left alone gets both cores.
    """
    from chemgap.agent.runtime import RayExecutor

    executor = RayExecutor()
    share = executor.share(2)
    num_cpus, _, threads = task_resources(3, EnsembleConfig(members=3), {"CPU": 2.0})
    assert (num_cpus, threads) == (pytest.approx(2 / 3), 1)  # all three at once
    tasks = [
        Task(fn=_member, args=(share, k, k < 2), name=f"member {k}", num_cpus=num_cpus)
        for k in range(3)
    ]
    seen = {done.index: done.result() for done in executor.run(tasks)}
    assert seen[0] == seen[1] == [(3, 1)]
    assert seen[2] == [(3, 1), (1, 2)]


def test_thread_share_and_the_in_process_share():
    assert [thread_share(2, n) for n in (1, 2, 3, 4)] == [2, 1, 1, 1]
    assert [thread_share(16, n) for n in (1, 3, 4)] == [16, 5, 4]
    # members that divide evenly over the cores run C at a time, a core each; others all at once
    assert task_resources(4, EnsembleConfig(members=4), {"CPU": 2.0}) == (1.0, 0.0, 1)
    assert task_resources(2, EnsembleConfig(members=2), {"CPU": 2.0}) == (1.0, 0.0, 1)
    assert task_resources(1, EnsembleConfig(members=1), {"CPU": 2.0}) == (2.0, 0.0, 2)
    assert task_resources(5, EnsembleConfig(members=5), {"CPU": 2.0})[:2] == (0.5, 0.0)
    local = LocalShare(4)
    local.join(0)
    assert (local.running(), local.threads()) == (1, 4)
    local.leave(0)
    assert local.running() == 0
    # with GPUs a member asks for one CPU and its GPU share
    assert task_resources(4, EnsembleConfig(members=4), {"CPU": 8.0, "GPU": 2.0})[:2] == (1.0, 0.5)


@pytest.mark.slow
def test_scheduling_does_not_change_the_weights(ray_session, tmp_path):
    """The same seeds give the same members whether they train one after another in this
    process (all cores each) or side by side as Ray tasks whose threads follow the share
    (within float32 reordering: thread counts change summation order).
    """
    from chemgap.agent.runtime import RayExecutor

    data = cu_cells(12, 0)
    cfg = EnsembleConfig(members=3, max_epochs=3, batch_size=4, lr=1e-2, patience=50)
    alone = train_ensemble(data, SMALL, cfg, tmp_path / "alone", seed=5)
    shared = train_ensemble(data, SMALL, cfg, tmp_path / "ray", seed=5, executor=RayExecutor())
    for a, b in zip(alone.members, shared.members, strict=True):
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            if torch.is_floating_point(pa):
                np.testing.assert_allclose(
                    pb.numpy(), pa.numpy(), rtol=1e-3, atol=1e-5, err_msg=name
                )
    pred_a, pred_b = alone.predict(data[:3]), shared.predict(data[:3])
    np.testing.assert_allclose(pred_b.forces_mean, pred_a.forces_mean, atol=1e-4)
