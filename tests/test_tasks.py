"""The fan-out policy (chemgap.common.tasks): in-process and Ray executors behave alike."""

from __future__ import annotations

import time

import pytest

from chemgap.common.tasks import InProcessExecutor, Task, resolve_executor


def _sleep_then(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def _fail(message: str) -> None:
    raise ValueError(message)


def _report(channel, items: list[int]) -> int:
    for item in items:
        channel.put(item)
    return len(items)


def test_in_process_runs_in_order_and_returns_errors():
    tasks = [
        Task(fn=_sleep_then, args=(1, 0.0)),
        Task(fn=_fail, args=("bad input",)),
        Task(fn=_sleep_then, args=(3, 0.0)),
    ]
    done = list(InProcessExecutor().run(tasks))
    assert [d.index for d in done] == [0, 1, 2]
    assert done[0].result() == 1 and done[2].result() == 3
    assert isinstance(done[1].error, ValueError)
    with pytest.raises(ValueError, match="bad input"):
        done[1].result()
    assert isinstance(resolve_executor(None), InProcessExecutor)


def test_in_process_channel_delivers_at_once():
    got: list[int] = []
    ex = InProcessExecutor()
    ch = ex.channel(got.append)
    assert [d.result() for d in ex.run([Task(fn=_report, args=(ch, [1, 2, 3]))])] == [3]
    assert got == [1, 2, 3]


def test_ray_executor_completion_order_errors_and_channel(ray_ships_this_module):
    from chemgap.agent.runtime import RayExecutor

    ex = RayExecutor(poll_s=0.05)
    got: list[int] = []
    ch = ex.channel(got.append)
    tasks = [
        Task(fn=_sleep_then, args=(0, 5.0), name="slow"),
        Task(fn=_sleep_then, args=(1, 0.0), name="fast"),
        Task(fn=_fail, args=("from a worker",), name="fails"),
        Task(fn=_report, args=(ch, [7, 8]), name="reports", num_cpus=0),
    ]
    done = list(ex.run(tasks))
    assert sorted(d.index for d in done) == [0, 1, 2, 3]
    # completion order, not submission order: the slow task, submitted first, comes after the
    # fast one (5 s of slack for a worker that starts late on a loaded machine)
    order = [d.index for d in done]
    assert order.index(1) < order.index(0)
    failed = next(d for d in done if d.index == 2)
    assert isinstance(failed.error, ValueError)  # the task's own exception type
    assert sorted(got) == [7, 8]


def test_ray_executor_cancels_outstanding_tasks_when_closed(ray_ships_this_module):
    from chemgap.agent.runtime import RayExecutor

    ex = RayExecutor()
    tasks = [Task(fn=_sleep_then, args=(i, 0.0 if i == 0 else 60.0)) for i in range(2)]
    start = time.monotonic()
    stream = ex.run(tasks)
    first = next(stream)
    stream.close()  # what a break or an exception in the caller does
    assert first.index == 0 and time.monotonic() - start < 30
