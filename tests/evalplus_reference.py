"""EvalPlus's sanitizer as its authors run it, on tree-sitter: the test reference for evaluation/sanitize.py.
Written from evalplus/evalplus `evalplus/sanitize.py` (`code_extract`, `sanitize`, `get_deps`,
`get_function_dependency`, `has_return_statement`) and `evalplus/syncheck.py` (`syntax_check`): the same node
kinds, the same first-name-wins rule, the same reachability from the entry point."""

from __future__ import annotations

import ast

import tree_sitter_python
from tree_sitter import Language, Parser

IMPORTS = ("import_statement", "import_from_statement")


def _syntax_ok(code: str) -> bool:  # syncheck.syntax_check
    try:
        ast.parse(code)
        return True
    except (SyntaxError, MemoryError):
        return False


def code_extract(text: str) -> str:
    lines = text.split("\n")
    pair, longest = (0, 0), 0
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            chunk = "\n".join(lines[i : j + 1])
            if _syntax_ok(chunk):
                n = sum(1 for line in lines[i : j + 1] if line.strip())
                if n > longest:
                    longest, pair = n, (i, j)
    return "\n".join(lines[pair[0] : pair[1] + 1])


def _name(node):
    return next((c.text.decode() for c in node.children if c.type == "identifier"), None)


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)


def _deps(node) -> set[str]:
    return {n.text.decode() for n in _walk(node) if n.type == "identifier" and n is not node}


def sanitize(code: str, entrypoint: str | None = None) -> str:
    code = code_extract(code)
    raw = code.encode()
    root = Parser(Language(tree_sitter_python.language())).parse(raw).root_node
    imports, definitions, names = [], [], set()
    for child in root.children:
        if child.type in IMPORTS:
            imports.append(child)
        elif child.type == "class_definition" and _name(child) not in names:
            definitions.append((_name(child), child))
            names.add(_name(child))
        elif child.type == "function_definition" and _name(child) not in names and any(
                n.type == "return_statement" for n in _walk(child)):
            definitions.append((_name(child), child))
            names.add(_name(child))
        elif child.type == "expression_statement" and child.children[0].type == "assignment":
            sub = child.children[0]
            if _name(sub) not in names:
                definitions.append((_name(sub), sub))
                names.add(_name(sub))
    reach = None
    if entrypoint:
        graph = {name: _deps(node) for name, node in definitions}
        reach, queue = {entrypoint}, [entrypoint]
        while queue:
            for n in graph.get(queue.pop(0), ()):
                if n not in reach:
                    reach.add(n)
                    queue.append(n)
    out = b"".join(raw[n.start_byte : n.end_byte] + b"\n" for n in imports)
    out += b"".join(raw[n.start_byte : n.end_byte] + b"\n" for name, n in definitions if reach is None or name in reach)
    return out[:-1].decode()
