"""Reading and writing a spec: YAML files and built-in names (:func:`load_spec`), a mapping
validated with its overrides (:func:`parse_spec`), the resolved spec as YAML (:func:`dump_spec`)
and the JSON schema (:func:`json_schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import SpecError, short
from .campaign import CampaignSpec
from .checks import number_problems, semantic_problems
from .errors import format_errors
from .overrides import apply_all, is_string_field

__all__ = ["dump_spec", "json_schema", "load_spec", "parse_spec"]


def parse_spec(
    data: Any,
    *,
    source: str = "spec",
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CampaignSpec:
    """Validate a spec mapping (after ``--set`` overrides).

    Args:
        data: the spec as read from YAML.
        source: what the problems are reported under (the file).
        base_dir: where relative seed file paths start (default: the working directory).
        overrides: ``path.to.field`` -> value, applied first (see :func:`apply_overrides`).

    Returns:
        The validated spec, seed file paths made absolute.

    Raises:
        SpecError: listing every problem, the overrides' included.
    """
    if not isinstance(data, dict):
        raise SpecError(
            [f"(top level): expected a mapping of sections (got {short(data)})"], source
        )
    problems = []
    if overrides:
        problems = apply_all(data, overrides, lambda parts: is_string_field(parts))
    numbers = number_problems(data)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        flagged = {line.partition(": ")[0] for line in numbers}
        other = [p for p in format_errors(exc) if p.partition(": ")[0] not in flagged]
        raise SpecError(problems + numbers + other, source) from None
    problems += numbers
    base = base_dir or Path.cwd()
    problems += semantic_problems(spec, base)
    if problems:
        raise SpecError(problems, source)
    for seed in spec.system.seeds:  # the spec is copied into run directories: keep files found
        if seed.kind == "file":
            seed.path = str(seed.resolve(base).resolve())
    if spec.test_set.file is not None:
        spec.test_set.file = str(spec.test_set.resolve(base).resolve())
    return spec


def load_spec(path: str | Path, overrides: dict[str, str] | None = None) -> CampaignSpec:
    """Read a spec from a YAML file, or a built-in campaign by name (``cu-defects``)."""
    from chemgap.campaigns.builtin import builtin_path

    p = Path(path)
    if not p.exists():
        builtin = builtin_path(str(path))
        if builtin is None:
            from chemgap.campaigns.builtin import builtin_names

            raise SpecError(
                [
                    f"(file): no such file or directory, and no built-in campaign of that name "
                    f"(built-ins: {', '.join(builtin_names())}) (got {str(path)!r})"
                ],
                str(path),
            )
        p = builtin
    if p.is_dir():
        raise SpecError(
            [f"(file): expected a YAML file, not a directory (got {str(p)!r})"], str(path)
        )
    data = _read_yaml(p, str(path))
    return parse_spec(data, source=str(path), base_dir=p.resolve().parent, overrides=overrides)


def _read_yaml(path: Path, source: str) -> Any:
    """The YAML document in ``path``; a file that is no UTF-8 YAML is a :class:`SpecError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            [f"(file): cannot read it: {exc.strerror} (got {str(path)!r})"], source
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [
                f"(file): not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r}); "
                f"a spec is a YAML text file (got {str(path)!r})"
            ],
            source,
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError([f"(yaml): not valid YAML at {where}: {problem}"], source) from None
    except RecursionError:
        raise SpecError(
            ["(yaml): nested too deeply to read (more than ~1000 levels of lists or mappings)"],
            source,
        ) from None


def dump_spec(spec: CampaignSpec) -> str:
    """The resolved spec as YAML (every default written out)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """The JSON schema of a campaign spec (for editors)."""
    return CampaignSpec.model_json_schema()
