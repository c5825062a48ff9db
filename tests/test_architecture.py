"""The card's rules, checked: core never imports streamlit; public core functions are typed."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"


def _modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def test_core_never_imports_streamlit() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []


def test_public_core_functions_have_type_hints() -> None:
    missing = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            funcs = [node] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                funcs = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            for fn in funcs:
                if fn.name.startswith("_") and fn.name != "__init__":
                    continue
                args = [
                    a for a in fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")
                ]
                if fn.returns is None or any(a.annotation is None for a in args):
                    missing.append(f"{path.name}:{fn.lineno} {fn.name}")
    assert missing == []
