"""Code statistics for the closing notes of refactors: module sizes, the longest
functions, uses of other objects' private members, and the import graph.

    python dev/codestats.py [--top 15]

Counted in the installed layers (``engine``, ``format``, ``zarr_adapter``, ``tools``).
A private use is ``x._name`` where ``x`` is not ``self`` or ``cls`` (nor ``super()``)
and the module does not define ``_name`` itself, or ``from m import _name``; dunder names
do not count.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {
    "engine": "frazil",
    "format": "frazil.format",
    "zarr_adapter": "frazil.zarr_adapter",
    "tools": "frazil.tools",
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "engine" and parts[:1] in (["format"],):
                continue
            out[".".join([package, *parts])] = path
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_private(tree: ast.AST) -> set[str]:
    """Private names the module itself defines: functions, classes, ``self._x`` attributes
    and module-level assignments."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return {n for n in out if _is_private(n)}


def private_uses(tree: ast.AST) -> list[str]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and getattr(base.func, "id", "") == "super":
                continue
            uses.append(f"{ast.unparse(base)}.{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            uses += [f"import {a.name}" for a in node.names if _is_private(a.name)]
    return uses


def imports(name: str, path: Path, tree: ast.AST, known: set[str]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names]
            # ``from pkg import module`` depends on the module, not on the package
            targets = subs if all(t in known for t in subs) else [mod, *subs]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.add(t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    mods = modules()
    sizes: dict[str, int] = {}
    funcs: list[tuple[int, str]] = []
    private: Counter[str] = Counter()
    graph: dict[str, set[str]] = defaultdict(set)
    examples: dict[str, list[str]] = defaultdict(list)
    for name, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text)
        sizes[name] = len(text.splitlines())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                funcs.append((end - node.lineno + 1, f"{name}.{node.name}"))
        own = defined_private(tree)
        for use in private_uses(tree):
            if use.rsplit(".", 1)[-1].removeprefix("import ") in own:
                continue  # the module's own private member (used across its classes)
            private[name] += 1
            examples[name].append(use)
        graph[name] = imports(name, path, tree, set(mods))
    lengths = sorted(n for n, _ in funcs)
    print(
        f"modules: {len(mods)}, lines: {sum(sizes.values())}, functions: {len(funcs)}, "
        f"median function {lengths[len(lengths) // 2]} lines"
    )
    print("\nlargest modules:")
    for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {n:5d}  {name}")
    print("\nlongest functions:")
    for n, name in sorted(funcs, reverse=True)[: args.top]:
        print(f"  {n:5d}  {name}")
    print(f"\nprivate members of other objects used: {sum(private.values())}")
    for name, n in private.most_common():
        shown = ", ".join(sorted(set(examples[name]))[:6])
        print(f"  {n:3d}  {name}: {shown}")
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a, deps in graph.items()
            for b in deps
            if a in graph.get(b, set())
        }
    )
    print(f"\nimport cycles (pairs importing each other): {len(cycles)}")
    for a, b in cycles:
        print(f"  {a} <-> {b}")
    print("\nimport graph (frazil modules each module imports):")
    for name in sorted(graph):
        short = sorted(d.replace("frazil.", "") for d in graph[name])
        print(f"  {name.replace('frazil.', '') or 'frazil'}: {', '.join(short) or '-'}")


if __name__ == "__main__":
    main()
