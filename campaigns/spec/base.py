"""What every part of the spec shares: the :class:`Section` base, the element set, the version,
:class:`SpecError`, and the short display of a value a problem line ends with.

Every section forbids unknown keys and stores enum members as their values; a problem is one
line ``path.to.field: message (got VALUE)`` (docs/architecture.md: all-errors messages).
"""

from __future__ import annotations

import reprlib
from typing import Any

from ase.data import chemical_symbols
from pydantic import BaseModel, ConfigDict

__all__ = ["ELEMENTS", "SPEC_VERSION", "Section", "SpecError", "one_line", "short"]

SPEC_VERSION = 1
ELEMENTS = frozenset(chemical_symbols[1:])
"""Every chemical symbol a spec may name (H to Og)."""


class Section(BaseModel):
    """Base of every spec section: unknown keys are refused, enums stored as their values."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class SpecError(ValueError):
    """Every problem found in a spec, one ``path.to.field: message (got VALUE)`` per line."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = problems
        self.source = source
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


def _bounded_repr() -> reprlib.Repr:
    """A ``repr`` that stops early: a spec's value may be an alias bomb (9 levels of 9 aliases,
    a billion items) or refer to itself, and only its first characters are shown.
    """
    out = reprlib.Repr()
    out.maxlevel, out.maxdict, out.maxlist, out.maxtuple, out.maxset = 3, 4, 6, 6, 6
    out.maxstring = out.maxother = out.maxlong = 60
    return out


_REPR = _bounded_repr()


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` in at most ``limit`` characters, in time independent of its size."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that raises: say what it is
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: Any, limit: int = 160) -> str:
    """``str(text)`` on one line, at most ``limit`` characters (a library's error message)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
