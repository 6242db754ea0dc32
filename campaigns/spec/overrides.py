"""``--set`` overrides: ``path.to.field=VALUE`` strings typed by the schema, applied to a spec
mapping (:func:`apply_overrides`) or to chosen sections (:func:`parse_sections`), every problem
reported at once.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from .base import SpecError, short
from .campaign import CampaignSpec
from .errors import format_errors

__all__ = ["apply_all", "apply_overrides", "is_string_field", "parse_sections"]


def apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], *, source: str = "--set"
) -> dict[str, Any]:
    """Set ``path.to.field`` in a spec dict from strings, typed by the schema.

    A string whose target field is a string (or a string enum) is kept verbatim; any other string
    is parsed as YAML (``3``, ``2.5``, ``true``, ``[300, 600]``, ``{method: GFN1-xTB}``) and then
    validated by the schema like the file; a value that is not a string is set as it is. List
    items are addressed by index (``system.seeds.0.a``).

    Args:
        data: the spec mapping, changed in place.
        overrides: ``path.to.field`` -> value.
        source: what the problems are reported under (the flag the user typed).

    Returns:
        ``data``.

    Raises:
        SpecError: listing every override that names no place in ``data`` (an item past the end
            of a list, a field below a value).
    """
    problems = apply_all(data, overrides, lambda parts: is_string_field(parts, CampaignSpec))
    if problems:
        raise SpecError(problems, source)
    return data


def parse_sections(
    sections: Mapping[str, type[BaseModel]],
    overrides: Mapping[str, Any],
    *,
    source: str = "--set",
    base: Mapping[str, BaseModel | Mapping[str, Any]] | None = None,
) -> dict[str, BaseModel]:
    """Config sections built from ``SECTION.FIELD=VALUE`` overrides, every problem reported.

    Each section starts from ``base[section]`` (a model or a mapping; default: the model's
    defaults), takes the overrides under its name (typed by the schema like
    :func:`apply_overrides`) and is validated by its model.

    Args:
        sections: section name -> its pydantic model, e.g. ``{"model": ModelConfig}``.
        overrides: ``section.field[.sub...]`` -> value (strings typed by the schema).
        source: what the problems are reported under, e.g. the flag the user typed.
        base: starting values per section.

    Returns:
        Section name -> the validated model, in the order of ``sections``.

    Raises:
        SpecError: listing every problem, one ``path.to.field: message (got VALUE)`` per line,
            unknown sections and fields included (``bogus: unknown key (got '1')``).
    """
    base = base or {}
    data: dict[str, Any] = {name: _as_dict(base.get(name)) for name in sections}
    known = {p: v for p, v in overrides.items() if p.partition(".")[0] in sections}
    problems = [
        f"{path}: unknown key (got {short(value)})"
        for path, value in overrides.items()
        if path not in known
    ]
    problems += apply_all(data, known, lambda parts: is_string_field(parts[1:], sections[parts[0]]))
    out: dict[str, BaseModel] = {}
    for name, cls in sections.items():
        try:
            out[name] = cls.model_validate(data[name])
        except ValidationError as exc:
            problems += format_errors(exc, prefix=name)
    if problems:
        raise SpecError(problems, source)
    return out


def _as_dict(value: BaseModel | Mapping[str, Any] | None) -> Any:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump()
    return dict(value)


def apply_all(
    data: dict[str, Any], overrides: Mapping[str, Any], is_string: Callable[[list[str]], bool]
) -> list[str]:
    """Apply every override it can; the problems of the others."""
    problems = []
    for path, raw in overrides.items():
        parts = path.split(".")
        if not all(parts):
            problems.append(f"{path}: empty path component (got {short(raw)})")
            continue
        value = _parse_scalar(raw) if isinstance(raw, str) and not is_string(parts) else raw
        problem = _set_path(data, parts, value, path, raw)
        if problem:
            problems.append(problem)
    return problems


def _set_path(data: Any, parts: list[str], value: Any, path: str, raw: Any) -> str | None:
    """Set ``value`` at ``parts`` (sections created as needed); a problem line, or None."""
    node = data
    for depth in range(len(parts) - 1):
        node = _child(node, parts[depth])
        if node is _MISSING:
            where = ".".join(parts[:depth])
            return f"{path}: {where} has no item {parts[depth]} (got {short(raw)})"
        if not isinstance(node, dict | list):
            where = ".".join(parts[: depth + 1])
            return f"{path}: {where} is not a section or list (got {short(raw)})"
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            return f"{path}: no list item {last} (got {short(raw)})"
        node[int(last)] = value
    else:
        node[last] = value
    return None


def _child(node: dict | list, key: str) -> Any:
    """``node[key]``, creating a missing (or null) section; a ``_MISSING`` list item."""
    if isinstance(node, list):
        return node[int(key)] if key.isdigit() and int(key) < len(node) else _MISSING
    child = node.get(key)
    if child is None:
        child = node[key] = {}
    return child


_MISSING = object()


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _field_annotation(parts: list[str], root: Any) -> Any:
    """The annotation of the field at ``parts`` below model ``root``; None when unknown."""
    annotation: Any = root
    for part in parts:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(part)
            if info is None:
                return None
            annotation = info.annotation
        elif typing.get_origin(annotation) in (list, tuple) and part.isdigit():
            annotation = typing.get_args(annotation)[0]
            if typing.get_origin(annotation) is Annotated:  # a tagged union: unknown kind
                return None
        else:
            return None
    return annotation


def is_string_field(parts: list[str], root: type[BaseModel] | None = None) -> bool:
    """True when the schema (from ``root``, default the whole spec) says ``parts`` holds a str."""
    annotation = _field_annotation(parts, root or CampaignSpec)
    if annotation is None:
        return False
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (list, tuple, dict, set):  # a container of strings is written as YAML
        return False
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    candidates = args or [annotation]
    return all(isinstance(c, type) and issubclass(c, str) for c in candidates)
