"""The Ray runtime a command runs in: a local instance with its dashboard, or an existing cluster.

Every command that fans work out (labelling, training, exploration, campaigns) enters
:func:`ray_runtime` once and hands :class:`RayExecutor` down to the library functions, which
take the way to run tasks from their caller (:mod:`chemgap.common.tasks`): without one they run
in-process, whether or not a Ray instance happens to be up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chemgap.agent.errors import BadInput
from chemgap.common.tasks import Channel, Done, Share, Task, thread_share

log = logging.getLogger(__name__)

NAMESPACE = "chemgap"


@dataclass(frozen=True, kw_only=True)
class RuntimeInfo:
    """What the command runs on.

    Attributes:
        address: GCS address of the cluster (``host:port``).
        dashboard_url: ``http://127.0.0.1:8265``-style URL, or None without a dashboard.
        num_cpus: CPUs the cluster offers.
        num_gpus: GPUs the cluster offers (0 on a CPU machine).
        started: True when this process started the instance (and shuts it down on exit).
        executor: the :class:`RayExecutor` to hand to library functions.
    """

    address: str
    dashboard_url: str | None
    num_cpus: int
    num_gpus: int
    started: bool
    executor: RayExecutor = field(default_factory=lambda: RayExecutor())


def _info(started: bool, dashboard_url: str | None) -> RuntimeInfo:
    import ray

    resources = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    address = ctx.gcs_address
    if dashboard_url and not dashboard_url.startswith("http"):
        dashboard_url = f"http://{dashboard_url}"
    return RuntimeInfo(
        address=address,
        dashboard_url=dashboard_url or None,
        num_cpus=int(resources.get("CPU", 0)),
        num_gpus=int(resources.get("GPU", 0)),
        started=started,
    )


def probe_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast when nothing listens at ``address`` (``ray.init`` would retry for minutes)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BadInput(f"--address: expected HOST:PORT, ray://HOST:PORT or auto (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BadInput(
            f"--address: no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one "
            "with 'ray start --head' or leave --address out for a local instance"
        ) from exc


TOKEN_HELP = (
    "copy the head node's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN) and "
    "export RAY_AUTH_MODE=token"
)


def use_token_if_present() -> bool:
    """Turn Ray's token authentication on for a connection to a cluster when a token is at
    hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and the user has
    not chosen a mode (``RAY_AUTH_MODE``); returns whether the mode is ``token``.

    ``ray start --head`` turns token authentication on by default, but Ray's ``ray.init`` sends
    the token to an explicit address only when ``RAY_AUTH_MODE=token``: without this, the
    default cluster would refuse chemgap's ``--address``.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


def _keep_token_auth() -> None:
    """Keep Ray's token authentication on for a local instance, whatever ``RAY_AUTH_MODE``
    says (a warning when it said otherwise): its GCS and raylet listen on the machine's
    addresses, and without the token anyone who reaches them can run code on it.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        log.warning(
            "RAY_AUTH_MODE=%s ignored: chemgap's local Ray keeps token authentication on", mode
        )
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray caches the mode it read at import


def _connect_error(address: str, exc: BaseException) -> str:
    """One sentence for a failed connection to ``address``."""
    text = f"{exc} {exc.__cause__ or ''}"
    if "InvalidAuthToken" in text or "Authentication" in text:
        return (
            f"--address: the Ray cluster at {address!r} refused chemgap's authentication "
            f"token (Ray's token authentication is on there); {TOKEN_HELP}"
        )
    return (
        f"--address: no Ray cluster answers at {address!r} ({exc}); start one with "
        "'ray start --head' or leave --address out for a local instance"
    )


@contextmanager
def ray_runtime(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool = True,
) -> Iterator[RuntimeInfo]:
    """Start a local Ray instance or connect to ``address``; shut down cleanly on exit.

    Args:
        address: ``host:port`` of a running cluster (``ray start --head`` prints it), ``"auto"``
            for the cluster this machine belongs to, or None to start a local instance.
        num_cpus: CPUs of a local instance (default: detected).
        num_gpus: GPUs of a local instance (default: detected).
        dashboard: start the Ray dashboard with a local instance, bound to 127.0.0.1 only.

    If Ray is already initialised in this process (a test session, a notebook), that instance is
    used and left running. A ``KeyboardInterrupt`` inside the block still shuts Ray down before it
    propagates, so the caller can save state and exit 130.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield _info(False, None)
        return
    if address is not None:
        probe_address(address)
        if num_cpus is not None or num_gpus is not None:
            raise BadInput("--num-cpus/--num-gpus apply to a local instance, not with --address")
        use_token_if_present()
        try:
            ctx = ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BadInput(_connect_error(address, exc)) from exc
        started = False
    else:
        _keep_token_auth()
        ctx = ray.init(
            address="local",  # a new instance, even when this machine runs a cluster
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
        started = True
    try:
        info = _info(started, getattr(ctx, "dashboard_url", None) if dashboard else None)
        log.info(
            "Ray %s at %s: %d CPUs, %d GPUs%s",
            "started" if started else "connected",
            info.address,
            info.num_cpus,
            info.num_gpus,
            f", dashboard {info.dashboard_url}" if info.dashboard_url else "",
        )
        yield info
    finally:
        ray.shutdown()
        log.info("Ray shut down")


# --------------------------------------------------------------------------- the executor
class _ChannelActor:
    """Ray actor holding the items tasks put until the driver drains them."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)

    def drain(self) -> list[Any]:
        out, self.items = self.items, []
        return out


class _ShareActor:
    """Ray actor counting the tasks of a :class:`~chemgap.common.tasks.Share` that run."""

    def __init__(self) -> None:
        self.keys: set[int] = set()

    def join(self, key: int) -> int:
        self.keys.add(key)
        return len(self.keys)

    def leave(self, key: int) -> int:
        self.keys.discard(key)
        return len(self.keys)

    def running(self) -> int:
        return len(self.keys)


class _RayShare:
    """What a task holds of a share. Nothing here waits on the actor inside a training epoch:
    a task blocked in ``ray.get`` lends its CPUs back to Ray, which would start another member
    on them. ``join`` and ``leave`` are sent and not waited for; ``threads`` answers with the
    count the actor gave last and asks again (so it follows the others one epoch late).
    """

    def __init__(self, actor: Any, cpus: int, running: int = 1):
        self._actor, self.cpus = actor, int(cpus)
        self._asked: Any = None
        self._running = int(running)  # until the actor has answered

    def join(self, key: int) -> None:
        self._actor.join.remote(key)

    def leave(self, key: int) -> None:
        self._actor.leave.remote(key)

    def running(self) -> int:
        """The count now (waits for the actor: for tests and the driver, not inside epochs)."""
        import ray

        return int(ray.get(self._actor.running.remote()))

    def threads(self) -> int:
        import ray

        if self._asked is not None:
            ready, _ = ray.wait([self._asked], timeout=0)
            if ready:
                self._running = int(ray.get(ready[0]))
                self._asked = None
        if self._asked is None:
            self._asked = self._actor.running.remote()
        return thread_share(self.cpus, self._running)


class _RayChannel:
    """What a task holds: ``put`` sends to the actor (fire and forget)."""

    def __init__(self, actor: Any):
        self._actor = actor

    def put(self, item: Any) -> None:
        self._actor.put.remote(item)


def _run_placed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """Body of every chemgap Ray task: ``fn``'s value with the id of the node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(*args, **kwargs)


_REMOTE: list[Any] = []


def _remote() -> Any:
    import ray

    if not _REMOTE:
        _REMOTE.append(ray.remote(_run_placed))
    return _REMOTE[0]


def task_kind(name: str) -> str:
    """What a task does, from its name: ``label 3/8 · emt · iter 2`` -> ``label``."""
    words = []
    for word in name.split():
        if any(c.isdigit() for c in word) or word == "·":
            break
        words.append(word)
    return " ".join(words) or name


class RayExecutor:
    """Runs :class:`~chemgap.common.tasks.Task` s as named Ray tasks on the initialised cluster.

    Results come back in completion order (``ray.wait``); closing the iterator early cancels the
    outstanding tasks (``ray.cancel(force=True)``). A task whose worker died comes back with the
    Ray error in ``Done.error``; one whose function raised, with that exception (as its own type,
    so a ``ValueError`` stays a ``ValueError``). Channels are drained every ``poll_s`` while
    :meth:`run` waits, and closed when it ends.
    """

    parallel = True

    def __init__(self, poll_s: float = 0.5):
        self.poll_s = poll_s
        self._channels: list[tuple[Any, Callable[[Any], None]]] = []
        self.placements: list[tuple[str, str]] = []  # (task name, node id) of finished tasks
        self._recorded = 0  # placements already in a record()
        self._shares: list[Any] = []  # share actors, killed when the run using them ends

    def record(self, path: Path, iteration: int | str) -> None:
        """Add the tasks finished since the last record to ``path`` (``cluster.json``) under
        ``iteration``, with the cluster's nodes as they are now (on the same cluster, nodes seen
        before and gone since stay, marked not alive; a resume on a new local instance starts
        the node list afresh, the task counts go on); atomic, and never fatal (a warning when
        it cannot be written).
        """
        from chemgap.common.files import atomic_write_text

        try:
            now = self.cluster(since=self._recorded)
            self._recorded = len(self.placements)
            old = json.loads(path.read_text()) if path.exists() else {}
            nodes = {}
            if old.get("address") == now["address"]:  # the same cluster: keep the nodes lost
                nodes = {k: {**v, "alive": False} for k, v in old.get("nodes", {}).items()}
            nodes.update(now["nodes"])
            tasks = old.get("tasks", {})
            mine = tasks.setdefault(str(iteration), {})
            for node, kinds in now["tasks"].items():
                for kind, n in kinds.items():
                    mine.setdefault(node, {})[kind] = mine.get(node, {}).get(kind, 0) + n
            record = {"address": now["address"], "nodes": nodes, "tasks": tasks}
            atomic_write_text(path, json.dumps(record, indent=1))
        except (OSError, ValueError) as exc:
            log.warning("could not record the cluster in %s: %s", path, exc)

    def cluster(self, since: int = 0) -> dict[str, Any]:
        """The cluster's GCS address, its nodes and where this executor's finished tasks ran
        (from task ``since`` on): ``{"address", "nodes": {node id: {"address", "alive", "cpus",
        "gpus"}}, "tasks": {node id: {kind: count}}}``.
        """
        ray = self._ray()
        nodes = {
            n["NodeID"]: {
                "address": n.get("NodeManagerAddress"),
                "alive": bool(n.get("Alive")),
                "cpus": float(n.get("Resources", {}).get("CPU", 0.0)),
                "gpus": float(n.get("Resources", {}).get("GPU", 0.0)),
            }
            for n in ray.nodes()
        }
        tasks: dict[str, dict[str, int]] = {}
        for name, node in self.placements[since:]:
            per = tasks.setdefault(node, {})
            per[task_kind(name)] = per.get(task_kind(name), 0) + 1
        address = ray.get_runtime_context().gcs_address
        return {"address": address, "nodes": nodes, "tasks": tasks}

    @staticmethod
    def _ray() -> Any:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayExecutor: Ray is not initialised; enter ray_runtime() first")
        return ray

    def resources(self) -> dict[str, float]:
        """The cluster's CPUs and GPUs."""
        res = self._ray().cluster_resources()
        return {"CPU": float(res.get("CPU", 1.0)), "GPU": float(res.get("GPU", 0.0))}

    def channel(self, callback: Callable[[Any], None]) -> Channel:
        """A channel backed by a zero-CPU actor on the driver's node (so losing a worker node
        never loses it), drained while :meth:`run` waits.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray()
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(num_cpus=0)(_ChannelActor).options(scheduling_strategy=here).remote()
        self._channels.append((actor, callback))
        return _RayChannel(actor)

    def share(self, cpus: int, running: int = 1) -> Share:
        """A :class:`~chemgap.common.tasks.Share` of ``cpus`` CPUs backed by a zero-CPU actor
        on the driver's node (killed when the next :meth:`run` ends); ``running``: how many
        tasks a task should assume run until the actor has answered.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray()
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(num_cpus=0)(_ShareActor).options(scheduling_strategy=here).remote()
        self._shares.append(actor)
        return _RayShare(actor, cpus, running)

    def _drain(self) -> None:
        ray = self._ray()
        for actor, callback in list(self._channels):
            try:
                items = ray.get(actor.drain.remote())
            except ray.exceptions.RayActorError as exc:  # progress only: the tasks go on
                log.warning("a progress channel was lost (%s); progress may be incomplete", exc)
                self._channels.remove((actor, callback))
                continue
            for item in items:
                callback(item)

    def _close_channels(self) -> None:
        import ray

        try:
            if ray.is_initialized():
                self._drain()
                for actor in [a for a, _ in self._channels] + self._shares:
                    ray.kill(actor)
        finally:
            self._channels, self._shares = [], []

    def run(self, tasks: Sequence[Task]) -> Iterator[Done]:
        """Submit every task, then yield outcomes as they finish."""
        ray = self._ray()
        pending: dict[Any, int] = {}
        try:
            for i, task in enumerate(tasks):
                ref = (
                    _remote()
                    .options(
                        name=task.name or task.fn.__name__,
                        num_cpus=task.num_cpus,
                        num_gpus=task.num_gpus,
                        max_retries=task.max_retries,
                    )
                    .remote(task.fn, *task.args, **task.kwargs)
                )
                pending[ref] = i
            waiting = list(pending)
            while waiting:
                timeout = self.poll_s if self._channels else None
                done, waiting = ray.wait(waiting, num_returns=1, timeout=timeout)
                if done and waiting:
                    more, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                    done += more
                if self._channels:
                    self._drain()
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        yield Done(index=index, error=exc.as_instanceof_cause())
                    except ray.exceptions.RayError as exc:
                        yield Done(index=index, error=exc)
                    else:
                        node, value = value
                        self.placements.append((tasks[index].name, node))
                        yield Done(index=index, value=value)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            self._close_channels()
