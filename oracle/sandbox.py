"""Run oracle calls in a child process that can be killed at its time limit.

A calculator stuck in compiled code (an SCF in Fortran, an external program) cannot be
interrupted from Python, so :class:`OracleProcess` keeps one long-lived child Python process
per thread count: it builds calculators once (cached by configuration) and answers one
request per structure over a pipe (~0.1 ms of overhead for small structures). When a call
passes its limit the child is killed (SIGKILL) and the call recorded as ``timeout``; when the
child dies (a segfault in a backend) the call is ``crashed``; either way the next call starts
a fresh child. The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from chemgap.oracle.results import FailureCategory
from chemgap.oracle.triage import Evaluation, one_line

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")
STARTUP_TIMEOUT_S = 120.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
IN_ORACLE_CHILD = False  # True in the child process serve() runs in


class CalculatorCache:
    """The few most recently used calculators, keyed by their configuration's JSON."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._items: OrderedDict[str, BaseCalculator] = OrderedDict()

    def get(self, config_json: str) -> BaseCalculator:
        """The cached calculator for an oracle config (built on first use)."""
        from chemgap.oracle.backends import make_calculator
        from chemgap.oracle.config import OracleConfig

        if config_json in self._items:
            self._items.move_to_end(config_json)
            return self._items[config_json]
        calc = make_calculator(OracleConfig.model_validate_json(config_json))
        self._items[config_json] = calc
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return calc


def calculator_key(config: Any) -> str:
    """Cache key of a configuration: the fields that change the calculator."""
    return config.model_copy(
        update={"timeout_s": 1.0, "max_retries": 0, "min_distance_factor": 0.5}
    ).model_dump_json()


def _send(stream: Any, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv_blocking(stream: Any) -> object:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def serve() -> None:
    """Child side: answer ``(atoms, config_json)`` requests with an :class:`Evaluation`."""
    from chemgap.oracle.triage import classify_exception, evaluate

    global IN_ORACLE_CHILD
    IN_ORACLE_CHILD = True
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a backend prints goes to stderr, not into the protocol
    inp = sys.stdin.buffer
    cache = CalculatorCache()
    _send(out, ("ready", os.getpid()))
    while True:
        try:
            atoms, config_json = _recv_blocking(inp)
        except EOFError:
            return
        try:
            calc = cache.get(config_json)
        except Exception as exc:
            reply = Evaluation(
                failure=classify_exception(exc),
                message=one_line(f"could not build the calculator: {type(exc).__name__}: {exc}"),
            )
        else:
            reply = evaluate(calc, atoms)
        _send(out, reply)


class OracleProcess:
    """Parent side: a killable child process that evaluates structures.

    Args:
        threads: OpenMP/BLAS threads the child may use (its environment is set before any
            numerical library loads).
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update({k: str(self.threads) for k in THREAD_ENV})
        proc = subprocess.Popen(
            [sys.executable, "-c", "from chemgap.oracle.sandbox import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            tag, _pid = self._read(proc, time.monotonic() + STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError) as exc:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"oracle process did not start: {exc!r}") from exc
        if tag != "ready":
            raise RuntimeError(f"oracle process sent {tag!r} on start")
        log.debug("oracle process %d started (%d threads)", proc.pid, self.threads)
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen[bytes], deadline: float) -> Any:
        if proc.stdout is None:
            raise EOFError("no pipe to the oracle process")
        fd = proc.stdout.fileno()
        chunks: list[bytes] = []

        def read_exact(n: int) -> bytes:
            got = 0
            chunks.clear()
            while got < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    raise TimeoutError
                chunk = os.read(fd, min(n - got, 1 << 20))
                if not chunk:
                    raise EOFError
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        (size,) = _HEADER.unpack(read_exact(_HEADER.size))
        return pickle.loads(read_exact(size))

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return code

    def evaluate(self, atoms: Atoms, config_json: str, timeout_s: float) -> Evaluation:
        """Evaluate ``atoms`` with the calculator of ``config_json`` within ``timeout_s`` seconds.

        Never raises for oracle trouble: a timeout or a dead child is a failed Evaluation.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._proc = self._start()
            proc = self._proc
            start = time.monotonic()
            try:
                if proc.stdin is None:
                    raise EOFError("no pipe to the oracle process")
                _send(proc.stdin, (atoms, config_json))
                reply = self._read(proc, start + timeout_s)
            except TimeoutError:
                self._kill()
                return Evaluation(
                    failure=FailureCategory.TIMEOUT,
                    message=f"killed after the {timeout_s:g} s time limit",
                    seconds=time.monotonic() - start,
                )
            except (EOFError, BrokenPipeError, OSError):
                code = self._kill()
                how = (
                    f"signal {signal.Signals(-code).name}"
                    if code is not None and code < 0
                    else f"exit code {code}"
                )
                return Evaluation(
                    failure=FailureCategory.CRASHED,
                    message=f"oracle process died ({how})",
                    seconds=time.monotonic() - start,
                )
            return reply

    def close(self) -> None:
        """Stop the child (it also exits when this process does)."""
        with self._lock:
            self._kill()


_PROCESSES: dict[int, OracleProcess] = {}


def oracle_process(threads: int) -> OracleProcess:
    """This process's oracle child for ``threads`` threads (started on first use)."""
    if threads not in _PROCESSES:
        _PROCESSES[threads] = OracleProcess(threads)
    return _PROCESSES[threads]


@atexit.register
def _close_all() -> None:
    for process in _PROCESSES.values():
        process.close()
