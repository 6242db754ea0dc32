"""Checks a section cannot make alone: numbers no campaign takes anywhere in the raw document
(:func:`number_problems`), and problems across sections of a validated spec
(:func:`semantic_problems`: the seeds' elements against the oracle and the quotas, the initial
set, the test file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chemgap.oracle.config import check_elements

from .base import short
from .campaign import CampaignSpec
from .errors import path_part
from .system import initial_set_problems, missing_test_set_file

__all__ = ["MAX_INTEGER", "number_problems", "semantic_problems"]


MAX_INTEGER = 2**53
"""The largest integer a spec takes anywhere (the largest a float64 holds exactly): no count,
size or seed of a campaign is larger, and beyond int64 numpy and torch overflow."""


def number_problems(data: Any) -> list[str]:
    """A problem line for each NaN and each integer beyond ±``MAX_INTEGER`` anywhere in
    ``data``; each shared or self-containing container (YAML anchors) is visited once.
    """
    problems, seen, stack = [], set(), [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend(((*path, k), v) for k, v in reversed(list(items)))
            continue
        where = ".".join(path_part(p) for p in path) or "(top level)"
        if isinstance(node, float) and node != node:
            problems.append(f"{where}: not a number (NaN); give a number (got nan)")
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INTEGER:
            problems.append(
                f"{where}: integer too large; a spec's integers are at most 2**53 in size "
                f"(got {short(node)})"
            )
    return problems


def semantic_problems(spec: CampaignSpec, base_dir: Path) -> list[str]:
    """Checks across sections: the seeds' elements against the oracle and the quotas, the
    initial set (:func:`~.system.initial_set_problems`), the test file.
    """
    problems = []
    elements: set[str] = set()
    for i, seed in enumerate(spec.system.seeds):
        try:
            elements |= seed.elements(base_dir)
        except ValueError as exc:
            problems.append(
                f"system.seeds.{i}: {exc} (got {short(getattr(seed, 'path', seed.kind))})"
            )
    if elements:
        try:
            check_elements(spec.oracle, elements)
        except ValueError as exc:
            problems.append(f"oracle.name: {exc} (got {spec.oracle.name!r})")
    for element in spec.selection.per_element_quota:
        if elements and element not in elements:
            problems.append(
                f"selection.per_element_quota.{path_part(element)}: no seed structure "
                f"contains {element} (got {short(element)})"
            )
    problems += initial_set_problems(spec.system)
    return problems + missing_test_set_file(spec.test_set, base_dir)
