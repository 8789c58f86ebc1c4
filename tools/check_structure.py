"""Check the package's structure: no import circle (imports inside functions included) and no long module.

    python tools/check_structure.py [--max-lines 500]

Prints every module over the limit and every circle of imports between symnoise's own modules (with the line of
each import that closes it), then a one-line verdict; exits 1 when anything is found. Only explicit imports
count: ``from .a import b`` is an import of ``a.b`` when that is a module, else of ``a``; the packages a module
sits in are not counted as imported by it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "symnoise"
SOURCE = Path(__file__).resolve().parent.parent / "src" / PACKAGE


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported symnoise module, line) for every import statement in the file, at any depth."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while (
                target and target not in known
            ):  # `import symnoise.a.b as x` names a module; trim attributes
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.append((target, node.lineno))
    return found


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(root: Path = SOURCE, max_lines: int = 500) -> list[str]:
    """Every problem found, one line each (empty: the structure is clean)."""
    known = modules(root)
    problems = []
    for path in known.values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > max_lines:
            problems.append(f"{path.relative_to(root.parent.parent)}: {lines} lines (limit {max_lines})")
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for target, line in imports_of(name, path, known):
            graph[name].setdefault(target, line)
    for component in circles(graph):
        ties = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in component if b in graph[a]]
        problems.append(f"import circle of {len(component)} modules: " + "; ".join(ties))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=500)
    args = parser.parse_args()
    problems = check(max_lines=args.max_lines)
    for problem in problems:
        print(problem)
    count = len(modules(SOURCE))
    print(
        f"{count} modules: {len(problems)} problems"
        if problems
        else f"{count} modules: no import circle, none over {args.max_lines} lines"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
