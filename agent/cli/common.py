"""What every command shares: error-to-exit-code mapping and the console."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import click
from rich.console import Console
from rich.markup import escape

from chemgap.agent.errors import BadInput
from chemgap.agent.layout import RunLayout
from chemgap.agent.structio import read_structures
from chemgap.common.files import is_disk_full

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "console",
    "environment_failure",
    "err_console",
    "fail",
    "handles_errors",
    "read_structures",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

F = TypeVar("F", bound=Callable[..., Any])


def fit_lines(text: str, width: int = 80, sep: str = " · ", indent: str = "  ") -> str:
    """``text`` made of ``sep``-separated parts, broken between parts into lines of at most
    ``width`` characters (continuations indented), so a one-line summary fits a terminal and a
    log alike; a part longer than ``width`` keeps a line of its own.
    """
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part if not lines else indent + part)
    return "\n".join(lines)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one message to stderr and exit with ``code`` (the message is text: a value in it
    that looks like rich markup, ``[/x]``, is printed as it is).
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


@overload
def handles_errors(func: F, *, resumable: bool = False) -> F: ...
@overload
def handles_errors(func: None = None, *, resumable: bool = False) -> Callable[[F], F]: ...
def handles_errors(func: F | None = None, *, resumable: bool = False) -> Any:
    """Map library exceptions to the exit codes (docs/architecture.md), no traceback for a user's
    mistake.

    - exit 2, the user's input: ``BadInput`` (a run directory that is read-only among them:
      it was the user's choice), ``FileNotFoundError`` for named inputs, and an ``OSError``
      saying a named file is on a read-only file system or not permitted;
    - exit 1, a runtime failure: anything else, with the traceback in the log at debug level.
      A full disk (``ENOSPC``/``EDQUOT``, SQLite's "disk is full", wherever in the exception's
      chain) is an environment failure like any runtime one, so it exits 1 too, with one
      sentence saying the disk is full and to free space, then ``chemgap resume RUN`` (a
      resumable command on a run that exists) or run the command again;
    - exit 130: ``KeyboardInterrupt``.

    Use it bare (``@handles_errors``) or with arguments (``@handles_errors(resumable=True)``).

    Args:
        func: the command function.
        resumable: the command saves its state as it goes (``run``, ``resume``): an interrupt
            or a full disk then says how to continue.
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
            message, code = environment_failure(exc, resumable) or (
                f"{type(exc).__name__}: {exc}",
                EXIT_FAILURE,
            )
            fail(message, code)

    return wrapper


def environment_failure(exc: BaseException, resumable: bool = False) -> tuple[str, int] | None:
    """The message and exit code for a failure of the machine rather than of chemgap: a full
    disk (exit 1) or a file that cannot be written where the user pointed (exit 2); None for
    anything else.

    Args:
        exc: the exception a command raised.
        resumable: the command can be continued with ``chemgap resume``.
    """
    if is_disk_full(exc):
        return _disk_full_message(exc, resumable), EXIT_FAILURE
    if isinstance(exc, OSError) and exc.filename:
        if exc.errno == errno.EROFS:
            message = f"{exc.filename} cannot be written: it is on a read-only file system"
            return message, EXIT_BAD_INPUT
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{exc.filename}: permission denied", EXIT_BAD_INPUT
    return None


def _disk_full_message(exc: BaseException, resumable: bool) -> str:
    """One sentence: the disk is full (writing which file), and how to go on."""
    path = _os_filename(exc)
    run = _run_dir_of(path) if path else None
    writing = f" while writing {path}" if path else ""
    if run is not None and resumable:
        then = (
            f"the run's saved state is intact: free some space, then continue with "
            f"'chemgap resume {run}'"
        )
    else:
        then = "free some space and run the command again"
    return f"the disk is full (no space left{writing}); {then}"


def _os_filename(exc: BaseException) -> str | None:
    """The file named by the first ``OSError`` in ``exc``'s chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.filename:
            return str(current.filename)
        current = current.__cause__ or current.__context__
    return None


def _run_dir_of(path: str) -> Path | None:
    """The chemgap run directory (the one holding ``state.json``) that ``path`` lies in."""
    for parent in list(Path(path).parents)[:6]:
        if RunLayout(parent).is_run():
            return parent
    return None
