"""The built-in campaigns shipped as package data (``campaigns/*.yaml``)."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

import yaml


def builtin_names() -> list[str]:
    """Names of the built-in campaigns, sorted."""
    root = files("chemgap.campaigns")
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def builtin_path(name: str) -> Path | None:
    """The YAML file of built-in campaign ``name``, or None."""
    if name not in builtin_names():
        return None
    with as_file(files("chemgap.campaigns") / f"{name}.yaml") as path:
        return Path(path)


def builtin_descriptions() -> dict[str, str]:
    """``{name: first line of its description}`` for every built-in campaign."""
    out = {}
    for name in builtin_names():
        data = yaml.safe_load(builtin_path(name).read_text())  # type: ignore[union-attr]
        out[name] = str(data.get("description", "")).strip().splitlines()[0]
    return out
