"""The code a model's answer to a coding task stands for, as the field extracts it: EvalPlus's sanitizer
(evalplus/evalplus, `evalplus/sanitize.py`, `sanitize` and `code_extract`), with Python's own parser where EvalPlus
uses tree-sitter (the text it parses is checked to be valid Python first, so both see the same statements).

1. `code_extract`: the longest run of lines (counting non-empty ones) that parses as Python: the code inside a
   markdown fence, without the prose around it.
2. `sanitize`: of that code's top-level statements, the imports, and the undecorated classes, the undecorated
   functions that contain a `return`, and the plain assignments, each name kept once (the first wins); with an
   entry point, only the definitions it reaches through the names it uses. Everything else goes: example usage,
   prints, tests of its own, `if __name__ == "__main__":` sections.

tests/evalplus_reference.py is EvalPlus's rule on tree-sitter; tests/test_sanitize.py holds the two equal on
answers in the formats chat models write.
"""

from __future__ import annotations

import ast


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, MemoryError, ValueError, RecursionError):  # ValueError: a NUL byte
        return False


def code_extract(text: str) -> str:
    """The longest (in non-empty lines) run of two or more lines that parses, the earliest of equals.

    EvalPlus tries every run (O(n^2) parses); the same run is found here with far fewer: for each start, the
    longest run that parses is the one to beat (counts only grow with the end), tried from the last line back, and
    a start whose whole tail has no more non-empty lines than the best so far is skipped."""
    lines = text.split("\n")
    filled = [1 if line.strip() else 0 for line in lines]
    tail = [0] * (len(lines) + 1)
    for k in range(len(lines) - 1, -1, -1):
        tail[k] = tail[k + 1] + filled[k]
    best, most = (0, 0), 0
    for i in range(len(lines)):
        if tail[i] <= most:
            continue
        for j in range(len(lines) - 1, i, -1):
            n = tail[i] - tail[j + 1]
            if n <= most:
                break
            if _parses("\n".join(lines[i : j + 1])):
                first = j  # EvalPlus keeps the first end with this count that parses: from the last filled line on
                while first > i + 1 and not filled[first]:
                    first -= 1
                j = next(k for k in range(first, j + 1) if k > i and _parses("\n".join(lines[i : k + 1])))
                most, best = n, (i, j)
                break
    return "\n".join(lines[best[0] : best[1] + 1])


def _identifiers(node: ast.AST) -> set[str]:
    """Every name written in the node (tree-sitter's `identifier` nodes): variables, attributes, parameters,
    keyword arguments, definitions, imports."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.keyword) and n.arg:
            out.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.ImportFrom) and n.module:
            out.update(n.module.split("."))
        elif isinstance(n, ast.alias):
            out.update(n.name.split("."))
            if n.asname:
                out.add(n.asname)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def _definition(node: ast.stmt) -> tuple[str, str | None] | None:
    """(kind, name) of a statement EvalPlus keeps as a definition, or None."""
    if isinstance(node, ast.ClassDef) and not node.decorator_list:
        return "class", node.name
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list:
        return "function", node.name
    if isinstance(node, ast.Assign):  # tree-sitter names an assignment by a plain name target only
        return "variable", node.targets[0].id if isinstance(node.targets[0], ast.Name) else None
    if isinstance(node, ast.AnnAssign):
        return "variable", node.target.id if isinstance(node.target, ast.Name) else None
    return None


def sanitize(code: str, entrypoint: str | None = None) -> str:
    """EvalPlus's `sanitize(code, entrypoint)`: see the module's docstring."""
    code = code_extract(code)
    if not _parses(code):  # no two lines parse: EvalPlus hands the first line to tree-sitter, which keeps no
        return ""  # definition from a line that is not Python either
    tree = ast.parse(code)
    imports, definitions, names = [], [], set()
    for node in tree.body:
        if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imports.append(node)
            continue
        d = _definition(node)
        if d is None or d[1] in names:
            continue
        if d[0] == "function" and not any(isinstance(n, ast.Return) for n in ast.walk(node)):
            continue
        definitions.append((d[1], node))
        names.add(d[1])
    keep = None
    if entrypoint:
        deps = {name: _identifiers(node) for name, node in definitions}
        keep, queue = {entrypoint}, [entrypoint]
        while queue:
            for dep in deps.get(queue.pop(0), ()):
                if dep not in keep:
                    keep.add(dep)
                    queue.append(dep)
    parts = [ast.get_source_segment(code, n) for n in imports]
    parts += [ast.get_source_segment(code, n) for name, n in definitions if keep is None or name in keep]
    return "\n".join(parts)
