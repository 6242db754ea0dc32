"""The ``chemgap`` command line: a thin face over the library (docs/architecture.md)."""

from __future__ import annotations

from chemgap.agent.cli.main import main

__all__ = ["main"]
