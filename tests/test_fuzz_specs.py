"""Fuzzing campaign specs: the built-in campaigns, mutated, through ``chemgap validate`` and
``chemgap run``.

The promise: bad input gets one sentence per problem (``path.to.field: message (got VALUE)``),
exit code 2, never a traceback, and nothing written. Each example takes a built-in spec and
changes it: wrong types, out-of-range numbers (negative, zero, NaN, inf, 1e308, 10**30), unknown
keys and missing keys at any depth, unicode, control characters and rich markup in strings,
50-deep nesting, non-mapping top levels; or writes text that is no valid YAML (truncated, binary,
undefined or exponential aliases, 5000-deep flow nesting). ``validate`` must exit 0 or 2; when it
refuses, ``run`` must refuse too (exit 2) and leave its run directory unmade. A spec that
validates is never run (that would start a campaign).

``CHEMGAP_FUZZ_EXAMPLES`` sets the number of examples (CI: ``CI_EXAMPLES``);
``tests/fuzz_support.py`` has the other knobs and the tally the benchmark reads.
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from fuzz_support import Outcome, crash_problems, fuzz_settings, refusal_problems
from hypothesis import given
from hypothesis import strategies as st

from chemgap.agent.cli.main import main
from chemgap.campaigns.builtin import builtin_names, builtin_path
from chemgap.campaigns.spec import _path_part

CI_EXAMPLES = 300
BASES = {name: yaml.safe_load(builtin_path(name).read_text()) for name in builtin_names()}
TEXTS = {name: builtin_path(name).read_text() for name in builtin_names()}


# --------------------------------------------------------------------------- strategies
SPECIAL_NUMBERS = [
    -1, 0, -(10**30), 10**30, 2**63, 1e308, -1e308, 1e-308, -0.5, 0.0,
    math.nan, math.inf, -math.inf, True, False,
]  # fmt: skip
SPECIAL_STRINGS = [
    "", " ", "\t", "\x00", "\x1b[31mred", "\u202eevil", "é", "🧪", "Cu\x00", "null", "~",
    "1e999", "NaN", "a" * 5000, "line\nbreak", "path/../../etc", "{a: 1}", "- x", "%", "&a",
    "[/]", "[red]x", "[bold]",
]  # fmt: skip


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(max_size=30))


def _deep(depth: int, as_list: bool, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


SCALARS = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(),
    st.floats(),
    st.none(),
)
BAD_VALUES = st.one_of(
    SCALARS,
    st.deferred(_text),
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.deferred(_text), SCALARS, max_size=3),
    st.builds(_deep, st.integers(1, 60), st.booleans(), SCALARS),
)
KEYS = st.one_of(st.deferred(_text), st.integers(), st.sampled_from([None, True, 1.5]))


@dataclass
class Case:
    """A spec to feed: YAML text (or bytes), how it was made, and the paths it changed."""

    kind: str
    content: str | bytes
    paths: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # hypothesis prints this for a falsifying example
        shown = self.content if len(self.content) < 2000 else self.content[:2000]
        return f"Case({self.kind}, paths={self.paths}, content={shown!r})"


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def _walk(draw: st.DrawFn, root: Any) -> tuple[Any, list[Any]]:
    """A container of ``root`` and the keys leading to it (stopping at each level w.p. 1/4)."""
    node, path = root, []
    while True:
        keys = [k for k in _children(node) if isinstance(node[k], dict | list)]
        if not keys or (path and draw(st.integers(0, 3)) == 0):
            return node, path
        key = draw(st.sampled_from(keys))
        node, path = node[key], [*path, key]


def _dotted(path: list[Any]) -> str:
    """The path as a problem line names it (pydantic reports keys as strings, True as 1)."""
    return ".".join(_path_part(str(int(p)) if isinstance(p, bool) else str(p)) for p in path)


@st.composite
def _mutate(draw: st.DrawFn, data: dict) -> str:
    """Change ``data`` in place at one place; the dotted path changed."""
    node, path = draw(_walk(data))
    keys = _children(node)
    op = draw(st.sampled_from(["set", "set", "set", "delete", "add", "nest"]))
    if op == "add" and isinstance(node, dict):
        key = draw(KEYS)
        node[key] = draw(BAD_VALUES)
        return _dotted([*path, key])
    if not keys:
        return _dotted(path)
    key = draw(st.sampled_from(keys))
    if op == "delete":
        del node[key]
    elif op == "nest":
        node[key] = _deep(draw(st.integers(1, 50)), draw(st.booleans()), node[key])
    else:
        node[key] = draw(BAD_VALUES)
    return _dotted([*path, key])


@st.composite
def mutated_specs(draw: st.DrawFn) -> Case:
    """A built-in spec with one to three changes, as YAML."""
    data = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    paths = [draw(_mutate(data)) for _ in range(draw(st.integers(1, 3)))]
    return Case("mutated", yaml.safe_dump(data, allow_unicode=True, sort_keys=False), paths)


@st.composite
def top_levels(draw: st.DrawFn) -> Case:
    """A document that is not a mapping (a list, a scalar, nothing)."""
    value = draw(st.one_of(SCALARS, st.deferred(_text), st.lists(SCALARS, max_size=3)))
    return Case("top level", yaml.safe_dump(value, allow_unicode=True))


def _alias_bomb(levels: int, key: str) -> str:
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nname: x\n{key}: *l{levels - 1}\n"


def _deep_flow(draw: st.DrawFn, text: str) -> str:
    depth = draw(st.integers(50, 5000))
    return text + "\nextra: " + "[" * depth + "]" * depth + "\n"


def _recursive(draw: st.DrawFn, text: str) -> str:
    """A later key wins: a section (or an unknown key) that contains itself."""
    section = draw(st.sampled_from(["exploration", "system", "oracle", "zz"]))
    return text + f"\n{section}: &r {{trust: *r, seeds: [*r]}}\n"


YAML_BREAKERS: dict[str, Callable[[st.DrawFn, str], str | bytes]] = {
    "truncated": lambda draw, text: text[: draw(st.integers(0, len(text)))],
    "binary": lambda draw, text: draw(st.binary(max_size=200)),
    "text": lambda draw, text: draw(st.deferred(_text)),
    "tab": lambda draw, text: text.replace("  ", "\t", 1),
    "unclosed": lambda draw, text: text + "\nextra: [1, {2\n",
    "alias": lambda draw, text: text + "\nextra: *nowhere\n",
    "bomb": lambda draw, text: _alias_bomb(
        9, draw(st.sampled_from(["name", "description", "zz", "seed"]))
    ),
    "deep": _deep_flow,
    "tag": lambda draw, text: text + "\nextra: !!python/object/apply:os.system ['true']\n",
    "recursive": _recursive,
    "bom": lambda draw, text: b"\xef\xbb\xbf" + text.encode() + draw(st.binary(max_size=4)),
    "key": lambda draw, text: text + "\n? [a, b]\n: 1\n",
}
"""Ways to make a built-in spec's text unreadable, or hostile to its reader."""


@st.composite
def broken_yaml(draw: st.DrawFn) -> Case:
    """Text that is no valid YAML, or YAML that is hostile to the reader."""
    text = TEXTS[draw(st.sampled_from(sorted(TEXTS)))]
    kind = draw(st.sampled_from(sorted(YAML_BREAKERS)))
    return Case(f"yaml {kind}", YAML_BREAKERS[kind](draw, text))


# --------------------------------------------------------------------------- checks
def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _related(name: str, path: str) -> bool:
    """``name`` is ``path``, a section above it, a field below it, or a sibling (a check across
    fields names one of them: initial_labels against holdout_fraction).
    """
    if name == path or path.startswith(name + ".") or name.startswith(path + "."):
        return True
    return "." in path and name.rpartition(".")[0] == path.rpartition(".")[0]


def _names_a_path(stderr: str, paths: list[str]) -> bool:
    """A problem line names a changed path (or one related to it)."""
    lines = [line.strip() for line in stderr.splitlines()[1:]]
    named = [line.partition(": ")[0] for line in lines]
    return any(_related(name, path) for path in paths for name in named)


_HEAD = re.compile(r"^error: .+: (\d+) problems?$")
_LINE = re.compile(r"^  \S[^\n]*: \S")


def shape_problems(stderr: str) -> list[str]:
    """A spec's refusal is ``error: SOURCE: N problems`` and then N lines ``  PATH: MESSAGE``."""
    lines = stderr.strip().splitlines()
    head = _HEAD.match(lines[0]) if lines else None
    if head is None:
        return [f"first line is not 'error: SOURCE: N problems' ({lines[:1]!r})"]
    if int(head.group(1)) != len(lines) - 1:
        return [f"says {head.group(1)} problems but lists {len(lines) - 1} lines"]
    return [
        f"not a 'PATH: MESSAGE' line: {line[:80]!r}" for line in lines[1:] if not _LINE.match(line)
    ]


def check_spec(case: Case, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    spec = root / f"spec-{uuid.uuid4().hex[:8]}.yaml"
    if isinstance(case.content, bytes):
        spec.write_bytes(case.content)
    else:
        spec.write_text(case.content, encoding="utf-8")
    res = _invoke("validate", str(spec))
    out = Outcome.of("specs", case.kind, "validate", spec, res)
    out.broken = crash_problems(res, (0, 2))
    if res.exit_code == 2:
        out.broken += refusal_problems(res.stderr) + shape_problems(res.stderr)
        out.named = _names_a_path(res.stderr, case.paths) if case.paths else None
        if out.named is False:
            out.broken.append(f"refusal names none of the changed fields {case.paths}")
    out.record()
    if res.exit_code != 2:
        return  # a spec that validates is not run: that would start a campaign
    run_dir = root / f"run-{spec.stem}"
    ran = _invoke("run", str(spec), "--out", str(run_dir))
    out = Outcome.of("specs", case.kind, "run", spec, ran)
    out.broken = crash_problems(ran, (2,))
    if run_dir.exists():
        out.broken.append(f"wrote {run_dir} although the spec was refused")
    if ran.stderr.strip() != res.stderr.strip():
        out.broken.append("refused with another message than validate")
    out.record()


@fuzz_settings(CI_EXAMPLES, share=0.7)
@given(case=mutated_specs())
def test_mutated_specs_are_refused_in_one_sentence_per_problem(case, tmp_path_factory):
    check_spec(case, tmp_path_factory.getbasetemp() / "fuzz-specs")


@fuzz_settings(CI_EXAMPLES, share=0.1)
@given(case=top_levels())
def test_specs_that_are_no_mapping_are_refused(case, tmp_path_factory):
    check_spec(case, tmp_path_factory.getbasetemp() / "fuzz-specs")


@fuzz_settings(CI_EXAMPLES, share=0.2)
@given(case=broken_yaml())
def test_unreadable_or_hostile_yaml_is_refused(case, tmp_path_factory):
    check_spec(case, tmp_path_factory.getbasetemp() / "fuzz-specs")


# --------------------------------------------------------------------------- regressions
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe name: x", "(file): not UTF-8 text"),
        (_alias_bomb(9, "name"), "name: Input should be a valid string"),
        ("extra: " + "[" * 5000 + "]" * 5000, "(yaml): nested too deeply"),
    ],
)
def test_hostile_files_are_refused(tmp_path, content, needle):
    spec = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(content)
    res = _invoke("validate", str(spec))
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert not refusal_problems(res.stderr)


def test_markup_in_a_value_is_printed_verbatim(tmp_path):
    spec = tmp_path / "spec.yaml"
    data = copy.deepcopy(BASES["cu-defects"])
    data["name"] = "[/x] [red]y"
    spec.write_text(yaml.safe_dump(data))
    res = _invoke("validate", str(spec))
    assert res.exit_code == 2, res.output
    assert "'[/x] [red]y'" in res.stderr


def test_control_characters_in_a_key_do_not_break_the_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    data = copy.deepcopy(BASES["cu-defects"])
    data["budget"]["bad\nkey\x1b[2J"] = 1
    spec.write_text(yaml.safe_dump(data))
    res = _invoke("validate", str(spec))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and "\x1b" not in res.stderr
    assert lines[1].strip().startswith("budget.'bad\\nkey\\x1b[2J': unknown key")
