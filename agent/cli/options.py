"""Options more than one command takes, declared once, and ``--set``-style overrides.

The Ray options (``--address``, ``--num-cpus``, ``--dashboard/--no-dashboard``), ``--seed`` and
the repeatable ``KEY=VALUE`` flags (``--set``, ``--train-set``, ``--param``) live here. A
``KEY=VALUE`` flag parses into :class:`Overrides`; :func:`build_sections` and
:func:`load_campaign` type them by the spec schema (:mod:`chemgap.campaigns.spec`) and turn
every problem into one :class:`~chemgap.agent.errors.BadInput` (exit 2) that lists them all,
one ``path.to.field: message (got VALUE)`` a line, under the flag the user typed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from chemgap.agent.cli.common import console
from chemgap.agent.errors import BadInput

if TYPE_CHECKING:
    from pydantic import BaseModel

    from chemgap.campaigns.spec import CampaignSpec
    from chemgap.common.tasks import Executor

__all__ = [
    "Overrides",
    "address_option",
    "build_sections",
    "dashboard_option",
    "load_campaign",
    "num_cpus_option",
    "overrides_option",
    "ray_options",
    "require_trusted",
    "seed_option",
    "trust_code_option",
    "with_runtime",
]

F = TypeVar("F", bound=Callable[..., Any])

address_option = click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="Ray cluster to run on (ray start --head prints it; default: a local instance).",
)

num_cpus_option = click.option(
    "--num-cpus",
    default=None,
    type=click.IntRange(min=1),
    help="CPUs of a local Ray instance (default: all; not with --address).",
)

trust_code_option = click.option(
    "--trust-code",
    is_flag=True,
    help="Allow an 'ase' oracle to import and run the calculator class it names (code of the "
    "spec author's choosing, as with trust_remote_code).",
)


def require_trusted(config: Any, trust_code: bool) -> None:
    """:func:`chemgap.oracle.require_trust` as a :class:`BadInput` (exit 2, one sentence)."""
    from chemgap.oracle.config import UntrustedCode, require_trust

    try:
        require_trust(config, trust_code)
    except UntrustedCode as exc:
        raise BadInput(str(exc)) from None


def dashboard_option(default: bool = False) -> Callable[[F], F]:
    """``--dashboard/--no-dashboard``: start the Ray dashboard with a local instance.

    Args:
        default: whether the dashboard starts unless the user says otherwise.
    """
    return click.option(
        "--dashboard/--no-dashboard",
        default=default,
        show_default=True,
        help="Start the Ray dashboard with a local instance (bound to 127.0.0.1).",
    )


def ray_options(dashboard: bool = False) -> Callable[[F], F]:
    """``--address``, ``--num-cpus`` and ``--dashboard/--no-dashboard`` together.

    Args:
        dashboard: the default of ``--dashboard``.
    """
    dash = dashboard_option(dashboard)

    def decorate(func: F) -> F:
        return address_option(num_cpus_option(dash(func)))

    return decorate


def seed_option(default: int | None = 0, help: str = "Random seed.") -> Callable[[F], F]:
    """``--seed``: a non-negative integer.

    Args:
        default: the seed when none is given (None: the command decides, e.g. the spec's).
        help: the help text.
    """
    return click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=default,
        show_default=default is not None,
        help=help,
    )


# --------------------------------------------------------------------------- KEY=VALUE flags
@dataclass(frozen=True)
class Overrides:
    """The ``KEY=VALUE`` items of one repeatable flag.

    Attributes:
        flag: the flag as the user typed it (``--set``), named in every error.
        values: key -> value text, in the order given (a repeated key: the last one wins).
        malformed: a problem line for each item without ``=`` or without a key.
    """

    flag: str
    values: dict[str, str] = field(default_factory=dict)
    malformed: tuple[str, ...] = ()

    @classmethod
    def parse(cls, items: tuple[str, ...] | list[str], flag: str = "--set") -> Overrides:
        """Split ``KEY=VALUE`` items; a malformed one becomes a problem line, not an error."""
        values: dict[str, str] = {}
        malformed = []
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                malformed.append(f"{key.strip() or item}: expected KEY=VALUE (got {item!r})")
                continue
            values[key.strip()] = value
        return cls(flag, values, tuple(malformed))

    def __bool__(self) -> bool:
        return bool(self.values or self.malformed)

    def under(self, section: str) -> Overrides:
        """The same overrides with ``section.`` put in front of keys that lack it."""
        prefix = section + "."
        values = {k if k.startswith(prefix) else prefix + k: v for k, v in self.values.items()}
        return replace(self, values=values)

    def problems(self, source: str | None = None) -> list[str]:
        """The malformed items' problem lines, led by the flag unless ``source`` is the flag."""
        if source is None or source == self.flag:
            return list(self.malformed)
        return [f"{self.flag} {p}" for p in self.malformed]


def overrides_option(
    flag: str = "--set", dest: str = "sets", *, metavar: str = "PATH=VALUE", help: str
) -> Callable[[F], F]:
    """A repeatable ``KEY=VALUE`` flag whose value reaches the command as :class:`Overrides`.

    Args:
        flag: the option name, e.g. ``--set``, ``--train-set``, ``--param``.
        dest: the command's parameter name.
        metavar: what ``--help`` shows for one item.
        help: the help text.
    """

    def convert(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Overrides:
        return Overrides.parse(value, flag)

    return click.option(flag, dest, multiple=True, metavar=metavar, help=help, callback=convert)


def build_sections(
    sections: Mapping[str, type[BaseModel]],
    overrides: Overrides | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    source: str | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, BaseModel]:
    """Config sections from their defaults (or ``base``), the overrides and the command's flags.

    Args:
        sections: section name -> pydantic model (``{"model": ModelConfig, ...}``).
        overrides: the ``--set``-style items; keys ``section.field``.
        extra: values from the command's own flags, ``section.field`` -> typed value; they win
            over ``overrides``.
        base: starting values per section (a model or a mapping), e.g. a run's spec.
        source: what the error is reported under (default: the overrides' flag).
        names: ``section.field`` -> the flag that sets it, to name flags in problem lines.

    Returns:
        Section name -> validated model.

    Raises:
        BadInput: listing every problem, malformed items included.
    """
    from chemgap.campaigns.spec import SpecError, parse_sections

    values: dict[str, Any] = dict(overrides.values) if overrides else {}
    values.update(extra or {})
    source = source or (overrides.flag if overrides is not None else "options")
    problems = overrides.problems(source) if overrides else []
    out: dict[str, BaseModel] = {}
    try:
        out = parse_sections(sections, values, source=source, base=base)
    except SpecError as exc:
        problems += exc.problems
    if problems:
        raise BadInput(str(SpecError([_named(p, names or {}) for p in problems], source)))
    return out


def _named(problem: str, names: Mapping[str, str]) -> str:
    """``problem`` with its path replaced by the flag that sets it (longest match)."""
    path, sep, rest = problem.partition(": ")
    for prefix in sorted(names, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "."):
            return f"{names[prefix]}{sep}{rest}"
    return problem


def load_campaign(spec: str, overrides: Overrides | None = None) -> CampaignSpec:
    """A campaign spec (a YAML file or a built-in name) with ``--set`` overrides applied.

    Raises:
        BadInput: listing every problem of the spec and of the overrides.
    """
    from chemgap.campaigns.spec import SpecError, load_spec

    try:
        loaded = load_spec(spec, overrides.values if overrides else None)
    except SpecError as exc:
        problems = overrides.problems(exc.source) if overrides else []
        raise BadInput(str(SpecError(problems + exc.problems, exc.source))) from None
    problems = overrides.problems() if overrides else []
    if problems:
        raise BadInput(str(SpecError(problems, overrides.flag if overrides else "--set")))
    return loaded


# --------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def with_runtime(
    enabled: bool,
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    dashboard: bool = False,
) -> Iterator[Executor | None]:
    """The executor library functions take: Ray's when ``enabled``, else None (in-process).

    Starts (or connects to) Ray for the block and prints the dashboard URL when there is one.

    Args:
        enabled: whether to use Ray at all.
        address: an existing cluster, or None for a local instance.
        num_cpus: CPUs of a local instance.
        dashboard: start the dashboard with a local instance.
    """
    if not enabled:
        yield None
        return
    from chemgap.agent.runtime import ray_runtime

    with ray_runtime(address, num_cpus=num_cpus, dashboard=dashboard) as runtime:
        if runtime.dashboard_url:
            console.print(f"Ray dashboard: {runtime.dashboard_url}")
        yield runtime.executor
