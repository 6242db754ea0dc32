"""What every command shares: error-to-exit-code mapping, ``--set`` parsing, the console."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from chemgap.agent.errors import BadInput
from chemgap.agent.structio import read_structures

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

__all__ = [
    "address_option",
    "console",
    "err_console",
    "fail",
    "handles_errors",
    "parse_assignments",
    "read_structures",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one sentence to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)


def handles_errors(func: F) -> F:
    """Map library exceptions to DESIGN.md's exit codes without a traceback for user mistakes.

    ``BadInput`` (and ``FileNotFoundError`` for named inputs) exit 2; ``KeyboardInterrupt`` exits
    130; anything else is a runtime failure (exit 1), with the traceback in the log at debug level.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInput as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except FileNotFoundError as exc:
            fail(f"{exc.filename or exc}: no such file or directory", EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]; state saved, resume where it applies")
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # a runtime failure: one line, traceback at debug level
            logging.getLogger("chemgap").debug("runtime failure", exc_info=True)
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)

    return wrapper  # type: ignore[return-value]


address_option = click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="Ray cluster to run on (ray start --head prints it; default: a local instance).",
)


def parse_assignments(items: tuple[str, ...], option: str = "--set") -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings; a malformed one is bad input."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"{option}: expected KEY=VALUE (got {item!r})")
        out[key.strip()] = value
    return out
