"""The package's shape, checked: layers point one way, no import cycles, no private imports.

Layers (docs/architecture.md): ``common`` imports nothing of chemgap; ``models`` and ``oracle``
import only ``common`` (never ``agent``, ``campaigns`` or each other); ``campaigns`` imports the
leaves it composes; ``agent`` sits on top, and nothing outside ``agent.cli`` imports the CLI.

Inside ``agent`` (docs/architecture.md, "Layers inside agent"), from the bottom: the modules at
its root (MD, the explorer, selection, trust, the run store and layout, ...), then the families
``diagnostics`` and ``probes`` (which do not import each other), ``remedies``, ``report``, the
campaign ``loop`` and the ``cli``; a module imports its own package and the layers below it.
Imports inside ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"common": "common", "agent": "agent", "models": "models", "oracle": "oracle",
            "campaigns": "campaigns"}  # fmt: skip
ALLOWED = {
    "common": {"common"},
    "models": {"common", "models"},
    "oracle": {"common", "oracle"},
    "campaigns": {"common", "models", "oracle", "campaigns"},
    "agent": {"common", "models", "oracle", "campaigns", "agent"},
}


AGENT_LAYERS = {"base": 0, "diagnostics": 1, "probes": 1, "remedies": 2, "report": 3, "loop": 4,
                "cli": 5}  # fmt: skip


def agent_layer(name: str) -> str:
    """The layer of agent module ``name``: its subpackage, or ``base`` at agent's root."""
    parts = name.split(".")
    return parts[2] if len(parts) >= 3 and parts[2] in AGENT_LAYERS else "base"


def _modules() -> dict[str, Path]:
    out = {}
    for top, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["chemgap", top, *parts])] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every runtime import in a module."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")
                    up = up[: len(up) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                found.append((base, [a.name for a in child.names], child.lineno))
            visit(child)

    visit(tree)
    return [(m, n, line) for m, n, line in found if m.startswith("chemgap.")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for module, names, _ in _imports(name, path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            edges.update(targets or ([module] if module in MODULES else []))
        graph[name] = edges - {name}
    return graph


def test_every_module_is_seen():
    assert "chemgap.common.keys" in MODULES and "chemgap.agent.cli.main" in MODULES
    assert len(MODULES) > 40


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layers_point_one_way(name):
    top = name.split(".")[1]
    for module, _, line in _imports(name, MODULES[name]):
        target = module.split(".")[1]
        assert target in ALLOWED[top], f"{name}:{line} imports {module} ({top} -> {target})"
        if module.startswith("chemgap.agent.cli"):
            assert name.startswith("chemgap.agent.cli"), f"{name}:{line} imports the CLI"


AGENT_MODULES = sorted(n for n in MODULES if n.startswith("chemgap.agent."))


def layering_problems(name: str, imports: list[tuple[str, list[str], int]]) -> list[str]:
    """Imports of agent module ``name`` that point sideways or up the layers inside agent."""
    own = agent_layer(name)
    out = []
    for module, names, line in imports:
        if not module.startswith("chemgap.agent"):
            continue
        targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
        for target in targets:
            if target == "chemgap.agent":
                continue
            layer = agent_layer(target)
            if layer != own and AGENT_LAYERS[layer] >= AGENT_LAYERS[own]:
                out.append(f"{name}:{line} imports {target} ({own} -> {layer})")
    return out


@pytest.mark.parametrize("name", AGENT_MODULES)
def test_layers_inside_agent(name):
    """The root of agent is the low layer every family uses; no family imports a family beside
    or above it, and none imports the loop or the CLI.
    """
    problems = layering_problems(name, _imports(name, MODULES[name]))
    assert not problems, "; ".join(problems)


def test_the_layer_checker_sees_a_family_importing_the_loop():
    """Broken variants: a probe importing the campaign loop, the store importing the report,
    diagnostics importing probes: each is caught; a remedy importing diagnostics is not.
    """
    loop = [("chemgap.agent.loop.campaign", ["Campaign"], 3)]
    assert layering_problems("chemgap.agent.probes.eos", loop)
    report = [("chemgap.agent.report.summary", ["summarize"], 5)]
    assert layering_problems("chemgap.agent.store", report)
    probes = [("chemgap.agent.probes", ["run_probes"], 7)]
    assert layering_problems("chemgap.agent.diagnostics.features", probes)
    diagnostics = [("chemgap.agent.diagnostics", ["diagnose"], 2)]
    assert not layering_problems("chemgap.agent.remedies.pool", diagnostics)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_from_other_modules(name):
    for module, names, line in _imports(name, MODULES[name]):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name}:{line} imports private {private} from {module}"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path):
    """Broken variant: two modules importing each other, one a private name: both are caught."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from chemgap.models.b import _helper\n")
    b.write_text("import chemgap.models.a\n")
    assert _imports("chemgap.models.a", a) == [("chemgap.models.b", ["_helper"], 1)]
    assert _imports("chemgap.models.b", b) == [("chemgap.models.a", [], 1)]


def test_every_package_is_installed():
    """A non-editable install ships only the packages pyproject.toml lists: each folder with an
    ``__init__.py`` must be one of them (a new subpackage left out imports only from a clone).
    """
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(["chemgap", top, *init.parent.relative_to(ROOT / folder).parts])
        for top, folder in PACKAGES.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found - listed == set(), f"not in pyproject.toml's packages: {sorted(found - listed)}"
