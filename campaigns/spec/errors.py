"""Validation errors as problem lines: each pydantic error becomes one
``path.to.field: message (got VALUE)`` line (:func:`format_errors`), whose path components
(:func:`path_part`) and message (:func:`clip_message`) cannot break the line's shape.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from .base import one_line, short
from .seeds import SEED_KINDS

__all__ = ["clip_message", "format_errors", "path_part"]

_LONG_LITERAL = re.compile(r"'[^'\n]{57,}'|\"[^\"\n]{57,}\"")


def clip_message(msg: str, limit: int = 300) -> str:
    """A validator's message with long quoted values shortened (the sentence around them kept),
    on one line, at most ``limit`` characters.
    """
    msg = _LONG_LITERAL.sub(lambda m: m.group(0)[:28] + "..." + m.group(0)[-28:], msg)
    return one_line(msg, limit)


def path_part(part: Any) -> str:
    """One component of a problem's path: as given, or as its short repr when it holds a control
    character, a dot, a colon or a space that would break the ``path: message`` line (or is
    longer than 40 characters).
    """
    text = str(part)
    if text and len(text) <= 40 and text.isprintable() and not any(c in text for c in ".: "):
        return text
    return short(part)


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path.to.field: message (got VALUE)`` line per pydantic error, under ``prefix``."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = [path_part(p) for p in err["loc"]]
        # drop the tag pydantic inserts for tagged unions (seeds.0.bulk.a -> seeds.0.a)
        loc = [
            p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1].isdigit() and p in SEED_KINDS)
        ]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        msg = clip_message(err["msg"].removeprefix("Value error, "))
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{path}: {msg} (got {short(err.get('input'))})")
    return problems
