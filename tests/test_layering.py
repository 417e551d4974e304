"""The import structure stays layered (README, Architecture): shared ground (pilot_core, its models layer
included) knows no stage; a stage knows no other stage, except evaluation running decoding methods through the
method registry; no library knows the flows or Prefect; and no two modules import each other, directly or
around a circle. Read from the source with `ast`: every import counts, a function-local one too."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

SHARED = "pilot_core"
STAGES = ("data_curation", "training", "wsd_inference", "evaluation", "release")
FLOWS = "flows"
LIBRARIES = (SHARED, *STAGES)
# the one stage-to-stage arrow: validation runs the methods through the registry and the runner, and the lm-eval
# harness against the WSD server (`pilot wsd serve`, started as a process)
ALLOWED = {("evaluation", "wsd_inference.methods"), ("evaluation", "wsd_inference.runner"),
           ("evaluation", "wsd_inference.config"), ("evaluation", "wsd_inference.server_process")}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the modules (project and third-party, by dotted name) it imports anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for pkg in (*LIBRARIES, FLOWS):
        for path in sorted((REPO / pkg).rglob("*.py")):
            mod, found = _module(path), set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    base = node.module
                    for a in node.names:  # `from pkg import module` imports the module
                        sub = REPO / Path(*base.split("."), a.name)
                        found.add(f"{base}.{a.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else base)
            graph[mod] = found
    return graph


def _top(name: str) -> str:
    return name.split(".")[0]


def test_shared_ground_imports_no_stage_and_no_flows():
    bad = sorted((m, t) for m, ts in imports().items() if _top(m) == SHARED for t in ts
                 if _top(t) in (*STAGES, FLOWS))
    assert not bad, f"pilot_core imports a stage or the flows: {bad}"


def test_stages_depend_on_shared_ground_not_on_each_other():
    bad = sorted((m, t) for m, ts in imports().items() if _top(m) in STAGES for t in ts
                 if _top(t) in STAGES and _top(t) != _top(m) and (_top(m), t) not in ALLOWED)
    assert not bad, f"a stage imports another stage's internals: {bad}"


def test_no_library_imports_the_flows_or_prefect():
    bad = sorted((m, t) for m, ts in imports().items() if _top(m) in LIBRARIES for t in ts
                 if _top(t) in (FLOWS, "prefect"))
    assert not bad, f"library code imports the flows or Prefect: {bad}"


def test_no_import_circles():
    g = imports()
    graph = {m: {t for t in ts if t in g} for m, ts in g.items()}  # arrows between the project's own modules
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other (directly or around a circle): {circles}"


def test_the_rules_see_real_arrows():
    """Guards the tests above: the graph holds the arrows the architecture is made of."""
    g = imports()
    assert "pilot_core.models.ragged" in g["wsd_inference.engine"]
    assert "wsd_inference.runner" in g["evaluation.ray_fanout"]
    assert "pilot_core.models.calls" in g["data_curation.preferences"]
    assert "prefect" in g["flows.tasks"] and len(g) > 80
