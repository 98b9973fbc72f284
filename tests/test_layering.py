"""The import graph (read with ast, not by importing) has no cycles and keeps the layering rule of
docs/architecture.md: a module imports only modules of its own layer or a lower one, and the
leaderboard only run cards and the small public APIs the rule names.

Imports inside functions count (a lazy import is still a dependency); imports under
`if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = {"benchmark": "cleanbench", "attacks": "cleanbench.attacks", "defenses": "cleanbench.defenses",
            "detectors": "cleanbench.detectors", "leaderboard": "cleanbench.leaderboard"}

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cleanbench", "errors", "seeding", "fileio", "options", "metrics", "losses", "text",
                    "tiny_tower", "augment", "synonyms", "distributed", "executors", "environment", "peak",
                    "detection_metrics", "interrupts")),
    ("configuration", ("config",)),
    ("data", ("data", "data.*")),
    ("attacks", ("attacks", "attacks.*")),
    ("models and training", ("models", "trainer")),
    ("poisoning and evaluation", ("poisoning", "evaluation")),
    ("defenses and detectors", ("defenses", "defenses.*", "detectors", "detectors.*")),
    ("records and caching", ("registry", "cache", "artifacts", "runcard", "tuning")),
    ("stages", ("stages", "detect_retrain")),
    ("cell", ("plan", "runner", "trigger_fit", "presets", "summary", "export")),
    ("tools", ("bench", "bench_measure", "bench_probes", "bench_report", "bench_speedups", "bench_step",
               "conformance", "detector_conformance", "attack_conformance",
               "gpu_check", "trigger_bench", "verify", "sweep", "sweep.*", "detection", "detection_report",
               "leaderboard", "leaderboard.*")),
    ("command line", ("cli", "__main__", "detect_command", "tuning_command", "bench_command", "cache_command",
                      "doctables", "check_plugin_command")),
]
"""Lowest first; names are relative to `cleanbench`."""

LEADERBOARD_MAY_IMPORT = ("leaderboard", "leaderboard.*", "runcard", "errors", "fileio", "metrics", "attacks",
                          "registry")
"""The leaderboard reads run cards; besides them it may use `errors`, `fileio` (safe file reading),
`metrics` (intervals), and the public attacks API (`cleanbench.attacks` and the registry) to render
an attack's trigger."""


def modules() -> dict[str, Path]:
    """Every module of the package, by name relative to `cleanbench` (the package itself: `cleanbench`)."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts]).removeprefix("cleanbench.") if parts or folder != "benchmark" \
                else "cleanbench"
            found[name.removeprefix("cleanbench.") if name != "cleanbench" else name] = path
    return found


def imports(path: Path, known: dict[str, Path], name: str) -> set[str]:
    """The modules of `known` that `path` imports, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)
            targets.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        if not target.startswith("cleanbench"):
            continue
        relative = target.removeprefix("cleanbench.") if target != "cleanbench" else target
        while relative not in known and "." in relative:
            relative = relative.rpartition(".")[0]
        if relative in known and relative != name:
            found.add(relative)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known, name) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> int | None:
    for number, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return number
    return None


def test_the_import_graph_has_no_cycles():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if layer(name) is None]
    assert unplaced == [], "add these modules to a layer in docs/architecture.md and LAYERS"


def test_no_import_goes_up_a_layer_and_the_leaderboard_reads_run_cards_only():
    breaks = []
    for name, targets in graph().items():
        for target in sorted(targets):
            if name.startswith("leaderboard") and name != "leaderboard.command":
                if not any(fnmatch.fnmatchcase(target, p) for p in LEADERBOARD_MAY_IMPORT):
                    breaks.append(f"{name} -> {target} (the leaderboard reads run cards)")
            elif layer(target) > layer(name):
                breaks.append(f"{name} ({LAYERS[layer(name)][0]}) -> {target} ({LAYERS[layer(target)][0]})")
    assert breaks == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_a_layering_break_would_be_caught(tmp_path):
    known = {"data.base": tmp_path / "data.py", "attacks.base": tmp_path / "attacks.py"}
    known["data.base"].write_text("def f():\n    from cleanbench.attacks.base import Attack\n")
    known["attacks.base"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                     "    from cleanbench.data.base import PairSet\n")
    assert imports(known["data.base"], known, "data.base") == {"attacks.base"}  # lazy imports count
    assert imports(known["attacks.base"], known, "attacks.base") == set()  # TYPE_CHECKING does not
    assert layer("attacks.base") > layer("data.base")
