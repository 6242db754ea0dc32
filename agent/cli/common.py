"""What every command shares: error-to-exit-code mapping and the console."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar, overload

import click
from rich.console import Console

from chemgap.agent.errors import BadInput
from chemgap.agent.structio import read_structures

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "console",
    "err_console",
    "fail",
    "handles_errors",
    "read_structures",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one message to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)


@overload
def handles_errors(func: F, *, resumable: bool = False) -> F: ...
@overload
def handles_errors(func: None = None, *, resumable: bool = False) -> Callable[[F], F]: ...
def handles_errors(func: F | None = None, *, resumable: bool = False) -> Any:
    """Map library exceptions to DESIGN.md's exit codes without a traceback for user mistakes.

    ``BadInput`` (and ``FileNotFoundError`` for named inputs) exit 2; ``KeyboardInterrupt`` exits
    130; anything else is a runtime failure (exit 1), with the traceback in the log at debug level.
    Use it bare (``@handles_errors``) or with arguments (``@handles_errors(resumable=True)``).

    Args:
        func: the command function.
        resumable: the command saves its state as it goes (``run``, ``resume``): an interrupt
            then says so.
    """
    if func is None:
        return functools.partial(handles_errors, resumable=resumable)
    interrupted = "; state saved, resume where it applies" if resumable else ""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInput as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except FileNotFoundError as exc:
            fail(f"{exc.filename or exc}: no such file or directory", EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            err_console.print(f"[yellow]interrupted[/]{interrupted}")
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # a runtime failure: one line, traceback at debug level
            logging.getLogger("chemgap").debug("runtime failure", exc_info=True)
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)

    return wrapper
