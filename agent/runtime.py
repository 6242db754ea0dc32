"""The Ray runtime a command runs in: a local instance with its dashboard, or an existing cluster.

Every command that fans work out (labelling, training, exploration, campaigns) enters
:func:`ray_runtime` once; library functions below it submit named tasks and assume Ray is up.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from chemgap.agent.errors import BadInput

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
    """

    address: str
    dashboard_url: str | None
    num_cpus: int
    num_gpus: int
    started: bool


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


def _probe(address: str, timeout_s: float = 3.0) -> None:
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
        num_cpus, num_gpus: resources of a local instance (default: detected).
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
        _probe(address)
        if num_cpus is not None or num_gpus is not None:
            raise BadInput("--num-cpus/--num-gpus apply to a local instance, not with --address")
        try:
            ctx = ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BadInput(
                f"--address: no Ray cluster answers at {address!r} ({exc}); start one with "
                "'ray start --head' or leave --address out for a local instance"
            ) from exc
        started = False
    else:
        ctx = ray.init(
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
