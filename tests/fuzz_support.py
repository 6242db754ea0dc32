"""What the two fuzzers share: example counts and seed from the environment, the tally of the
cases tried (read back by ``benchmarks/reliability/fuzz.py``), and the checks of a refusal.

Environment:
    CHEMGAP_FUZZ_EXAMPLES: examples per fuzz test (default: each file's CI count).
    CHEMGAP_FUZZ_SEED: a hypothesis seed (default: derandomized, the same examples every run).
    CHEMGAP_FUZZ_TALLY: a file every case appends one JSON line to.
    CHEMGAP_FUZZ_KEEP_GOING: 1 records a broken promise in the tally instead of failing the
        test, so that a benchmark counts every case (CI leaves it unset: the test fails).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hypothesis import HealthCheck, seed, settings

TALLY: Counter = Counter()
"""Cases tried, refusals (exit 2) and broken promises, per fuzzer, in this process."""

# what a refusal must not show: a traceback, Python object reprs, pydantic's help links
FORBIDDEN = ("Traceback", "<class ", " object at 0x", "errors.pydantic.dev", "For further info")
MAX_LINE = 400  # characters of one problem line


def examples(default: int, share: float = 1.0) -> int:
    """Examples of one fuzz test: its ``share`` of ``CHEMGAP_FUZZ_EXAMPLES`` (or of the file's
    CI ``default``), at least one.
    """
    total = int(os.environ.get("CHEMGAP_FUZZ_EXAMPLES") or default)
    return max(1, round(total * share))


def fuzz_settings(default: int, share: float = 1.0) -> Callable[[Any], Any]:
    """Fixed example count (see :func:`examples`), no deadline, no example database;
    derandomized unless a seed is given in ``CHEMGAP_FUZZ_SEED``.
    """
    given = os.environ.get("CHEMGAP_FUZZ_SEED")
    configured = settings(
        max_examples=examples(default, share),
        derandomize=given is None,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    def decorate(test: Any) -> Any:
        test = configured(test)
        return seed(int(given))(test) if given is not None else test

    return decorate


@dataclass
class Outcome:
    """One fuzz case: what was fed, what came back, which promises broke."""

    fuzzer: str
    case: str
    command: str
    exit_code: int | None
    input: str = ""  # the file fed (one file may go to several commands)
    crashed: bool = False  # an exception escaped, a traceback was printed, or exit 1
    broken: list[str] = field(default_factory=list)
    named: bool | None = None  # a refusal named the mutated field (spec fuzzer)
    detail: str = ""

    @classmethod
    def of(cls, fuzzer: str, case: str, command: str, source: Any, result: Any) -> Outcome:
        """The outcome of a CliRunner ``result`` of ``command`` on the file ``source``."""
        exc = result.exception
        crashed = (
            (exc is not None and not isinstance(exc, SystemExit))
            or "Traceback" in result.output
            or result.exit_code == 1
        )
        return cls(
            fuzzer,
            case,
            command,
            result.exit_code,
            input=str(source),
            crashed=crashed,
            detail=result.output[-3000:],
        )

    def record(self) -> None:
        """Count the case and append it to ``CHEMGAP_FUZZ_TALLY``; fail unless keep-going."""
        TALLY[(self.fuzzer, "cases")] += 1
        TALLY[(self.fuzzer, "exit2")] += self.exit_code == 2
        TALLY[(self.fuzzer, "crashed")] += self.crashed
        TALLY[(self.fuzzer, "broken")] += bool(self.broken)
        path = os.environ.get("CHEMGAP_FUZZ_TALLY")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(asdict(self)) + "\n")
        if self.broken and os.environ.get("CHEMGAP_FUZZ_KEEP_GOING") != "1":
            raise AssertionError(
                f"{self.command} on {self.case}: {'; '.join(self.broken)}\n{self.detail}"
            )


def crash_problems(result: Any, allowed: tuple[int, ...]) -> list[str]:
    """What is wrong with a CliRunner result beyond its message: an exception escaped, an exit
    code outside ``allowed``, a traceback printed.
    """
    problems = []
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        problems.append(f"raised {type(exc).__name__}: {str(exc)[:200]}")
    if result.exit_code not in allowed:
        problems.append(f"exit {result.exit_code}, allowed {allowed}")
    if "Traceback" in result.output:
        problems.append("printed a traceback")
    return problems


_ERROR = re.compile(r"^error: \S")
_USAGE = re.compile(r"^Usage: .*\n(.*\n)*Error: \S[^\n]*$")  # click's, for its own checks


def refusal_problems(stderr: str) -> list[str]:
    """What is wrong with an exit-2 message: it must start with ``error:`` (or be click's usage
    error, one ``Error:`` line), each line must be short and free of tracebacks, object reprs
    and pydantic links.
    """
    problems = []
    text = stderr.strip()
    if not (_ERROR.match(text) or _USAGE.match(text)):
        problems.append(f"refusal does not start with 'error: ' ({text[:80]!r})")
    for bad in FORBIDDEN:
        if bad in text:
            problems.append(f"refusal shows {bad!r}")
    long = [line for line in text.splitlines() if len(line) > MAX_LINE]
    if long:
        problems.append(f"a refusal line of {len(long[0])} characters (limit {MAX_LINE})")
    return problems
