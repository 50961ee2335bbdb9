"""Structure checks anyone can run: package imports form no cycle, modules stay readable, the
generic layers name no method's parts, and every ``--flag`` the code quotes exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stpm_edge"
GENERIC = ("train", "export", "calibration", "runtime", "capi")  # the layers that must not know the method
METHOD_WORDS = re.compile(r"\b(teacher|student|stacked|STPMConfig|STPMMethod)\b|/trunks/")
MAX_LINES = 400
# Other programs' flags that messages quote: pkg-config, v4l2-ctl, CPython's configure.
EXTERNAL_FLAGS = {"--cflags", "--libs", "--list-devices", "--enable-shared"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()) else ""


def _imports(path: Path, module: str) -> set[str]:
    """Every stpm_edge module this file imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stpm_edge")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")[
                    : len(module.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base.startswith("stpm_edge"):
                found.add(base)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        src = _package(module)
        if not src:
            continue
        for dep in _imports(path, module):
            dst = _package(dep)
            if dst and dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert "artifact" not in graph or graph["artifact"] <= set(), f"artifact must depend on nothing: {graph['artifact']}"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_contract_is_torch_free():
    for path in (SRC / "artifact").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from) torch", text, re.M), path


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_readable(path: Path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (> {MAX_LINES}): split it"


def test_generic_layers_name_no_method_part():
    offenders = []
    for layer in GENERIC:
        for path in (SRC / layer).rglob("*.py"):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if METHOD_WORDS.search(line):
                    offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "method-specific names in generic layers:\n" + "\n".join(offenders)


def _cli_flags() -> set[str]:
    import typer  # noqa: PLC0415

    from stpm_edge.cli.app import app  # noqa: PLC0415

    flags: set[str] = set()
    stack = [typer.main.get_command(app)]
    while stack:
        cmd = stack.pop()
        for p in getattr(cmd, "params", []):
            flags |= {o for o in (*p.opts, *getattr(p, "secondary_opts", [])) if o.startswith("--")}
        stack.extend(getattr(cmd, "commands", {}).values())
    return flags


def test_every_flag_quoted_in_the_code_exists():
    quoted: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "argparse.ArgumentParser" in text:
            continue  # a program of its own (e.g. the Triton server script): its flags are its parser's
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*", node.value):
                    quoted.setdefault(flag, str(path.relative_to(SRC)))
    known = _cli_flags() | {"--help", "--version"} | EXTERNAL_FLAGS
    missing = {f: where for f, where in quoted.items() if f not in known}
    assert not missing, f"flags named in messages that no command has: {missing}"
