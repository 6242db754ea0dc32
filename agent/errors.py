"""Errors the CLI maps to exit codes (0 done, 1 failure, 2 bad input, 130 interrupted)."""

from __future__ import annotations


class BadInput(ValueError):
    """A user's mistake: one sentence naming the field, the value and what is allowed (exit 2)."""


class RunDirError(BadInput):
    """A run directory that cannot be used as asked (not a chemgap run, corrupt, incompatible)."""


class RemedyRefused(BadInput):
    """A remediation arm whose prerequisite is missing (no regions, no probes, no source model)."""
