"""The package's layering (docs/architecture.md), checked on the source: which module may import
which. Static (ast), so it sees imports inside functions and under ``TYPE_CHECKING`` too, and
costs no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: lowest layer first; a module may import only modules of its own layer or below. The first
#: matching prefix decides (a prefix "x" matches "x" and "x.*").
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("types and contracts", (
        "f3stream.errors", "f3stream.config", "f3stream.fileio", "f3stream.frames",
        "f3stream.alignment", "f3stream.stats", "f3stream.audio", "f3stream.g711",
        "f3stream.resampling", "f3stream.audiofile", "f3stream.tokens_io", "f3stream.threads")),
    ("model", (
        "f3stream.streaming", "f3stream.harmonic", "f3stream.autoencoder", "f3stream.bottleneck",
        "f3stream.representation", "f3stream.model", "f3stream.checkpoint",
        "f3stream.latent_lm")),
    ("engines", ("f3stream.backends",)),
    ("sessions", ("f3stream.session",)),
    ("front", ("f3stream.tokenizer",)),
    ("edges", ("f3stream", "training")),   # commands, server, integrations, ...; training
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for top in ("f3stream", "training")
           for p in sorted((ROOT / top).rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (functions, TYPE_CHECKING
    blocks included). ``from pkg import sub`` counts as importing ``pkg.sub`` only."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found.update(subs if len(subs) == len(node.names) else [base, *subs])
    return {m for m in found if m in MODULES and m != name}


def layer(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer")


def _own_submodule(src: str, dst: str) -> bool:
    """A package importing its own submodules (re-exporting them) is not a dependency edge."""
    return MODULES[src].name == "__init__.py" and dst.startswith(src + ".")


GRAPH = {m: {d for d in imports_of(m) if not _own_submodule(m, d)} for m in MODULES}


def test_every_import_goes_down_the_layers():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module,forbidden", [
    ("f3stream.session", "f3stream.tokenizer"),        # sessions sit on an engine
    ("training.representation_stage", "training.train"),  # the stages share training.common
    ("f3stream.tokens_io", "f3stream.session"),        # types come from f3stream.frames
    ("f3stream.server.client", "f3stream.session"),
])
def test_named_edges_stay_cut(module, forbidden):
    assert forbidden not in imports_of(module)
