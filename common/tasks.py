"""How chemgap fans work out: one policy for labelling, training and exploration.

The leaves (``chemgap.models``, ``chemgap.oracle``) never decide *where* their tasks run. A
function that fans out takes an ``executor`` argument; the agent hands it the Ray one
(``chemgap.agent.runtime.RayExecutor``), and ``None`` means :class:`InProcessExecutor`: the tasks
run one after another in the calling process. So library use and tests need no Ray, and
behaviour never depends on whether some Ray instance happens to be initialised.

An executor runs a list of :class:`Task` and yields a :class:`Done` per task **in completion
order**; a task that raised (or that the executor lost) comes back with ``error`` set, and
the caller decides what that means. Closing the iterator early (a ``break``, an exception in the
caller, Ctrl-C) cancels the tasks still outstanding. Progress from inside tasks travels through a
:class:`Channel`: ``put`` in the task, the callback runs in the driver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Channel",
    "Done",
    "Executor",
    "InProcessExecutor",
    "LocalShare",
    "Share",
    "Task",
    "resolve_executor",
    "thread_share",
]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One unit of work: ``fn(*args, **kwargs)``.

    Attributes:
        fn: a module-level function (so Ray can ship it by reference).
        name: what the Ray dashboard shows, e.g. ``label 17/40 · xtb · iter 3``.
        num_cpus, num_gpus: resources the task asks for (ignored in-process).
        max_retries: re-runs after the worker or node running it died (not after ``fn``
            raised). Every chemgap task may run again from its arguments (training and
            exploration are seeded), so the default re-runs a task lost to a killed worker
            or a lost node twice before its error comes back.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2


@dataclass(kw_only=True)
class Done:
    """The outcome of task ``index`` (its position in the submitted list)."""

    index: int
    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        """The task's return value; re-raises its error."""
        if self.error is not None:
            raise self.error
        return self.value


class Channel(Protocol):
    """A one-way line from tasks to the driver: ``put`` anywhere, the callback runs in the
    driver. Pass the channel itself as a task argument.
    """

    def put(self, item: Any) -> None:
        """Send ``item`` to the driver's callback."""


def thread_share(cpus: int, running: int) -> int:
    """Threads each of ``running`` tasks gets of ``cpus`` CPUs (at least one)."""
    return max(1, int(cpus) // max(1, int(running)))


class Share(Protocol):
    """``cpus`` CPUs shared by a group of tasks that run at once (an ensemble's members): a
    task joins when it starts, leaves when it ends, and asks for its share as it goes, so the
    threads of the tasks still running grow as the others finish and no core idles while
    work remains. Pass the share itself as a task argument.
    """

    cpus: int

    def join(self, key: int) -> None:
        """Count task ``key`` as running (a retried task joining again counts once)."""

    def leave(self, key: int) -> None:
        """Task ``key`` ended."""

    def running(self) -> int:
        """How many tasks of the group run now."""

    def threads(self) -> int:
        """A running task's share now: :func:`thread_share` of ``cpus`` by :meth:`running`."""


class LocalShare:
    """In-process share: tasks run one after another, so the one running has every CPU."""

    def __init__(self, cpus: int):
        self.cpus = int(cpus)
        self._keys: set[int] = set()

    def join(self, key: int) -> None:
        """Count task ``key`` as running."""
        self._keys.add(key)

    def leave(self, key: int) -> None:
        """Task ``key`` ended."""
        self._keys.discard(key)

    def running(self) -> int:
        """Tasks running now (one at a time in-process)."""
        return len(self._keys)

    def threads(self) -> int:
        """Every CPU for the one task running."""
        return thread_share(self.cpus, self.running())


@runtime_checkable
class Executor(Protocol):
    """Runs tasks somewhere and reports them as they finish."""

    parallel: bool
    """True when tasks run concurrently (then splitting work into many tasks pays)."""

    def run(self, tasks: Sequence[Task]) -> Iterator[Done]:
        """Start every task; yield a :class:`Done` per task in completion order. Closing the
        iterator before the end cancels the outstanding tasks.
        """

    def resources(self) -> dict[str, float]:
        """What the executor can use at once: ``{"CPU": n, "GPU": g}``."""

    def channel(self, callback: Callable[[Any], None]) -> Channel:
        """A :class:`Channel` whose items reach ``callback`` in the driver while :meth:`run`
        iterates (in-process: at once).
        """

    def share(self, cpus: int, running: int = 1) -> Share:
        """A :class:`Share` of ``cpus`` CPUs for the tasks of the next :meth:`run`; a task
        assumes ``running`` tasks run until it learns otherwise.
        """


class _DirectChannel:
    """In-process channel: ``put`` calls the callback right away."""

    def __init__(self, callback: Callable[[Any], None]):
        self._callback = callback

    def put(self, item: Any) -> None:
        self._callback(item)


class InProcessExecutor:
    """Runs tasks one after another in this process (the default; tests and library use).

    An exception from a task is returned in its :class:`Done`; ``KeyboardInterrupt`` propagates.
    """

    parallel = False

    def run(self, tasks: Sequence[Task]) -> Iterator[Done]:
        """Run each task in order and yield its outcome."""
        for i, task in enumerate(tasks):
            try:
                value = task.fn(*task.args, **task.kwargs)
            except Exception as exc:
                yield Done(index=i, error=exc)
            else:
                yield Done(index=i, value=value)

    def resources(self) -> dict[str, float]:
        """This machine's CPUs (and CUDA GPUs when torch sees any)."""
        gpus = 0.0
        try:
            import torch

            gpus = float(torch.cuda.device_count())
        except ImportError:  # pragma: no cover
            pass
        return {"CPU": float(os.cpu_count() or 1), "GPU": gpus}

    def channel(self, callback: Callable[[Any], None]) -> Channel:
        """A channel that calls ``callback`` as soon as a task puts an item."""
        return _DirectChannel(callback)

    def share(self, cpus: int, running: int = 1) -> Share:
        """Every CPU for each task in turn (``running`` does not apply in-process)."""
        return LocalShare(cpus)


def resolve_executor(executor: Executor | None) -> Executor:
    """``executor``, or a fresh :class:`InProcessExecutor` for None."""
    return InProcessExecutor() if executor is None else executor
